"""The burst of issue 27, point 3, with fair share on and off **at the same time** (section
`burst-paired`): two `sfworker run` processes, each with the two-account file, one with
`SFWORKER_FAIR_SHARE=true` and one with `false`, each with a request queue of its own holding the
same burst of one account, started together on the same simulator. Both are measured over the
same span: from each one's start until the first of them has answered its whole burst.

Why: on this machine two runs of the same system a few seconds apart differ by 10 to 40 % in
jobs/s (the `burst` section's pairs range from 0.55x to 1.4x), far more than the 5 % in question.
Side by side, both share whatever the machine is doing; what differs between them is the fair
share. Each gets about half the machine, so the figures are lower than in `burst`: the ratios
are what this measures.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from bench.e2e.broker import Replies
from bench.e2e.burst import TwoAccounts
from bench.e2e.report import TIMES, Trial, _f, _select, table
from bench.e2e.runs import Lab, finish, new_ids, ready, wait_replies
from bench.e2e.systems import Context, Workload, job_encoder

POLL = 0.01  # s between looks at the replies


async def paired_trial(
    lab: Lab, ctx: Context, workload: Workload, latency_ms: int, jobs: int, rep: int
) -> dict[str, Any]:
    await lab.sim.set_latency(latency_ms, token_ms=latency_ms)
    on = TwoAccounts(ctx, f"paired-{latency_ms}-on", True)
    off = TwoAccounts(ctx, f"paired-{latency_ms}-off", False)
    # Which one starts first alternates from one repetition to the next.
    systems = (on, off) if rep % 2 else (off, on)
    ids = {s.queue: new_ids(s, jobs) for s in systems}
    replies = lab.broker.expect([i for s in systems for i in ids[s.queue]], on.check(workload))
    out: dict[str, Any] = {"system": "sfworker, fair share on and off side by side"}
    out.update(latency_ms=latency_ms, jobs=jobs)
    try:
        for system in systems:
            await system.prepare(lab.broker)
            await lab.broker.load(system.queue, ids[system.queue], job_encoder(workload, "burst"))
        for system in systems:
            system.start()
        start: dict[str, tuple[float, float]] = {}
        for system in systems:
            await ready(lab, system)
            start[system.queue] = (time.monotonic(), system.cpu())
        # Both are measured over the same span: until the first of them has answered its whole
        # burst (then the other has the machine to itself, which would flatter it).
        counts = await _until_one_is_done(replies, ids, systems)
        at = time.monotonic()
        for name, system in (("on", on), ("off", off)):
            began, cpu = start[system.queue]
            answered = counts[system.queue]
            out[f"{name}_answered"] = answered
            out[f"{name}_jobs_per_s"] = answered / (at - began)
            out[f"{name}_cpu_s_per_1000"] = (system.cpu() - cpu) / answered * 1000
        await wait_replies(lab, on, replies, "the paired burst")
        for name, system in (("on", on), ("off", off)):
            out[f"{name}_moved"] = await system.moves()
        out["wrong_answers"] = replies.wrong
    finally:
        for system in systems:
            out.setdefault("exit_codes", []).extend((await finish(lab, system))["exit_codes"])
    out["jobs_ratio"] = out["on_jobs_per_s"] / out["off_jobs_per_s"]
    out["cpu_ratio"] = out["on_cpu_s_per_1000"] / out["off_cpu_s_per_1000"]
    return out


async def _until_one_is_done(
    replies: Replies, ids: dict[str, list[str]], systems: tuple[TwoAccounts, ...]
) -> dict[str, int]:
    """Replies so far per system, at the first moment one of them has all of its own."""
    while True:
        counts = {s.queue: sum(1 for i in ids[s.queue] if i in replies.arrived) for s in systems}
        if any(counts[s.queue] == len(ids[s.queue]) for s in systems):
            return counts
        for system in systems:
            if not system.alive():
                raise RuntimeError(f"{system.label} died during the paired burst")
        await asyncio.sleep(POLL)


def render_paired(trials: list[Trial]) -> str:
    paired = _select(trials, "burst-paired")
    if not paired:
        return ""
    rows, summary = [], []
    for latency in sorted({t["latency_ms"] for t in paired}):
        group = [t for t in paired if t["latency_ms"] == latency]
        for t in group:
            rows.append(
                [
                    f"{latency} ms",
                    str(t["rep"]),
                    _f(t["on_jobs_per_s"], 0),
                    _f(t["off_jobs_per_s"], 0),
                    f"{t['jobs_ratio']:.3f}",
                    _f(t["on_cpu_s_per_1000"], 3),
                    _f(t["off_cpu_s_per_1000"], 3),
                    f"{t['cpu_ratio']:.3f}",
                    str(t["on_moved"]),
                ]
            )
        jobs_ratio = statistics.median(t["jobs_ratio"] for t in group)
        cpu_ratio = statistics.median(t["cpu_ratio"] for t in group)
        summary.append(
            f"fair share on / off side by side at {latency} ms, median of {len(group)}: "
            f"jobs/s {jobs_ratio:.3f}{TIMES}, CPU per job {cpu_ratio:.3f}{TIMES}"
        )
    jobs = paired[0]["jobs"]
    return (
        "### Burst of one account, fair share on and off side by side\n\n"
        f"Two processes started together, each with {jobs:,} searches of account `burst` in a "
        "request queue of its own and the two-account file; one with the fair share on, one "
        "off.\n\n"
        + table(
            [
                "latency",
                "rep",
                "on jobs/s",
                "off jobs/s",
                "on / off",
                "on CPU s / 1000",
                "off CPU s / 1000",
                "on / off",
                "moved",
            ],
            rows,
        )
        + "\n\n"
        + "\n".join(summary)
    )
