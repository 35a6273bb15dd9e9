"""One measured trial of one system: start its processes, run jobs through them, stop them,
and return the raw figures (a dict, written to the JSON file as is)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sfsim.testing import SimulatorClient

from bench.e2e.broker import Broker, Replies
from bench.e2e.procs import Child, cpu_seconds
from bench.e2e.systems import System, Workload

START_TIMEOUT = 90.0


@dataclass
class Lab:
    """What every trial uses: the broker side, the simulator and its process."""

    broker: Broker
    sim: SimulatorClient
    sim_child: Child
    reply_timeout: float


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted values (0 when empty)."""
    if not values:
        return 0.0
    rank = max(1, min(len(values), round(q / 100 * len(values) + 0.5)))
    return values[rank - 1]


def new_ids(system: System, n: int) -> list[str]:
    stem = uuid.uuid4().hex[:8]
    return [f"{system.queue[-12:]}-{stem}-{i}" for i in range(n)]


async def wait_replies(lab: Lab, system: System, replies: Replies, what: str) -> None:
    """Wait for every reply; fail early (with the logs) when a process died."""
    task = asyncio.ensure_future(lab.broker.wait(replies, lab.reply_timeout))
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=1.0)
            if not task.done() and not system.alive():
                raise RuntimeError(f"{system.label} died during {what}:\n{system.logs()}")
        task.result()
    except BaseException:
        task.cancel()
        raise


async def ready(lab: Lab, system: System) -> None:
    try:
        await lab.broker.wait_consumers(system.queue, system.consumers, START_TIMEOUT)
    except RuntimeError:
        raise RuntimeError(f"{system.label} did not start:\n{system.logs()}") from None


async def finish(lab: Lab, system: System) -> dict[str, Any]:
    codes = system.stop()
    left = await lab.broker.depth(system.queue)
    await system.cleanup(lab.broker)
    return {"exit_codes": codes, "left_in_queue": left}


