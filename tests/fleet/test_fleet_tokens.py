"""Issue 7, acceptance 1-3: one token request per account per expiry for the whole fleet,
rotation without revocation, at most a cap's worth of 401s, and a dead lock holder survived.
Workers run as real processes (`python -m worker run`) sharing the test's Redis prefix."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import pytest
from sfsim.testing import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_REFRESH_TOKEN,
    SimulatorClient,
)

from tests.conftest import WorkerProcess, wait_until
from tests.fleet.conftest import FleetConfig
from tests.job_client import JobClient
from tests.metrics import metric
from worker.settings import Settings

pytestmark = pytest.mark.slow

SOQL = "SELECT Id, Name FROM Account WHERE Name = 'Acme'"


def searches(tag: str, n: int, timeout_ms: int = 60000) -> list[dict[str, Any]]:
    return [
        {
            "v": 1,
            "job_id": f"{tag}-{i}",
            "operation": "search",
            "soql": SOQL,
            "timeout_ms": timeout_ms,
        }
        for i in range(n)
    ]


async def answers(jobs: JobClient, batch: list[dict[str, Any]]) -> list[str]:
    """Wait for every job of the batch to be answered; the statuses in the batch's order."""
    wanted = {b["job_id"] for b in batch}

    async def answered() -> bool:
        return wanted <= {r["job_id"] for r in jobs.results}

    await wait_until(answered, 90, f"{len(batch)} answers")
    by_id = {r["job_id"]: r for r in jobs.results}
    return [by_id[b["job_id"]]["status"] for b in batch]


async def run_all(jobs: JobClient, batch: list[dict[str, Any]]) -> list[str]:
    await asyncio.gather(*(jobs.publish(body) for body in batch))
    return await answers(jobs, batch)


async def start_fleet(
    spawn_worker: Any, settings: Settings, n: int, **kw: Any
) -> list[WorkerProcess]:
    workers = [spawn_worker(settings, **kw) for _ in range(n)]
    for worker in workers:
        await worker.wait_ready()
    return workers


async def expire_mid_flight(
    jobs: JobClient, simulator: SimulatorClient, batch: list[dict[str, Any]]
) -> list[str]:
    """Publish the batch, expire every session while many of its calls are in flight."""
    await asyncio.gather(*(jobs.publish(body) for body in batch))

    async def busy() -> bool:
        # Coalesced: each request in flight carries up to 5 searches (8 requests: ~40 searches).
        return int((await simulator.counters())["in_flight"]) >= 8

    await wait_until(busy, 30, "40 searches in flight")
    await simulator.expire_sessions()
    return await answers(jobs, batch)


async def test_four_workers_make_one_token_request_per_expiry(
    fleet_settings: Settings, spawn_worker: Any, jobs: JobClient, simulator: SimulatorClient
) -> None:
    await simulator.seed("Account", [{"Name": "Acme"}])
    await start_fleet(spawn_worker, fleet_settings, 4, prefetch=100)
    assert await run_all(jobs, searches("warm", 40)) == ["ok"] * 40
    assert (await simulator.counters())["token_requests_total"] == 1

    await simulator.set_latency(300)
    await simulator.reset_counters()
    assert await expire_mid_flight(jobs, simulator, searches("storm", 400)) == ["ok"] * 400
    counters = await simulator.counters()
    assert counters["token_requests_total"] == 1
    assert counters["responses"].get("401", 0) >= 1  # the sessions really died mid-flight


async def test_rotation_two_rounds_one_refresh_each_and_no_revocation(
    fleet_config: FleetConfig,
    spawn_worker: Any,
    jobs: JobClient,
    simulator: SimulatorClient,
) -> None:
    await simulator.set_client(
        DEFAULT_CLIENT_ID,
        DEFAULT_CLIENT_SECRET,
        rotation=True,
        refresh_tokens=[DEFAULT_REFRESH_TOKEN],
    )
    await simulator.seed("Account", [{"Name": "Acme"}])
    rotating = fleet_config(flow="refresh_token")
    await start_fleet(spawn_worker, rotating, 4, prefetch=100)
    assert await run_all(jobs, searches("warm", 40)) == ["ok"] * 40
    await simulator.set_latency(300)
    for round_ in (1, 2):
        await simulator.reset_counters()
        batch = searches(f"round{round_}", 400)
        assert await expire_mid_flight(jobs, simulator, batch) == ["ok"] * 400
        counters = await simulator.counters()
        assert counters["token_requests"] == {"refresh_token": 1}, round_
        assert counters["oauth_events"] == {}, round_  # no rejection, no revocation
    valid = await simulator.refresh_tokens(DEFAULT_CLIENT_ID)
    assert len(valid) == 1
    assert valid != [DEFAULT_REFRESH_TOKEN]  # rotated three times, chain alive


