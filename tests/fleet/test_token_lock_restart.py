"""A token refresh caught by a Redis restart: the worker took the fleet's refresh lock, Redis
died before the new token was published (the worker keeps it alone) and came back from its
append-only file with the lock still in it. Once the worker is back on Redis, its jobs are
answered at once: the lock it could not release during the outage is released on the way back,
not left to hold every token request of the fleet for the rest of its lease.

(The fault storm's Redis restart, seed 224683048: a refresh under way at the restart left its
lock for 5 s, and the jobs of a worker needing a token meanwhile were answered TIMEOUT.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.fleet.helpers import Fleet, searches
from tests.support.metrics import metric
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_until
from tests.support.workers import WorkerProcess

pytestmark = pytest.mark.slow

PREFIX = "sfworker-lock:"
# The lock's lease outlasts the test, so that only its release ends it.
LEASE = 30


@pytest.fixture
async def durable_redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis", durable=True)
    await server.start()
    yield server
    server.kill()


async def test_a_token_lock_left_by_a_redis_restart_does_not_hold_the_jobs(
    fleet: Fleet,
    durable_redis: RedisServer,
) -> None:
    await fleet.simulator.seed("Account", [{"Name": "Acme"}])
    settings = fleet.settings_with(
        redis_url=durable_redis.url, redis_prefix=PREFIX, redis_retry_seconds=0.5
    )
    worker: WorkerProcess = fleet.spawn(
        settings, token_lock_lease_seconds=LEASE, token_timeout_seconds=60
    )
    await worker.wait_ready()
    assert await fleet.run_all(searches("warm", 1)) == ["ok"]

    async def fallback(value: float) -> bool:
        return metric(await worker.metrics(), "sfworker_redis_fallback") == value

    # The session dies; the next call refreshes under the fleet's lock, and its token request
    # waits at the simulator until Redis is gone.
    await fleet.simulator.hold("token", route="token")
    await fleet.simulator.expire_sessions()
    refreshing = searches("refreshing", 1)
    await fleet.jobs.publish(refreshing[0])
    await fleet.simulator.wait_held("token")
    assert await durable_redis.keys(f"{PREFIX}token-lock:*")
    durable_redis.kill()
    await wait_until(lambda: fallback(1.0), 15, "the worker in fallback")
    await fleet.simulator.release("token")
    assert await fleet.answers(refreshing) == ["ok"]  # with the token it keeps alone

    await durable_redis.start()
    assert await durable_redis.keys(f"{PREFIX}token-lock:*")  # back from the append-only file
    await wait_until(lambda: fallback(0.0), 15, "the worker back on Redis")
    after = searches("after", 5, timeout_ms=5000)
    statuses = await fleet.run_all(after)
    errors = [r["error"] for r in fleet.jobs.results if r["job_id"].startswith("after")]
    assert statuses == ["ok"] * 5, errors
    assert await durable_redis.keys(f"{PREFIX}token-lock:*") == []
