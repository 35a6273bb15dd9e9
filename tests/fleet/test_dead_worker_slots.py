"""A worker killed while it holds slots of an account's fleet-wide cap does not starve the rest
of the fleet: its slots free within a few seconds (leases the living renew), not after the
longest job budget."""

from __future__ import annotations

import signal

import pytest

from tests.fleet.helpers import Fleet, searches
from tests.support.waiting import wait_until
from tests.support.workers import WorkerProcess

pytestmark = pytest.mark.slow


async def test_a_killed_workers_slots_free_quickly(
    fleet: Fleet,
) -> None:
    await fleet.simulator.seed("Account", [{"Name": "Acme"}])
    # Coalescing off: each held search is a call of its own, holding a slot of its own.
    capped = fleet.configure(extra="max_concurrency = 5\n", coalesce_wait_ms=0)
    doomed: WorkerProcess = fleet.spawn(capped, prefetch=5)
    await doomed.wait_ready()
    assert await fleet.run_all(searches("warm", 2)) == ["ok"] * 2
    await fleet.simulator.set_latency(30_000)  # its calls hold every slot of the cap
    for body in searches("held", 5, timeout_ms=60_000):
        await fleet.jobs.publish(body)

    async def cap_in_use() -> bool:
        return int((await fleet.simulator.counters())["in_flight"]) == 5

    await wait_until(cap_in_use, 15, "the cap's 5 slots in use")
    doomed.proc.send_signal(signal.SIGKILL)
    assert await doomed.wait_exit(10) == -signal.SIGKILL

    await fleet.simulator.set_latency(0)
    survivor: WorkerProcess = fleet.spawn(capped, prefetch=20)
    await survivor.wait_ready()
    batch = searches("after", 10, timeout_ms=15_000)
    for body in batch:
        await fleet.jobs.publish(body)
    assert await fleet.answers(batch) == ["ok"] * 10
