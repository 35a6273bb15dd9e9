"""A worker killed while it holds slots of an account's fleet-wide cap does not starve the rest
of the fleet: its slots free within a few seconds (leases the living renew), not after the
longest job budget."""

from __future__ import annotations

import signal
from typing import Any

import pytest
from sfsim.testing import SimulatorClient

from tests.conftest import WorkerProcess, wait_until
from tests.fleet.conftest import FleetConfig
from tests.fleet.test_fleet_tokens import answers, run_all, searches
from tests.job_client import JobClient

pytestmark = pytest.mark.slow


async def test_a_killed_workers_slots_free_quickly(
    fleet_config: FleetConfig,
    spawn_worker: Any,
    jobs: JobClient,
    simulator: SimulatorClient,
) -> None:
    await simulator.seed("Account", [{"Name": "Acme"}])
    # Coalescing off: each held search is a call of its own, holding a slot of its own.
    capped = fleet_config(extra="max_concurrency = 5\n", coalesce_wait_ms=0)
    doomed: WorkerProcess = spawn_worker(capped, prefetch=5)
    await doomed.wait_ready()
    assert await run_all(jobs, searches("warm", 2)) == ["ok"] * 2
    await simulator.set_latency(30_000)  # its calls hold every slot of the cap
    for body in searches("held", 5, timeout_ms=60_000):
        await jobs.publish(body)

    async def cap_in_use() -> bool:
        return int((await simulator.counters())["in_flight"]) == 5

    await wait_until(cap_in_use, 15, "the cap's 5 slots in use")
    doomed.proc.send_signal(signal.SIGKILL)
    assert await doomed.wait_exit(10) == -signal.SIGKILL

    await simulator.set_latency(0)
    survivor: WorkerProcess = spawn_worker(capped, prefetch=20)
    await survivor.wait_ready()
    batch = searches("after", 10, timeout_ms=15_000)
    for body in batch:
        await jobs.publish(body)
    assert await answers(jobs, batch) == ["ok"] * 10
