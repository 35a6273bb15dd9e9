"""Issue 7, acceptance 6 and the fleet-wide concurrency cap: an org past its API reserve gets no
call from the fleet until its limit is raised; `max_concurrency` holds for all workers together."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.fleet.helpers import Fleet, searches

pytestmark = pytest.mark.slow


async def test_a_fleet_past_the_reserve_calls_nothing_and_resumes_when_raised(
    fleet: Fleet,
) -> None:
    await fleet.simulator.seed("Account", [{"Name": "Acme"}])
    await fleet.simulator.set_daily_limit(1000, used=960)
    await fleet.start(2)
    batch = searches("held", 20)
    assert await fleet.run_all(batch) == ["failed"] * 20
    by_id = {r["job_id"]: r for r in fleet.jobs.results}
    for body in batch:
        error = by_id[body["job_id"]]["error"]
        assert error["code"] == "RATE_LIMITED"
        assert "96%" in error["message"]
        assert error["retryable"] is True
    counters = await fleet.simulator.counters()
    assert counters["requests"].get("query", 0) == 0  # no call for any of them
    assert counters["requests"].get("limits", 0) <= 2  # the fleet read /limits instead

    await fleet.simulator.set_daily_limit(100_000, used=960)
    raised = time.monotonic()
    n = 0
    while True:
        n += 1
        [status] = await fleet.run_all(searches(f"after-{n}", 1))
        if status == "ok":
            break
        assert time.monotonic() - raised < 12, "work did not resume within 12 s"
        await asyncio.sleep(0.5)
    resumed = time.monotonic() - raised
    print(f"\nwork resumed {resumed:.1f} s after the limit was raised")
    assert resumed < 12


async def test_max_concurrency_holds_for_the_whole_fleet(
    fleet: Fleet,
) -> None:
    await fleet.simulator.seed("Account", [{"Name": "Acme"}])
    # One call per job (no coalescing): the subject is the number of calls in flight.
    capped = fleet.configure(extra="max_concurrency = 8\n", coalesce_wait_ms=0)
    await fleet.start(2, capped, prefetch=50)
    await fleet.run_all(searches("warm", 4))
    await fleet.simulator.set_latency(150)
    await fleet.simulator.reset_counters()
    batch = searches("capped", 100)
    await asyncio.gather(*(fleet.jobs.publish(body) for body in batch))
    assert await fleet.answers(batch) == ["ok"] * 100
    counters = await fleet.simulator.counters()
    assert 4 <= counters["max_concurrency"] <= 8  # both workers used it, never past the cap