def _second_half_rate(arrived: list[float]) -> float:
    half = arrived[len(arrived) // 2 :]
    return (len(half) - 1) / (half[-1] - half[0]) if len(half) > 1 and half[-1] > half[0] else 0.0


def broker_cpu_seconds() -> float:
    """CPU of the machine's RabbitMQ nodes so far (every `beam.smp` running rabbit): the broker
    shares the machine's cores with the worker, so its cost per job is part of the figure."""
    total = 0.0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"beam.smp" in cmdline and b"rabbit" in cmdline:
            total += cpu_seconds(int(proc.name))
    return total


class _Window:
    """CPU and time from the moment every consumer is up until the last reply."""

    def __init__(self, lab: Lab, system: System, replies: Replies) -> None:
        self.lab, self.system, self.replies = lab, system, replies
        self.start: tuple[float, float, float, float, int] | None = None
        self.end: tuple[float, float, float, float] | None = None
        replies.on_last = self._last

    def _sample(self) -> tuple[float, float, float, float]:
        return (
            time.monotonic(),
            self.system.cpu(),
            self.lab.sim_child.cpu_seconds(),
            broker_cpu_seconds(),
        )

    def _last(self) -> None:
        self.end = self._sample()

    async def open_when_ready(self) -> None:
        await ready(self.lab, self.system)
        self.start = (*self._sample(), len(self.replies.arrived))

    def figures(self) -> dict[str, float]:
        assert self.start is not None
        assert self.end is not None
        t0, c0, s0, b0, done0 = self.start
        t1, c1, s1, b1 = self.end
        jobs = len(self.replies.expected) - done0
        arrived = sorted(t for t in self.replies.arrived.values() if t >= t0)
        return {
            "measured_jobs": jobs,
            "seconds": t1 - t0,
            "jobs_per_s": jobs / (t1 - t0),
            "cpu_s_per_1000": (c1 - c0) / jobs * 1000,
            "sim_cpu_s_per_1000": (s1 - s0) / jobs * 1000,
            "broker_cpu_s_per_1000": (b1 - b0) / jobs * 1000,
            # The start-up's share: how long the first reply took, and the pace of the second
            # half of the replies alone.
            "first_reply_s": min(arrived) - t0 if arrived else 0.0,
            "second_half_jobs_per_s": _second_half_rate(arrived),
        }


async def throughput_trial(
    lab: Lab,
    system: System,
    workload: Workload,
    latency_ms: int,
    jobs: int,
    paced_jobs: int = 0,
    rate: float = 0.0,
) -> dict[str, Any]:
    """`jobs` wait in the queue before the system starts; jobs/s and CPU are counted from the
    moment all its consumers are up to the last reply. Then, if asked, `paced_jobs` are sent
    at `rate` per second for the end-to-end latency."""
    await lab.sim.set_latency(latency_ms, token_ms=latency_ms)
    await lab.sim.reset_counters()
    out: dict[str, Any] = {"system": system.label, "latency_ms": latency_ms, "jobs": jobs}
    ids = new_ids(system, jobs)
    replies = lab.broker.expect(ids, system.check(workload))
    window = _Window(lab, system, replies)
    await system.prepare(lab.broker)
    try:
        await lab.broker.load(system.queue, ids, system.encode(workload))
        system.start()
        await window.open_when_ready()
        await wait_replies(lab, system, replies, "the throughput run")
        out.update(window.figures())
        out["peak_rss_mb"] = system.rss_mb()
        out["wrong_answers"] = replies.wrong
        if paced_jobs:
            out["paced"] = await _paced(lab, system, workload, latency_ms, paced_jobs, rate)
        counters = await lab.sim.counters()
        out["token_requests"] = counters["token_requests_total"]
    finally:
        out.update(await finish(lab, system))
    return out


async def _paced(
    lab: Lab, system: System, workload: Workload, latency_ms: int, jobs: int, rate: float
) -> dict[str, Any]:
    ids = new_ids(system, jobs)
    replies = lab.broker.expect(ids, system.check(workload))
    await lab.broker.paced(system.queue, ids, system.encode(workload), rate)
    await wait_replies(lab, system, replies, "the paced run")
    lat = replies.latencies_ms()
    return {
        "rate": rate,
        "jobs": jobs,
        "p50_ms": percentile(lat, 50),
        "p99_ms": percentile(lat, 99),
        "added_p99_ms": percentile(lat, 99) - latency_ms,
        "wrong_answers": replies.wrong,
    }


async def storm_trial(
    lab: Lab, system: System, workload: Workload, latency_ms: int, jobs: int, expire: bool
) -> dict[str, Any]:
    """Warm the system up (its tokens are fetched), then publish `jobs` at once; after the
    100th reply every session expires (when `expire`). Counts token requests and 401s."""
    await lab.sim.set_latency(latency_ms, token_ms=latency_ms)
    out: dict[str, Any] = {"system": system.label, "latency_ms": latency_ms, "jobs": jobs}
    await system.prepare(lab.broker)
    try:
        system.start()
        await ready(lab, system)
        warm = new_ids(system, 64 * system.consumers)
        replies = lab.broker.expect(warm, system.check(workload))
        await lab.broker.load(system.queue, warm, system.encode(workload))
        await wait_replies(lab, system, replies, "the warm-up")
        await lab.sim.reset_counters()
        ids = new_ids(system, jobs)
        replies = lab.broker.expect(ids, system.check(workload))
        expired: list[asyncio.Task[None]] = []
        if expire:
            replies.on_count = (100, _later(expired, lab.sim.expire_sessions))
        await lab.broker.load(system.queue, ids, system.encode(workload))
        await wait_replies(lab, system, replies, "the storm")
        await asyncio.gather(*expired)
        counters = await lab.sim.counters()
        lat = replies.latencies_ms()
        out.update(
            {
                "expired": expire,
                "token_requests": counters["token_requests_total"],
                "unauthorized_401": int(counters.get("responses", {}).get("401", 0)),
                "p50_ms": percentile(lat, 50),
                "p99_ms": percentile(lat, 99),
                "wrong_answers": replies.wrong,
            }
        )
    finally:
        out.update(await finish(lab, system))
    return out


def _later(tasks: list[asyncio.Task[None]], call: Callable[[], Any]) -> Callable[[], None]:
    def fire() -> None:
        tasks.append(asyncio.ensure_future(call()))

    return fire


async def sequential_trial(
    lab: Lab, system: System, workload: Workload, latency_ms: int, jobs: int
) -> dict[str, Any]:
    """One job at a time (the next is sent when the reply arrived): latency and CPU per record."""
    await lab.sim.set_latency(latency_ms, token_ms=latency_ms)
    out: dict[str, Any] = {"system": system.label, "latency_ms": latency_ms, "jobs": jobs}
    await system.prepare(lab.broker)
    try:
        system.start()
        await ready(lab, system)
        warm = new_ids(system, 3)
        replies = lab.broker.expect(warm, system.check(workload))
        await lab.broker.one_by_one(system.queue, warm, system.encode(workload), 60)
        ids = new_ids(system, jobs)
        replies = lab.broker.expect(ids, system.check(workload))
        cpu0 = system.cpu()
        await lab.broker.one_by_one(system.queue, ids, system.encode(workload), lab.reply_timeout)
        cpu1 = system.cpu()
        lat = replies.latencies_ms()
        records = jobs * workload.expected
        out.update(
            {
                "records_per_job": workload.expected,
                "p50_ms": percentile(lat, 50),
                "p99_ms": percentile(lat, 99),
                "cpu_us_per_record": (cpu1 - cpu0) / records * 1e6,
                "cpu_ms_per_job": (cpu1 - cpu0) / jobs * 1000,
                "peak_rss_mb": system.rss_mb(),
                "wrong_answers": replies.wrong,
            }
        )
    finally:
        out.update(await finish(lab, system))
    return out
