"""Acceptance 8.5: every sfworker_* name used by an alert or a dashboard panel is exported by a
running worker (so a renamed metric cannot silently break an alert), and the metrics that must be
there from the start are."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from tests.job_client import JobClient
from worker.config import Settings

ROOT = Path(__file__).resolve().parents[2]
NAME = re.compile(r"\bsfworker_[a-z0-9_]+")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def referenced() -> dict[str, set[str]]:
    """Metric names by where they are used."""
    dashboard = json.loads((ROOT / "deploy/grafana/sfworker-dashboard.json").read_text())
    exprs = [
        target.get("expr", "")
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]
    exprs += [
        v.get("query", {}).get("query", "")
        if isinstance(v.get("query"), dict)
        else str(v.get("query", ""))
        for v in dashboard["templating"]["list"]
    ]
    return {
        "alerts": set(NAME.findall((ROOT / "deploy/prometheus/alerts.yaml").read_text())),
        "dashboard": set(NAME.findall("\n".join(exprs))),
    }


def exported(text: str) -> dict[str, str]:
    """Every name a scrape of `text` makes queryable, with its family's type."""
    names: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(" ", 3)
            names[family] = kind
            if kind == "histogram":
                names.update({family + s: kind for s in HISTOGRAM_SUFFIXES})
            if kind == "counter" and not family.endswith("_total"):
                names[family + "_total"] = kind
        elif line and not line.startswith("#"):
            names.setdefault(re.split(r"[{ ]", line, maxsplit=1)[0], "sample")
    return names


async def test_every_metric_an_alert_or_panel_uses_is_exported(
    settings: Settings, spawn_worker: Any, jobs: JobClient
) -> None:
    worker = spawn_worker(settings)
    await worker.wait_ready()
    before = time.time()
    result = await jobs.call(
        {"v": 1, "job_id": "names-1", "operation": "search", "soql": "SELECT Id FROM Contact"}, 20
    )
    assert result["status"] == "no_data"
    text = await worker.metrics()
    names = exported(text)
    used = referenced()
    assert used["alerts"]
    assert used["dashboard"]
    for where, wanted in used.items():
        missing = sorted(wanted - set(names))
        assert not missing, f"{where} use metrics the worker does not export: {missing}"

    # Present from the start, and set by the job answered above.
    assert 'sfworker_token_waits_total{account="main"}' in text
    [stamp] = [
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("sfworker_last_job_timestamp_seconds ")
    ]
    assert before - 1 <= stamp <= time.time()
    assert "sfworker_token_waits_total" in used["dashboard"]
    assert "sfworker_last_job_timestamp_seconds" in used["alerts"] & used["dashboard"]
