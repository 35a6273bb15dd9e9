"""Results as short text tables for people (`sfworker submit`, `sfworker demo`)."""

from __future__ import annotations

from typing import Any

_MAX_CELL = 48


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= _MAX_CELL else text[: _MAX_CELL - 1] + "…"


def table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [[_cell(c) for c in row] for row in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def render_result(result: dict[str, Any]) -> str:
    summary = [
        ["job_id", result.get("job_id")],
        ["operation", result.get("operation")],
        ["account", result.get("account")],
        ["status", result.get("status")],
        ["http_status", result.get("http_status")],
        ["attempts", result.get("attempts")],
        ["duration_ms", result.get("duration_ms")],
    ]
    for key in ("count", "id", "created"):
        if result.get(key) is not None:
            summary.append([key, result[key]])
    error = result.get("error")
    if error:
        summary.append(["error", f"{error.get('code')}: {error.get('message')}"])
        for item in error.get("salesforce_errors") or []:
            summary.append(["salesforce", f"{item.get('errorCode')}: {item.get('message')}"])
    out = table(summary, ["field", "value"])
    records = result.get("records") or []
    if records:
        columns = [k for k in records[0] if k != "attributes"][:6]
        rows = [[r.get(c) for c in columns] for r in records[:10]]
        out += "\n\n" + table(rows, columns)
        if len(records) > 10:
            out += f"\n… {len(records) - 10} more record(s)"
    return out
