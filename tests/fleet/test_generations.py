"""Token generations stay unique when Redis comes back empty: a 401 on a token from before the
restart must not invalidate (compare-and-invalidate) the first token issued after it, which
would make the fleet request another token for the same expiry."""

from __future__ import annotations

from typing import Any

import pytest
from sfsim.testing import SimulatorClient

from tests.conftest import WorkerProcess, make_settings, wait_until
from tests.fleet.conftest import PrivateRedis, gauge
from tests.fleet.test_fleet_tokens import answers, run_all, searches
from tests.job_client import JobClient
from worker.settings import Settings

pytestmark = pytest.mark.slow


async def test_one_token_request_per_expiry_after_redis_came_back_empty(
    amqp_url: str,
    names: dict[str, str],
    settings: Settings,
    spawn_worker: Any,
    jobs: JobClient,
    simulator: SimulatorClient,
    private_redis: PrivateRedis,
) -> None:
    await simulator.seed("Account", [{"Name": "Acme"}])
    fleet = make_settings(
        amqp_url,
        names,
        settings.accounts_file,
        redis_url=private_redis.url,
        redis_prefix="sfworker-gen:",
        redis_retry_seconds=0.5,
    )
    workers: list[WorkerProcess] = [spawn_worker(fleet, prefetch=50) for _ in range(2)]
    for worker in workers:
        await worker.wait_ready()
    assert await run_all(jobs, searches("before", 40)) == ["ok"] * 40

    private_redis.kill()
    assert await run_all(jobs, searches("down", 40)) == ["ok"] * 40

    async def fallback(value: float) -> bool:
        values = [gauge(await w.metrics(), "sfworker_redis_fallback") for w in workers]
        return values == [value] * len(workers)

    await wait_until(lambda: fallback(1.0), 15, "both workers in fallback")
    await private_redis.start()  # same port, empty
    await wait_until(lambda: fallback(0.0), 15, "both workers back on Redis")

    await simulator.set_latency(200)
    await simulator.expire_sessions()
    await simulator.reset_counters()
    batch = searches("after", 100)
    for body in batch:
        await jobs.publish(body)
    assert await answers(jobs, batch) == ["ok"] * 100
    assert (await simulator.counters())["token_requests_total"] == 1
