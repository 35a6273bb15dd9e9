"""Issue 26, point 4: a refresh token is never replayed. With rotation, the fleet's refresh token
(`refresh:*`) and access token (`token:*`) are lost from Redis (evicted, expired, a Redis that
came back empty): a restarted worker has only the accounts file's token, which rotation spent,
and sending it would make Salesforce revoke the whole chain. It waits for a live worker's copy
instead; with no live worker, its jobs are answered AUTH_FAILED naming `sfworker accounts
authorize`, and nothing is sent."""

from __future__ import annotations

import time

import pytest
import redis.asyncio as aioredis
from sfsim.testing import DEFAULT_CLIENT_ID, DEFAULT_REFRESH_TOKEN

from tests.fleet.helpers import Fleet, searches
from tests.support.metrics import metric
from worker.settings import Settings

pytestmark = pytest.mark.slow


async def _rotating(fleet: Fleet) -> Settings:
    await fleet.rotating_org()
    # A short lease and token timeout: a worker waits for a live worker's copy about 4 s.
    return fleet.configure(
        flow="refresh_token", token_lock_lease_seconds=1, token_timeout_seconds=2
    )


async def _lose_the_fleets_tokens(fleet: Fleet) -> None:
    """What an eviction, the refresh token's TTL or a Redis restarted empty leaves: no refresh
    token and no access token for the fleet (the rest stays)."""
    client = aioredis.from_url(fleet.redis_url)
    try:
        for pattern in ("refresh:*", "token:*"):
            keys = [k async for k in client.scan_iter(match=fleet.redis_prefix + pattern)]
            assert keys, pattern
            await client.delete(*keys)
    finally:
        await client.aclose()


async def test_a_restarted_worker_takes_a_live_workers_copy_and_the_chain_lives(
    fleet: Fleet,
) -> None:
    rotating = await _rotating(fleet)
    live, restarting = await fleet.start(2, rotating, prefetch=20)
    assert await fleet.run_all(searches("before", 20)) == ["ok"] * 20
    assert await fleet.simulator.refresh_tokens(DEFAULT_CLIENT_ID) != [DEFAULT_REFRESH_TOKEN]

    await _lose_the_fleets_tokens(fleet)
    restarting.stop()
    await fleet.simulator.reset_counters()
    (restarted,) = await fleet.start(1, rotating, prefetch=20)
    started = time.monotonic()
    batch = searches("after", 40)
    statuses = await fleet.run_all(batch)
    elapsed = time.monotonic() - started

    errors = [r["error"] for r in fleet.jobs.results if r["status"] != "ok"]
    assert statuses == ["ok"] * 40, errors[:2]
    counters = await fleet.simulator.counters()
    assert counters["oauth_events"] == {}  # no replay, the chain not revoked
    # One token request, the restarted worker's, with the live worker's copy.
    assert counters["token_requests"] == {"refresh_token": 1}
    assert len(await fleet.simulator.refresh_tokens(DEFAULT_CLIENT_ID)) == 1
    ok = {"operation": "search", "status": "ok", "code": ""}
    assert metric(await restarted.metrics(), "sfworker_jobs_total", **ok) > 0
    assert metric(await live.metrics(), "sfworker_jobs_total", **ok) > 0
    print(f"\n40 jobs answered ok {elapsed:.1f} s after the restarted worker was ready")
    assert elapsed < 15


async def test_with_every_worker_restarted_jobs_fail_auth_failed_and_nothing_is_sent(
    fleet: Fleet,
) -> None:
    rotating = await _rotating(fleet)
    workers = await fleet.start(2, rotating, prefetch=20)
    assert await fleet.run_all(searches("before", 20)) == ["ok"] * 20
    chain = await fleet.simulator.refresh_tokens(DEFAULT_CLIENT_ID)

    await _lose_the_fleets_tokens(fleet)
    for worker in workers:
        worker.stop()
    await fleet.simulator.reset_counters()
    await fleet.start(2, rotating, prefetch=20)
    batch = searches("after", 10)
    assert await fleet.run_all(batch) == ["failed"] * 10

    errors = [r["error"] for r in fleet.jobs.results if r["job_id"].startswith("after-")]
    assert {e["code"] for e in errors} == {"AUTH_FAILED"}
    assert all("sfworker accounts authorize main" in e["message"] for e in errors), errors[0]
    counters = await fleet.simulator.counters()
    assert counters.get("token_requests", {}) == {}  # the spent token was never sent
    assert counters["oauth_events"] == {}
    assert await fleet.simulator.refresh_tokens(DEFAULT_CLIENT_ID) == chain  # still alive
