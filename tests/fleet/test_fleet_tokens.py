"""Issue 7, acceptance 1-3: one token request per account per expiry for the whole fleet,
rotation without revocation, at most a cap's worth of 401s, and a dead lock holder survived.
Workers run as real processes (`python -m worker run`) sharing the test's Redis prefix."""

from __future__ import annotations

import signal

import pytest
from sfsim.testing import (
    DEFAULT_CLIENT_ID,
    DEFAULT_REFRESH_TOKEN,
)

from tests.fleet.helpers import Fleet, searches
from tests.support.metrics import metric
from tests.support.waiting import wait_until
from tests.support.workers import WorkerProcess

pytestmark = pytest.mark.slow


async def test_four_workers_make_one_token_request_per_expiry(
    fleet: Fleet,
) -> None:
    await fleet.simulator.seed("Account", [{"Name": "Acme"}])
    await fleet.start(4, prefetch=100)
    assert await fleet.run_all(searches("warm", 40)) == ["ok"] * 40
    assert (await fleet.simulator.counters())["token_requests_total"] == 1

    await fleet.simulator.set_latency(300)
    await fleet.simulator.reset_counters()
    assert await fleet.expire_mid_flight(searches("storm", 400)) == ["ok"] * 400
    counters = await fleet.simulator.counters()
    assert counters["token_requests_total"] == 1
    assert counters["responses"].get("401", 0) >= 1  # the sessions really died mid-flight


async def test_rotation_two_rounds_one_refresh_each_and_no_revocation(
    fleet: Fleet,
) -> None:
    await fleet.rotating_org()
    rotating = fleet.configure(flow="refresh_token")
    await fleet.start(4, rotating, prefetch=100)
    assert await fleet.run_all(searches("warm", 40)) == ["ok"] * 40
    await fleet.simulator.set_latency(300)
    for round_ in (1, 2):
        await fleet.simulator.reset_counters()
        batch = searches(f"round{round_}", 400)
        assert await fleet.expire_mid_flight(batch) == ["ok"] * 400
        counters = await fleet.simulator.counters()
        assert counters["token_requests"] == {"refresh_token": 1}, round_
        assert counters["oauth_events"] == {}, round_  # no rejection, no revocation
    valid = await fleet.simulator.refresh_tokens(DEFAULT_CLIENT_ID)
    assert len(valid) == 1
    assert valid != [DEFAULT_REFRESH_TOKEN]  # rotated three times, chain alive


async def test_one_worker_500_searches_after_expiry_see_at_most_a_cap_of_401s(
    fleet: Fleet,
) -> None:
    await fleet.simulator.seed("Account", [{"Name": "Acme"}])
    capped = fleet.configure(extra="max_concurrency = 50\n")
    await fleet.start(1, capped, prefetch=500)
    assert await fleet.run_all(searches("warm", 5)) == ["ok"] * 5
    await fleet.simulator.set_latency(100)
    await fleet.simulator.expire_sessions()
    await fleet.simulator.reset_counters()
    assert await fleet.run_all(searches("burst", 500)) == ["ok"] * 500
    counters = await fleet.simulator.counters()
    assert counters["token_requests_total"] == 1
    assert 1 <= counters["responses"].get("401", 0) <= 50
    assert counters["max_concurrency"] <= 50


async def test_a_killed_lock_holder_is_survived_after_its_lease(
    fleet: Fleet,
) -> None:
    await fleet.simulator.seed("Account", [{"Name": "Acme"}])
    await fleet.simulator.hold("token", route="token")  # the first token request waits for the test
    # The token timeout (which also bounds a wait for another worker's request) outlasts the
    # hold: the window closes when the test says, not on a loaded machine's clock.
    patient = {"prefetch": 100, "token_timeout_seconds": 120}
    holder: WorkerProcess = fleet.spawn(fleet.settings, **patient)
    await holder.wait_ready()
    first = searches("held", 1)
    await fleet.jobs.publish(first[0])
    await fleet.simulator.wait_held("token")
    other: WorkerProcess = fleet.spawn(fleet.settings, **patient, log_level="DEBUG")
    await other.wait_ready()
    rest = searches("waiting", 99)
    for body in rest:
        await fleet.jobs.publish(body)

    async def both_waiting() -> bool:
        waiting = [metric(await w.metrics(), "sfworker_jobs_in_flight") for w in (holder, other)]
        return min(waiting) >= 2

    async def other_found_the_lock_taken() -> bool:
        return "waiting for another worker's token request" in other.log_path.read_text()

    await wait_until(both_waiting, 30, "jobs waiting for the token on both workers")
    await wait_until(other_found_the_lock_taken, 30, "the other worker waiting for the lock")
    # Both workers wait on the one held request: the other one waits for the fleet's lock.
    assert (await fleet.simulator.counters())["token_requests_total"] == 1
    assert (await fleet.simulator.holds())["token"] == {
        "arrived": 1,
        "waiting": 1,
        "released": False,
    }
    holder.proc.send_signal(signal.SIGKILL)
    assert await holder.wait_exit(10) == -signal.SIGKILL
    await fleet.simulator.release("token")  # answered to a dead connection
    statuses = await fleet.answers(first + rest)
    failures = [(r["job_id"], r["error"]) for r in fleet.jobs.results if r["status"] != "ok"]
    assert statuses == ["ok"] * 100, failures[:3]
    assert (await fleet.simulator.counters())["token_requests_total"] == 2


async def test_a_live_holder_keeps_the_lock_through_a_token_request_longer_than_its_lease(
    fleet: Fleet,
) -> None:
    """The token endpoint takes 7 s, longer than the 5 s lease: the holder renews its lease, so
    the other worker keeps waiting instead of sending a second token request."""
    await fleet.simulator.seed("Account", [{"Name": "Acme"}])
    await fleet.simulator.set_latency(0, token_ms=7000)
    await fleet.start(2, prefetch=50, token_timeout_seconds=15)
    assert await fleet.run_all(searches("slow-token", 60)) == ["ok"] * 60
    assert (await fleet.simulator.counters())["token_requests_total"] == 1
