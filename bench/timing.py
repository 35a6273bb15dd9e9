"""Timing: how close to its settings the worker keeps its waits (the figures the tests leave out).

The tests assert behaviour (a job ends on its deadline, not on an answer; a backoff pause that
would pass the deadline is not taken; a lone call does not wait for company); how many
milliseconds each of these takes on a machine is measured here, over many trials, as
percentiles. Each trial runs a job through `Execution.run` wired as in `worker.app`, against the
simulator in this process (`sfsim.testing.running_simulator`).

- **deadline overshoot**: a search with a 500 ms budget while Salesforce does not answer (a held
  request): how long after the budget the TIMEOUT answer comes.
- **retry give-up**: a search with a 150 ms budget against a Salesforce answering 503 forever
  (backoff 20 ms base, 200 ms cap): how long the job takes, against its budget.
- **lone-call coalescing wait**: one search at a time (`SFWORKER_COALESCE_WAIT_MS` = 10, the
  default): how long each call waited before it was sent (the tests' bound was 5 ms).
- **simulator delay fault**: a `delay` fault of 300 ms: how long past 300 ms the answer comes.

Run it with `bench/run timing [--trials 50]` (or `.venv/bin/python bench/timing.py`).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from sfsim.testing import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    SimulatorClient,
    running_simulator,
)

from bench.coalescing import accounts
from worker.accounts import Accounts
from worker.app import token_manager
from worker.contract import BlockResult, parse_job
from worker.jobs import Execution, Incoming, admit
from worker.jobs.once import InsertGuard
from worker.observability.metrics import Metrics
from worker.salesforce.client import SalesforceClient
from worker.salesforce.http import create_session
from worker.settings import Settings
from worker.stores.memory_results import MemoryResultStore

ROOT = Path(__file__).resolve().parent.parent
SOQL = "SELECT Id FROM Account"


class Runner:
    """Execution wired as in worker.app, for one settings."""

    def __init__(self, settings: Settings, accts: Accounts) -> None:
        self.metrics = Metrics()
        self.session = create_session(settings)
        self.tokens = token_manager(self.session, settings, self.metrics)
        self.client = SalesforceClient(self.session, self.tokens, settings, self.metrics)
        store = MemoryResultStore(1000, 60)
        self.runner = Execution(self.client, InsertGuard(store), self.metrics)
        self._accounts = accts
        self._n = 0

    async def run(self, timeout_ms: int = 10_000) -> tuple[BlockResult, float]:
        """One search; its result and wall milliseconds."""
        self._n += 1
        body = {"v": 1, "job_id": f"t-{self._n}", "operation": "search", "soql": SOQL}
        job = parse_job({**body, "timeout_ms": timeout_ms})
        now = time.time()
        incoming = Incoming(body=b"", received_wall=now, received_mono=time.monotonic())
        started = time.perf_counter()
        result = await self.runner.run(admit(self._accounts, job, None), incoming)
        return result, (time.perf_counter() - started) * 1000

    async def close(self) -> None:
        await self.client.close()
        await self.tokens.close()
        await self.session.close()


def base_settings(**update: Any) -> Settings:
    return Settings(http_port=0, allow_insecure_localhost=True, **update)


async def deadline_overshoot(sim: SimulatorClient, accts: Accounts, trials: int) -> list[float]:
    runner = Runner(base_settings(), accts)
    try:
        await runner.run()  # the token
        out = []
        for i in range(trials):
            await sim.hold(f"d{i}", route="query")
            result, ms = await runner.run(timeout_ms=500)
            await sim.release(f"d{i}")
            if result.error is None or result.error.code != "TIMEOUT":
                raise RuntimeError(f"expected TIMEOUT, got {result}")
            out.append(ms - 500)
        return out
    finally:
        await runner.close()


async def retry_give_up(sim: SimulatorClient, accts: Accounts, trials: int) -> list[float]:
    runner = Runner(base_settings(retry_base_ms=20, retry_cap_ms=200), accts)
    try:
        await runner.run()
        await sim.add_fault(status=503, route="query", count=10**6)
        out = []
        for _ in range(trials):
            result, ms = await runner.run(timeout_ms=150)
            if result.error is None:
                raise RuntimeError(f"expected a failure, got {result}")
            out.append(ms)
        await sim.clear_faults()
        return out
    finally:
        await runner.close()


async def lone_coalescing_wait(sim: SimulatorClient, accts: Accounts, trials: int) -> list[float]:
    runner = Runner(base_settings(coalesce_wait_ms=10), accts)
    await sim.set_latency(30)  # longer than twice the wait: the account stays quiet
    try:
        await runner.run()
        before = _wait_samples(runner.metrics)
        out = []
        for _ in range(trials):
            await runner.run()
            now = _wait_samples(runner.metrics)
            out.append((now[1] - before[1]) * 1000)  # this call's wait (one observation)
            before = now
        return out
    finally:
        await sim.set_latency(0)
        await runner.close()


def _wait_samples(metrics: Metrics) -> tuple[float, float]:
    count = metrics.registry.get_sample_value(
        "sfworker_coalesce_wait_seconds_count", {"account": "bench"}
    )
    total = metrics.registry.get_sample_value(
        "sfworker_coalesce_wait_seconds_sum", {"account": "bench"}
    )
    return count or 0.0, total or 0.0


async def delay_fault(sim: SimulatorClient, _accts: Accounts, trials: int) -> list[float]:
    out = []
    async with aiohttp.ClientSession() as http:
        url = f"{sim.base_url}/services/oauth2/token"
        form = {
            "grant_type": "client_credentials",
            "client_id": DEFAULT_CLIENT_ID,
            "client_secret": DEFAULT_CLIENT_SECRET,
        }
        await sim.set_latency(0, token_ms=0)
        for _ in range(trials):
            await sim.add_fault(action="delay", delay_ms=300, route="token")
            started = time.perf_counter()
            async with http.post(url, data=form) as resp:
                await resp.read()
            out.append((time.perf_counter() - started) * 1000 - 300)
    return out


Measure = Callable[[SimulatorClient, Accounts, int], Awaitable[list[float]]]
MEASURES: list[tuple[str, str, Measure]] = [
    ("deadline overshoot", "ms after a 500 ms budget", deadline_overshoot),
    ("retry give-up", "ms for a 150 ms budget", retry_give_up),
    ("lone-call coalescing wait", "ms waited (setting 10 ms)", lone_coalescing_wait),
    ("simulator delay fault", "ms past 300 ms", delay_fault),
]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run_all(trials: int) -> list[tuple[str, str, list[float]]]:
    rows = []
    async with running_simulator() as sim:
        accts = accounts(sim.base_url)
        for name, unit, measure in MEASURES:
            await sim.reset()
            print(f"{name}...", file=sys.stderr)
            rows.append((name, unit, await measure(sim, accts, trials)))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--trials", type=int, default=50, help="trials per figure")
    parser.add_argument("--time-limit", type=float, default=600.0, help="seconds, then give up")
    args = parser.parse_args(argv)
    if args.trials < 1:
        parser.error("--trials must be at least 1")

    async def bounded() -> list[tuple[str, str, list[float]]]:
        async with asyncio.timeout(args.time_limit):
            return await run_all(args.trials)

    rows = asyncio.run(bounded())
    print(f"\n{args.trials} trials each\n")
    print("| figure | unit | p50 | p99 | max | mean |")
    print("|---|---|---:|---:|---:|---:|")
    for name, unit, values in rows:
        print(
            f"| {name} | {unit} | {pct(values, 0.5):.1f} | {pct(values, 0.99):.1f} "
            f"| {max(values):.1f} | {statistics.fmean(values):.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
