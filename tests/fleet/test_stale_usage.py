"""Issue 29, point 3: a fleet reading carries its age. A reading of "100% used" left in Redis by a
fleet that stopped hours ago does not hold a new fleet's first jobs back: a reading older than a
few share periods is not trusted at start, and the worker reads /limits instead."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest
import redis.asyncio as aioredis

from tests.fleet.helpers import Fleet, searches

pytestmark = pytest.mark.slow


async def _leave_reading(fleet: Fleet, used: int, limit: int, age: float) -> None:
    """A usage reading of account `main` as a fleet that stopped `age` seconds ago left it."""
    at = time.time() - age
    client = aioredis.from_url(fleet.redis_url)
    try:
        value = orjson.dumps({"used": used, "limit": limit, "at": at})
        await client.set(f"{fleet.redis_prefix}usage:main", value, ex=3600)
        await client.set(f"{fleet.redis_prefix}usage-at:main", repr(at), ex=3600)
    finally:
        await client.aclose()


async def test_a_stale_reading_of_a_full_org_does_not_hold_back_a_new_fleet(
    fleet: Fleet,
) -> None:
    await fleet.simulator.set_daily_limit(80_000, used=1_000)
    await _leave_reading(fleet, used=13, limit=13, age=3 * 3600)
    await fleet.start(1, fleet.configure())
    batch = searches("stale", 4)
    assert await fleet.run_all(batch) == ["no_data"] * len(batch)  # Salesforce answered
    counters = await fleet.simulator.counters()
    assert counters["requests"].get("limits") == 1  # the worker read the org's usage itself


async def test_a_recent_reading_is_still_the_fleet_s_word(fleet: Fleet) -> None:
    """A reading a live fleet keeps sharing is trusted: no /limits read, and an org past the
    reserve holds the new worker's jobs back at once."""
    await fleet.simulator.set_daily_limit(80_000, used=1_000)

    async def live_fleet() -> None:  # shares its reading twice a share period, as workers do
        while True:
            await _leave_reading(fleet, used=13, limit=13, age=0.0)
            await asyncio.sleep(0.5)

    sharing = asyncio.create_task(live_fleet())
    try:
        await fleet.start(1, fleet.configure())
        batch = searches("recent", 4)
        assert await fleet.run_all(batch) == ["failed"] * len(batch)
    finally:
        sharing.cancel()
    counters = await fleet.simulator.counters()
    assert "limits" not in counters["requests"]
