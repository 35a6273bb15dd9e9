"""A Redis that answers but refuses writes (a demoted primary after a failover answers READONLY;
a full one with `noeviction` answers OOM) is an outage like any other: the worker falls back to
its in-process state, every job is answered, no insert is sent twice or refused unsent."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import redis.asyncio as aioredis
from sfsim.testing import SimulatorClient

from tests.conftest import WorkerProcess, make_settings, wait_until
from tests.fleet.conftest import PrivateRedis, gauge
from tests.fleet.test_fleet_tokens import run_all
from tests.job_client import JobClient
from worker.settings import Settings

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
    amqp_url: str,
    names: dict[str, str],
    settings: Settings,
    spawn_worker: Any,
    jobs: JobClient,
    simulator: SimulatorClient,
    private_redis: PrivateRedis,
) -> None:
    fleet = make_settings(
        amqp_url,
        names,
        settings.accounts_file,
        redis_url=private_redis.url,
        redis_prefix="sfworker-readonly:",
        redis_retry_seconds=0.5,
    )
    await simulator.seed("Case", [{"Subject": "anchor"}])
    worker: WorkerProcess = spawn_worker(fleet)
    await worker.wait_ready()
    assert await run_all(jobs, jobs_of("before", 6)) == ["ok"] * 6

    admin = aioredis.from_url(private_redis.url)
    try:
        # A replica of a primary that is not there: reads answered, writes refused READONLY.
        await admin.execute_command("REPLICAOF", "127.0.0.1", "1")
        batch = jobs_of("readonly", 20)
        statuses = await run_all(jobs, batch)
        text = await worker.metrics()
        assert gauge(text, "sfworker_redis_fallback") == 1.0
        await admin.execute_command("REPLICAOF", "NO", "ONE")
    finally:
        await admin.aclose()
    failures = [r for r in jobs.results if r["status"] != "ok"]
    assert statuses == ["ok"] * 20, [(r["job_id"], r["error"]) for r in failures[:3]]
    assert gauge(text, "sfworker_handler_crashes_total") == 0.0

    async def back() -> bool:
        return gauge(await worker.metrics(), "sfworker_redis_fallback") == 0.0

    await wait_until(back, 15, "sfworker_redis_fallback = 0")
    assert await run_all(jobs, jobs_of("after", 6)) == ["ok"] * 6
    subjects = Counter(r["Subject"] for r in await simulator.records("Case"))
    inserts = [b["job_id"] for b in jobs_of("readonly", 20) if b["operation"] == "insert"]
    assert [subjects[i] for i in inserts] == [1] * len(inserts)