async def test_one_worker_500_searches_after_expiry_see_at_most_a_cap_of_401s(
    fleet_config: FleetConfig,
    spawn_worker: Any,
    jobs: JobClient,
    simulator: SimulatorClient,
) -> None:
    await simulator.seed("Account", [{"Name": "Acme"}])
    capped = fleet_config(extra="max_concurrency = 50\n")
    await start_fleet(spawn_worker, capped, 1, prefetch=500)
    assert await run_all(jobs, searches("warm", 5)) == ["ok"] * 5
    await simulator.set_latency(100)
    await simulator.expire_sessions()
    await simulator.reset_counters()
    assert await run_all(jobs, searches("burst", 500)) == ["ok"] * 500
    counters = await simulator.counters()
    assert counters["token_requests_total"] == 1
    assert 1 <= counters["responses"].get("401", 0) <= 50
    assert counters["max_concurrency"] <= 50


async def test_a_killed_lock_holder_is_survived_after_its_lease(
    fleet_settings: Settings, spawn_worker: Any, jobs: JobClient, simulator: SimulatorClient
) -> None:
    await simulator.seed("Account", [{"Name": "Acme"}])
    await simulator.hold("token", route="token")  # the first token request waits for the test
    # The token timeout (which also bounds a wait for another worker's request) outlasts the
    # hold: the window closes when the test says, not on a loaded machine's clock.
    patient = {"prefetch": 100, "token_timeout_seconds": 120}
    holder: WorkerProcess = spawn_worker(fleet_settings, **patient)
    await holder.wait_ready()
    first = searches("held", 1)
    await jobs.publish(first[0])
    await simulator.wait_held("token")
    other: WorkerProcess = spawn_worker(fleet_settings, **patient, log_level="DEBUG")
    await other.wait_ready()
    rest = searches("waiting", 99)
    for body in rest:
        await jobs.publish(body)

    async def both_waiting() -> bool:
        waiting = [metric(await w.metrics(), "sfworker_jobs_in_flight") for w in (holder, other)]
        return min(waiting) >= 2

    async def other_found_the_lock_taken() -> bool:
        return "waiting for another worker's token request" in other.log_path.read_text()

    await wait_until(both_waiting, 30, "jobs waiting for the token on both workers")
    await wait_until(other_found_the_lock_taken, 30, "the other worker waiting for the lock")
    # Both workers wait on the one held request: the other one waits for the fleet's lock.
    assert (await simulator.counters())["token_requests_total"] == 1
    assert (await simulator.holds())["token"] == {"arrived": 1, "waiting": 1, "released": False}
    holder.proc.send_signal(signal.SIGKILL)
    assert await holder.wait_exit(10) == -signal.SIGKILL
    await simulator.release("token")  # answered to a dead connection
    statuses = await answers(jobs, first + rest)
    failures = [(r["job_id"], r["error"]) for r in jobs.results if r["status"] != "ok"]
    assert statuses == ["ok"] * 100, failures[:3]
    assert (await simulator.counters())["token_requests_total"] == 2


async def test_a_live_holder_keeps_the_lock_through_a_token_request_longer_than_its_lease(
    fleet_settings: Settings, spawn_worker: Any, jobs: JobClient, simulator: SimulatorClient
) -> None:
    """The token endpoint takes 7 s, longer than the 5 s lease: the holder renews its lease, so
    the other worker keeps waiting instead of sending a second token request."""
    await simulator.seed("Account", [{"Name": "Acme"}])
    await simulator.set_latency(0, token_ms=7000)
    await start_fleet(spawn_worker, fleet_settings, 2, prefetch=50, token_timeout_seconds=15)
    assert await run_all(jobs, searches("slow-token", 60)) == ["ok"] * 60
    assert (await simulator.counters())["token_requests_total"] == 1
