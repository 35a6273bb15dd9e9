"""Markdown tables of the medians over the repetitions, and the ratios the issue asks for."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from typing import Any

NO_WAIT = "sfworker, coalescing wait 0"  # the row judged for the latency target (issue 11)

Trial = dict[str, Any]
TIMES = "\N{MULTIPLICATION SIGN}"


def median(trials: Iterable[Trial], get: Callable[[Trial], float | None]) -> float | None:
    values = [v for v in (get(t) for t in trials) if v is not None]
    return statistics.median(values) if values else None


def _f(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]

    def line(cells: list[str]) -> str:
        return (
            "| "
            + " | ".join(
                c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(cells)
            )
            + " |"
        )

    out = [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows]
    return "\n".join(out)


def _select(trials: list[Trial], section: str, **match: Any) -> list[Trial]:
    return [
        t
        for t in trials
        if t.get("section") == section and all(t.get(k) == v for k, v in match.items())
    ]


def _paced(key: str) -> Callable[[Trial], float | None]:
    return lambda t: t.get("paced", {}).get(key)


def _wrong(trials: list[Trial]) -> int:
    return sum(
        int(t.get("wrong_answers", 0)) + int(t.get("paced", {}).get("wrong_answers", 0))
        for t in trials
    )


PIPELINE_HEADERS = [
    "system",
    "latency",
    "jobs/s",
    "p50 ms",
    "p99 ms",
    "p99 added ms",
    "CPU s / 1000 jobs",
    "peak RSS MB",
    "wrong",
]


def _pipeline_row(label: str, latency: int, group: list[Trial]) -> list[str]:
    paced_rate = median(group, _paced("rate"))
    return [
        label,
        f"{latency} ms",
        _f(median(group, lambda t: t.get("jobs_per_s")), 0),
        _f(median(group, _paced("p50_ms")), 1),
        _f(median(group, _paced("p99_ms")), 1),
        _f(median(group, _paced("added_p99_ms")), 1)
        + (f" @{paced_rate:.0f}/s" if paced_rate else ""),
        _f(median(group, lambda t: t.get("cpu_s_per_1000")), 2),
        _f(median(group, lambda t: t.get("peak_rss_mb")), 0),
        str(_wrong(group)),
    ]


def _ratio(trials: list[Trial], section: str, a: str, b: str, latency: int) -> float | None:
    x = median(_select(trials, section, system=a, latency_ms=latency), lambda t: t["jobs_per_s"])
    y = median(_select(trials, section, system=b, latency_ms=latency), lambda t: t["jobs_per_s"])
    return x / y if x and y else None


def render(trials: list[Trial], latencies: tuple[int, ...]) -> str:
    parts: list[str] = []
    pipeline = _select(trials, "pipeline")
    systems = list(dict.fromkeys(t["system"] for t in pipeline))

    if "baseline (aio-pika + aiohttp)" in systems:
        rows = [
            _pipeline_row(s, lat, _select(pipeline, "pipeline", system=s, latency_ms=lat))
            for lat in latencies
            for s in ("baseline (aio-pika + aiohttp)", "sfworker", NO_WAIT)
            if s in systems
        ]
        lines = []
        for s in ("sfworker", NO_WAIT):
            if s not in systems:
                continue
            ratios = []
            for lat in latencies:
                r = _ratio(trials, "pipeline", s, "baseline (aio-pika + aiohttp)", lat)
                ratios.append(f"{lat} ms: {_f(r, 2)}{TIMES}")
            lines.append(f"{s} / baseline jobs/s: " + ", ".join(ratios))
        parts.append(
            "### 1. Against the limit\n\n"
            + table(PIPELINE_HEADERS, rows)
            + "\n\n"
            + "\n".join(lines)
        )

    peers = [s for s in systems if s not in ("baseline (aio-pika + aiohttp)", NO_WAIT)]
    if any(s not in ("sfworker",) for s in peers):
        rows = [
            _pipeline_row(s, lat, _select(pipeline, "pipeline", system=s, latency_ms=lat))
            for lat in latencies
            for s in peers
        ]
        lines = []
        for s in peers:
            if s == "sfworker":
                continue
            for lat in latencies:
                r = _ratio(trials, "pipeline", "sfworker", s, lat)
                lines.append(f"sfworker / {s} jobs/s at {lat} ms: {_f(r, 2)}{TIMES}")
        parts.append(
            "### 2. Against the peers\n\n"
            + table(PIPELINE_HEADERS, rows)
            + "\n\n"
            + "\n".join(lines)
        )

    storm = _select(trials, "storm")
    if storm:
        rows = []
        for label in dict.fromkeys(t["label"] for t in storm):
            calm = _select(storm, "storm", label=label, expired=False)
            hit = _select(storm, "storm", label=label, expired=True)
            p_calm = median(calm, lambda t: t["p99_ms"])
            p_hit = median(hit, lambda t: t["p99_ms"])
            rows.append(
                [
                    label,
                    _f(median(hit, lambda t: t["token_requests"]), 0),
                    _f(median(hit, lambda t: t["unauthorized_401"]), 0),
                    _f(p_calm, 0),
                    _f(p_hit, 0),
                    _f(p_hit - p_calm if p_hit is not None and p_calm is not None else None, 0),
                    str(_wrong(calm + hit)),
                ]
            )
        jobs = storm[0]["jobs"]
        parts.append(
            "### 3. Token storm\n\n"
            f"{jobs} jobs published at once, {storm[0]['latency_ms']} ms latency; every session "
            "expires after the 100th reply. p99 is end-to-end over the whole batch (queueing "
            "included), without and with the expiry.\n\n"
            + table(
                [
                    "system",
                    "token requests",
                    "401s",
                    "p99 ms (no expiry)",
                    "p99 ms (expiry)",
                    "p99 penalty ms",
                    "wrong",
                ],
                rows,
            )
        )

    scaling = _select(trials, "scaling")
    if scaling:
        rows = []
        base: float | None = None
        for n in dict.fromkeys(t["processes"] for t in scaling):
            group = _select(scaling, "scaling", processes=n)
            jps = median(group, lambda t: t["jobs_per_s"])
            base = base or jps
            rows.append(
                [
                    str(n),
                    _f(jps, 0),
                    f"{_f(jps / base if jps and base else None, 2)}{TIMES}",
                    _f(median(group, lambda t: t["cpu_s_per_1000"]), 2),
                    _f(median(group, lambda t: t["sim_cpu_s_per_1000"]), 2),
                    _f(median(group, lambda t: t["peak_rss_mb"]), 0),
                ]
            )
        text = (
            f"### 4. Scaling\n\n{scaling[0]['latency_ms']} ms latency, sfworker at its defaults, "
            "N processes on one queue.\n\n"
            + table(
                [
                    "processes",
                    "jobs/s",
                    "vs 1",
                    "worker CPU ms / job",
                    "simulator CPU ms / job",
                    "peak RSS MB (all)",
                ],
                rows,
            )
        )
        memory = _select(trials, "memory")
        if memory:
            mem_rows = []
            rss: dict[int, float | None] = {}
            for p in dict.fromkeys(t["prefetch"] for t in memory):
                group = _select(memory, "memory", prefetch=p)
                rss[p] = median(group, lambda t: t["peak_rss_mb"])
                mem_rows.append(
                    [str(p), _f(rss[p], 1), _f(median(group, lambda t: t["jobs_per_s"]), 0)]
                )
            ps = sorted(rss)
            per_job = None
            lo, hi = rss[ps[0]], rss[ps[-1]]
            if lo is not None and hi is not None and ps[-1] > ps[0]:
                per_job = (hi - lo) * 1024 / (ps[-1] - ps[0])
            text += (
                "\n\nMemory per in-flight job (account cap and HTTP pool raised to the prefetch)"
                "\n\n"
                + table(["prefetch", "peak RSS MB", "jobs/s"], mem_rows)
                + f"\n\nabout {_f(per_job, 1)} KB per in-flight job"
            )
        parts.append(text)

    large = _select(trials, "large")
    if large:
        rows = []
        for s in dict.fromkeys(t["system"] for t in large):
            group = _select(large, "large", system=s)
            rows.append(
                [
                    s,
                    _f(median(group, lambda t: t["p50_ms"]), 1),
                    _f(median(group, lambda t: t["p99_ms"]), 1),
                    _f(median(group, lambda t: t["cpu_us_per_record"]), 2),
                    _f(median(group, lambda t: t["cpu_ms_per_job"]), 1),
                    str(_wrong(group)),
                ]
            )
        first = large[0]
        parts.append(
            f"### 5. Large results\n\n{first['jobs']} searches one after another, "
            f"{first['records_per_job']} records each in pages of 500 (4 pages), "
            f"{first['latency_ms']} ms latency.\n\n"
            + table(
                ["system", "p50 ms", "p99 ms", "CPU µs / record", "CPU ms / job", "wrong"], rows
            )
        )

    redis = _select(trials, "redis")
    if redis:
        rows = [
            _pipeline_row(
                f"sfworker, Redis {'on' if flag else 'off'}",
                lat,
                _select(redis, "redis", redis=flag, latency_ms=lat),
            )
            for lat in latencies
            for flag in (False, True)
        ]
        parts.append(
            "### 6. Redis on and off (sfworker, one process)\n\n"
            "At 100 ms both run at prefetch 128 (paced at 400 jobs/s).\n\n"
            + table(PIPELINE_HEADERS, rows)
            + "\n\n"
            + _redis_ratios(redis, latencies)
        )

    sealing = _select(trials, "sealing")
    if sealing:
        labels = [row["value"] for row in sealing[0]["sealing"]]

        def cell(label: str, key: str) -> Callable[[Trial], float | None]:
            return lambda t: next(r[key] for r in t["sealing"] if r["value"] == label)

        rows = [
            [
                label,
                str(next(r["bytes"] for r in sealing[0]["sealing"] if r["value"] == label)),
                _f(median(sealing, cell(label, "seal_us")), 2),
                _f(median(sealing, cell(label, "open_us")), 2),
                _f(median(sealing, cell(label, "plain_us")), 2),
            ]
            for label in labels
        ]
        parts.append(
            "### 7. Sealing Redis values (SFWORKER_REDIS_ENCRYPTION_KEY), per value\n\n"
            "AES-256-GCM in this process, best of 3 runs of "
            f"{sealing[0]['iterations']:,}; a job seals its result once (and an insert its "
            "claim), and opens them only on a redelivery.\n\n"
            + table(["value", "bytes", "seal µs", "open µs", "plain text µs"], rows)
        )

    tracing = _select(trials, "tracing")
    if tracing:
        labels = list(dict.fromkeys(t["tracing"] for t in tracing))
        off = median(_select(tracing, "tracing", tracing=labels[0]), lambda t: t["jobs_per_s"])
        rows = []
        for label in labels:
            group = _select(tracing, "tracing", tracing=label)
            rate = median(group, lambda t: t["jobs_per_s"])
            rows.append(
                [
                    label,
                    _f(rate, 0),
                    f"{rate / off:.3f}" if rate and off else "-",
                    _f(median(group, lambda t: t.get("cpu_s_per_1000")), 2),
                    _f(median(group, lambda t: t.get("exported_kb")), 0),
                    str(_wrong(group)),
                ]
            )
        parts.append(
            "### 8. Tracing off and on (sfworker, one process, 0 ms latency, jobs without a "
            "traceparent)\n\n"
            + table(
                ["sfworker", "jobs/s", "ratio to off", "CPU s / 1000 jobs", "OTLP KB", "wrong"],
                rows,
            )
        )

    noisy = _select(trials, "noisy")
    if noisy:
        rows = [
            [
                t["system"],
                str(t["quick_jobs"]),
                _f(t["quick_p50_ms"]),
                _f(t["quick_p99_ms"]),
                _f(t["quick_max_ms"]),
                ", ".join(f"{k} {v}" for k, v in sorted(t["slow_outcomes"].items())),
                _f(t["slow_seconds"]),
                str(t["dead_lettered"]),
            ]
            for t in noisy
        ]
        parts.append(
            "### 9. Noisy neighbour (one process, two orgs)\n\nAccount `slow` (3,000 ms) gets "
            "500 jobs at once (timeout 60 s); account `quick` (50 ms) gets 20 jobs a second "
            "meanwhile.\n\n"
            + table(
                [
                    "system",
                    "quick jobs",
                    "quick p50 ms",
                    "quick p99 ms",
                    "quick max ms",
                    "slow jobs answered",
                    "flood served in s",
                    "dead-lettered",
                ],
                rows,
            )
        )

    for trial in _select(trials, "profile"):
        parts.append(render_profile(trial))
    return "\n\n".join(parts)


def _redis_ratios(redis: list[Trial], latencies: list[int]) -> str:
    """Redis on against off, per latency: jobs/s and CPU per job as ratios of the medians, and
    the difference of p99 added (issue 18's targets)."""
    lines = []
    for lat in latencies:
        on = _select(redis, "redis", redis=True, latency_ms=lat)
        off = _select(redis, "redis", redis=False, latency_ms=lat)
        if not on or not off:
            continue

        def med(group: list[Trial], key: str) -> float:
            return statistics.median(float(t[key]) for t in group)

        def added(group: list[Trial]) -> float:
            return statistics.median(float(t["paced"]["added_p99_ms"]) for t in group)

        speed = med(on, "jobs_per_s") / med(off, "jobs_per_s")
        cpu = med(on, "cpu_s_per_1000") / med(off, "cpu_s_per_1000")
        lines.append(
            f"Redis on / off at {lat} ms: jobs/s {speed:.2f}{TIMES}, CPU per job {cpu:.2f}{TIMES}, "
            f"p99 added {added(on) - added(off):+.1f} ms"
        )
    return "\n".join(lines)


def render_profile(trial: Trial) -> str:
    prof = trial.get("profile") or {}
    total = prof.get("samples") or 0
    if not total:
        return "### Profile\n\n(no samples: was py-spy allowed to attach?)"

    def pct(count: int) -> str:
        return f"{100 * count / total:.1f} %"

    areas = [[name, pct(count)] for name, count in prof["areas"]]
    own = [[name, pct(count)] for name, count in prof["self"][:15]]
    inclusive = [[name, pct(count)] for name, count in prof["inclusive"][:25]]
    return (
        f"### Profile: {trial['system']}{', Redis on' if trial.get('redis') else ''}, "
        f"0 ms latency, {trial['jobs']} jobs\n\n"
        f"py-spy, {total} samples of the worker's CPU time "
        f"({_f(trial.get('cpu_s_per_1000'), 2)} CPU s / 1000 jobs); raw stacks in "
        f"`{trial.get('profile_file')}`.\n\n"
        + table(["area (innermost match in the stack)", "share of CPU"], areas)
        + "\n\n"
        + table(["function (own time)", "share"], own)
        + "\n\n"
        + table(["function (including callees)", "share"], inclusive)
    )
