"""A Redis that answers but refuses writes (a demoted primary after a failover answers READONLY;
a full one with `noeviction` answers OOM) is an outage like any other: the worker falls back to
its in-process state, every job is answered, no insert is sent twice or refused unsent."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.fleet.helpers import Fleet
from tests.support.metrics import metric
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_until
from tests.support.workers import WorkerProcess

pytestmark = pytest.mark.slow


def jobs_of(tag: str, n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(n):
        base = {"v": 1, "job_id": f"{tag}-{i}", "timeout_ms": 20000}
        if i % 2:
            out.append(
                {
                    **base,
                    "operation": "insert",
                    "object": "Case",
                    "fields": {"Subject": base["job_id"]},
                }
            )
        else:
            out.append({**base, "operation": "search", "soql": "SELECT Id FROM Case LIMIT 1"})
    return out


async def test_a_redis_refusing_writes_is_an_outage(
    fleet: Fleet,
    private_redis: RedisServer,
) -> None:
    private = fleet.settings_with(
        redis_url=private_redis.url,
        redis_prefix="sfworker-readonly:",
        redis_retry_seconds=0.5,
    )
    await fleet.simulator.seed("Case", [{"Subject": "anchor"}])
    worker: WorkerProcess = fleet.spawn(private)
    await worker.wait_ready()
    assert await fleet.run_all(jobs_of("before", 6)) == ["ok"] * 6

    admin = aioredis.from_url(private_redis.url)
    try:
        # A replica of a primary that is not there: reads answered, writes refused READONLY.
        await admin.execute_command("REPLICAOF", "127.0.0.1", "1")
        batch = jobs_of("readonly", 20)
        statuses = await fleet.run_all(batch)
        text = await worker.metrics()
        assert metric(text, "sfworker_redis_fallback") == 1.0
        await admin.execute_command("REPLICAOF", "NO", "ONE")
    finally:
        await admin.aclose()
    failures = [r for r in fleet.jobs.results if r["status"] != "ok"]
    assert statuses == ["ok"] * 20, [(r["job_id"], r["error"]) for r in failures[:3]]
    assert metric(text, "sfworker_handler_crashes_total") == 0.0

    async def back() -> bool:
        return metric(await worker.metrics(), "sfworker_redis_fallback") == 0.0

    await wait_until(back, 15, "sfworker_redis_fallback = 0")
    assert await fleet.run_all(jobs_of("after", 6)) == ["ok"] * 6
    subjects = Counter(r["Subject"] for r in await fleet.simulator.records("Case"))
    inserts = [b["job_id"] for b in jobs_of("readonly", 20) if b["operation"] == "insert"]
    assert [subjects[i] for i in inserts] == [1] * len(inserts)
