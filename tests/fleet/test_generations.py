"""Token generations stay unique when Redis comes back empty: a 401 on a token from before the
restart must not invalidate (compare-and-invalidate) the first token issued after it, which
would make the fleet request another token for the same expiry."""

from __future__ import annotations

import pytest

from tests.fleet.helpers import Fleet, searches
from tests.support.metrics import metric
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_until
from tests.support.workers import WorkerProcess

pytestmark = pytest.mark.slow


async def test_one_token_request_per_expiry_after_redis_came_back_empty(
    fleet: Fleet,
    private_redis: RedisServer,
) -> None:
    await fleet.simulator.seed("Account", [{"Name": "Acme"}])
    private = fleet.settings_with(
        redis_url=private_redis.url,
        redis_prefix="sfworker-gen:",
        redis_retry_seconds=0.5,
    )
    workers: list[WorkerProcess] = [fleet.spawn(private, prefetch=50) for _ in range(2)]
    for worker in workers:
        await worker.wait_ready()
    assert await fleet.run_all(searches("before", 40)) == ["ok"] * 40

    private_redis.kill()
    assert await fleet.run_all(searches("down", 40)) == ["ok"] * 40

    async def fallback(value: float) -> bool:
        values = [metric(await w.metrics(), "sfworker_redis_fallback") for w in workers]
        return values == [value] * len(workers)

    await wait_until(lambda: fallback(1.0), 15, "both workers in fallback")
    await private_redis.start()  # same port, empty
    await wait_until(lambda: fallback(0.0), 15, "both workers back on Redis")

    await fleet.simulator.set_latency(200)
    await fleet.simulator.expire_sessions()
    await fleet.simulator.reset_counters()
    batch = searches("after", 100)
    for body in batch:
        await fleet.jobs.publish(body)
    assert await fleet.answers(batch) == ["ok"] * 100
    assert (await fleet.simulator.counters())["token_requests_total"] == 1
