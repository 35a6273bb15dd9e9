"""The deployment people run (issue 27, point 7): one sfworker process at its default settings
with an accounts file of two accounts on the lab's org, so the fair share is on, beside the same
with `SFWORKER_FAIR_SHARE=false`, in the same run.

Each trial, on fresh processes:
- *burst*: `jobs` searches of account `burst` wait in the request queue before the worker starts;
  jobs/s and CPU per job from the moment its consumer is up to the last reply (as `limit`), and
  how many of them the fair share moved to a lane (`sfworker_lane_moves_total`);
- *burst and trickle*: then, on the same processes, account `trickle` gets 20 searches a second
  for `TRICKLE_SECONDS` while a second burst of `jobs` searches of `burst` is published at once,
  just after the trickle's first job: the trickle's end-to-end latency (publish to reply) and
  how long the burst took.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import aiohttp
from sfsim.testing import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET

from bench.e2e.procs import Child
from bench.e2e.report import TIMES, Trial, _f, _select, median, table
from bench.e2e.runs import Lab, _Window, finish, new_ids, percentile, wait_replies
from bench.e2e.systems import (
    Context,
    Sfworker,
    SfworkerOptions,
    Workload,
    free_port,
    job_encoder,
)

TRICKLE_RATE = 20.0  # jobs/s of account `trickle`
TRICKLE_SECONDS = 5
ACCOUNTS = ("burst", "trickle")


class TwoAccounts(Sfworker):
    """sfworker with two accounts on the lab's org: `burst` (the default) and `trickle`; its
    /metrics port is kept (the lane moves are read from it)."""

    def __init__(self, ctx: Context, tag: str, fair_share: bool) -> None:
        on = "on" if fair_share else "off"
        options = SfworkerOptions(
            env={"SFWORKER_FAIR_SHARE": str(fair_share).lower()},
            label=f"sfworker, 2 accounts, fair share {on}",
        )
        super().__init__(ctx, tag, options)
        self.fair_share = fair_share
        self.port = 0
        lines = []
        for name in ACCOUNTS:
            lines += [
                f"[accounts.{name}]",
                f'instance_url = "{ctx.sim_url}"',
                'flow = "client_credentials"',
                f'client_id = "{DEFAULT_CLIENT_ID}"',
                f'client_secret = "{DEFAULT_CLIENT_SECRET}"',
                *(["default = true"] if name == "burst" else []),
                "",
            ]
        self.accounts.write_text("\n".join(lines), encoding="utf-8")

    def start(self) -> None:
        self.port = free_port()
        env = {**self.settings_env(), "SFWORKER_HTTP_PORT": str(self.port)}
        self.children.append(Child("sfworker-1", [sys.executable, "-m", "worker", "run"], env))

    async def moves(self) -> int:
        """Jobs moved to a lane so far (every account)."""
        return await lane_moves(self.port)

    async def cleanup(self, broker: Any) -> None:
        await super().cleanup(broker)
        await broker.delete([f"{self.queue}.lane.{name}" for name in ACCOUNTS])


async def metric_total(port: int, prefix: str) -> float:
    """The sum of every sample whose line starts with `prefix`, from the worker whose /metrics
    listens on `port`."""
    url = f"http://127.0.0.1:{port}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url, timeout=10) as response:
        text = await response.text()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))


async def lane_moves(port: int) -> int:
    """Jobs the worker whose /metrics listens on `port` moved to a lane so far (every account)."""
    return int(await metric_total(port, "sfworker_lane_moves_total{"))


async def api_calls(lab: Lab) -> int:
    return int((await lab.sim.counters())["api_usage"]["used"])


async def burst_trial(
    lab: Lab, system: TwoAccounts, workload: Workload, latency_ms: int, jobs: int
) -> dict[str, Any]:
    """The burst (jobs/s, CPU, moves), then the burst with a trickle beside it (latency)."""
    await lab.sim.set_latency(latency_ms, token_ms=latency_ms)
    out: dict[str, Any] = {
        "system": system.label,
        "fair_share": system.fair_share,
        "latency_ms": latency_ms,
        "jobs": jobs,
    }
    ids = new_ids(system, jobs)
    replies = lab.broker.expect(ids, system.check(workload))
    window = _Window(lab, system, replies)
    calls_before = await api_calls(lab)
    await system.prepare(lab.broker)
    try:
        await lab.broker.load(system.queue, ids, job_encoder(workload, "burst"))
        system.start()
        await window.open_when_ready()
        await wait_replies(lab, system, replies, "the burst")
        out.update(window.figures())
        out["wrong_answers"] = replies.wrong
        out["moved"] = await system.moves()
        # The garbage collector's share: held deliveries live long enough to be walked.
        out["gc_pause_s"] = await metric_total(system.port, "sfworker_gc_pause_seconds_sum")
        out["gc_collections"] = await metric_total(system.port, "sfworker_gc_pause_seconds_count")
        # The request queue's prefetch at the burst's end (fair share: narrow or wide).
        out["window"] = await metric_total(system.port, "sfworker_routing_window")
        # Identical searches in flight at once share a call, or travel together: how many
        # calls reached Salesforce (it differs with the rhythm the jobs start in).
        out["api_calls_per_job"] = (await api_calls(lab) - calls_before) / jobs
        out["mixed"] = await _with_trickle(lab, system, workload, jobs)
    finally:
        out.update(await finish(lab, system))
    return out


async def _with_trickle(
    lab: Lab, system: TwoAccounts, workload: Workload, jobs: int
) -> dict[str, Any]:
    before = await system.moves()
    burst = new_ids(system, jobs)
    trickle = new_ids(system, int(TRICKLE_RATE * TRICKLE_SECONDS))
    replies = lab.broker.expect(burst + trickle, system.check(workload))
    started = time.monotonic()

    async def flood() -> None:
        await asyncio.sleep(0.5 / TRICKLE_RATE)  # just after the trickle's first job
        await lab.broker.load(system.queue, burst, job_encoder(workload, "burst"))

    encode = job_encoder(workload, "trickle")
    await asyncio.gather(flood(), lab.broker.paced(system.queue, trickle, encode, TRICKLE_RATE))
    await wait_replies(lab, system, replies, "the burst with a trickle")
    last_burst = max(replies.arrived[k] for k in burst)
    latencies = sorted((replies.arrived[k] - replies.sent[k]) * 1000 for k in trickle)
    return {
        "trickle_jobs": len(trickle),
        "trickle_p50_ms": percentile(latencies, 50),
        "trickle_p99_ms": percentile(latencies, 99),
        "trickle_max_ms": latencies[-1],
        "burst_seconds": last_burst - started,
        "moved": await system.moves() - before,
        "wrong_answers": replies.wrong,
    }


def _mixed(key: str) -> Any:
    return lambda t: t["mixed"][key]


def render_burst(trials: list[Trial]) -> str:
    """The table of medians per latency and setting, and the ratios on / off."""
    burst = _select(trials, "burst")
    if not burst:
        return ""
    rows, ratios = [], []
    for latency in sorted({t["latency_ms"] for t in burst}):
        medians: dict[bool, tuple[float, float]] = {}
        for on in (True, False):
            group = _select(burst, "burst", latency_ms=latency, fair_share=on)
            if not group:
                continue
            rate = median(group, lambda t: t["jobs_per_s"])
            cpu = median(group, lambda t: t["cpu_s_per_1000"])
            if rate and cpu:
                medians[on] = (rate, cpu)
            rows.append(
                [
                    group[0]["system"],
                    f"{latency} ms",
                    _f(rate, 0),
                    _f(cpu, 3),
                    _f(median(group, lambda t: t["moved"]), 0),
                    _f(median(group, _mixed("trickle_p50_ms"))),
                    _f(median(group, _mixed("trickle_p99_ms"))),
                    _f(median(group, _mixed("burst_seconds")), 2),
                    _f(median(group, _mixed("moved")), 0),
                    str(sum(t["wrong_answers"] + t["mixed"]["wrong_answers"] for t in group)),
                ]
            )
        on_, off = medians.get(True), medians.get(False)
        if on_ and off:
            ratios.append(
                f"fair share on / off at {latency} ms: jobs/s {on_[0] / off[0]:.2f}{TIMES}, "
                f"CPU per job {on_[1] / off[1]:.2f}{TIMES}"
            )
    jobs = burst[0]["jobs"]
    return (
        "### Burst of one account, two accounts in the file (one process)\n\n"
        f"{jobs:,} searches of account `burst` in the queue before the start (jobs/s, CPU, "
        f"moved to a lane); then {jobs:,} more at once while account `trickle` gets "
        f"{TRICKLE_RATE:.0f} jobs/s for {TRICKLE_SECONDS} s (its latency; the burst's time).\n\n"
        + table(
            [
                "system",
                "latency",
                "burst jobs/s",
                "CPU s / 1000 jobs",
                "burst moved",
                "trickle p50 ms",
                "trickle p99 ms",
                "burst beside trickle s",
                "moved then",
                "wrong",
            ],
            rows,
        )
        + ("\n\n" + "\n".join(ratios) if ratios else "")
    )
