"""Issue 7, acceptance 7: Redis killed mid-run while searches and inserts flow and sessions
expire. Every job is answered ok, every insert runs once, the workers report the fallback and
return to Redis by themselves. The test runs its own redis-server on a free port."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import pytest

from tests.fleet.helpers import Fleet
from tests.support.metrics import metric
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_until
from tests.support.workers import WorkerProcess
from worker.accounts import load_accounts

pytestmark = pytest.mark.slow

SOQL = "SELECT Id FROM Case WHERE Subject = 'anchor'"


def job(i: int) -> dict[str, Any]:
    base = {"v": 1, "job_id": f"out-{i}", "timeout_ms": 30000}
    if i % 3 == 0:
        return {**base, "operation": "insert", "object": "Case", "fields": {"Subject": f"out-{i}"}}
    return {**base, "operation": "search", "soql": SOQL}


async def fallback_values(workers: list[WorkerProcess]) -> list[float]:
    return [metric(await w.metrics(), "sfworker_redis_fallback") for w in workers]


async def test_redis_killed_mid_run_degrades_and_recovers(
    fleet: Fleet,
    private_redis: RedisServer,
) -> None:
    prefix = "sfworker-outage:"
    private = fleet.settings_with(
        redis_url=private_redis.url,
        redis_prefix=prefix,
        redis_retry_seconds=1,
    )
    workers: list[WorkerProcess] = [fleet.spawn(private, prefetch=50) for _ in range(2)]
    for worker in workers:
        await worker.wait_ready()
    assert await fallback_values(workers) == [0.0, 0.0]  # present from start
    await fleet.simulator.seed("Case", [{"Subject": "anchor"}])
    await fleet.simulator.set_latency(50)
    batch = [job(i) for i in range(300)]
    # The last 30 jobs go out once both workers are back on Redis: their results must be there.
    during, after = batch[:-30], batch[-30:]
    published: list[dict[str, Any]] = []

    async def stream() -> None:
        for body in during:
            await fleet.jobs.publish(body)
            published.append(body)
            await asyncio.sleep(0.03)

    streaming = asyncio.create_task(stream())
    try:
        await wait_until(lambda: _at_least(published, 60), 30, "60 jobs published")
        await fleet.simulator.expire_sessions()
        private_redis.kill()

        async def both_fell_back() -> bool:
            return await fallback_values(workers) == [1.0, 1.0]

        await wait_until(both_fell_back, 15, "sfworker_redis_fallback = 1 on both workers")
        # Once the workers run alone, expire the sessions again (not within the same job's
        # retry: a second 401 after a refresh is final for a job, by design).
        seen = len(fleet.jobs.results)
        await wait_until(lambda: _at_least(fleet.jobs.results, seen + 20), 30, "20 more answers")
        await fleet.simulator.expire_sessions()
        await wait_until(lambda: _at_least(published, 200), 30, "200 jobs published")
        await private_redis.start()  # same port, empty
        back = time.monotonic()

        async def both_back() -> bool:
            return await fallback_values(workers) == [0.0, 0.0]

        await wait_until(both_back, 15, "sfworker_redis_fallback = 0 on both workers")
        print(f"\nworkers back on Redis {time.monotonic() - back:.1f} s after it answered")
        await streaming
        for body in after:
            await fleet.jobs.publish(body)
    finally:
        streaming.cancel()
        await asyncio.gather(streaming, return_exceptions=True)

    statuses = await fleet.answers(batch)
    failures = [r for r in fleet.jobs.results if r["status"] != "ok"]
    assert statuses == ["ok"] * len(batch), [(r["job_id"], r["error"]) for r in failures[:3]]
    subjects = Counter(r["Subject"] for r in await fleet.simulator.records("Case"))
    inserts = [b["job_id"] for b in batch if b["operation"] == "insert"]
    assert all(subjects[job_id] == 1 for job_id in inserts)  # each insert exactly once
    # The workers write to Redis again: the results of the jobs sent since are there.
    scope = (
        load_accounts(private.accounts_file, allow_insecure_localhost=True).by_name["main"].scope
    )
    late = {f"{prefix}result:{scope}/{b['job_id']}".encode() for b in after}
    stored = set(await private_redis.keys(f"{prefix}result:*"))
    assert late <= stored


async def _at_least(items: list[Any], n: int) -> bool:
    return len(items) >= n
