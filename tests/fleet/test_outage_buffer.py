"""Issue 26, point 3: what a worker keeps for Redis during an outage is bounded in bytes. 2,000
jobs with results of about 210 KB while Redis is killed: every job is answered, the worker stays
well inside its pod's 512 Mi (peak RSS under 400 MiB), results are dropped (and counted) while
every job-id binding and insert marker is kept and written back when Redis returns."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.fleet.helpers import Fleet
from tests.support.metrics import metric
from tests.support.redis_server import RedisServer
from tests.support.slim_replies import SlimReplies
from tests.support.waiting import wait_until
from tests.support.workers import WorkerProcess

pytestmark = pytest.mark.slow

MIB = 1024 * 1024
JOBS = 2000
BIG = "SELECT Id, Description FROM Case WHERE Subject = 'big'"  # 7 records of 30,000 characters


def job(i: int) -> dict[str, Any]:
    base = {"v": 1, "job_id": f"buf-{i}", "timeout_ms": 60_000}
    if i % 10 == 0:
        return {**base, "operation": "insert", "object": "Case", "fields": {"Subject": f"b{i}"}}
    return {**base, "operation": "search", "soql": BIG}


def peak_rss(pid: int) -> int:
    """VmHWM: the most the process ever held in RAM."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


async def _fallback(worker: WorkerProcess, value: float) -> None:
    async def reads() -> bool:
        return metric(await worker.metrics(), "sfworker_redis_fallback") == value

    await wait_until(reads, 20, f"sfworker_redis_fallback = {value}")


async def test_2000_large_results_during_an_outage_keep_the_worker_small_and_the_markers(
    fleet: Fleet, private_redis: RedisServer, amqp: Any
) -> None:
    prefix = "sfworker-buffer:"
    settings = fleet.settings_with(
        redis_url=private_redis.url, redis_prefix=prefix, redis_retry_seconds=0.5
    )
    await fleet.simulator.seed(
        "Case", [{"Subject": "big", "Description": "x" * 30_000} for _ in range(7)]
    )
    worker = fleet.spawn(settings)
    await worker.wait_ready()
    replies = SlimReplies(await amqp.channel(), settings)
    await replies.start()

    private_redis.kill()
    await _fallback(worker, 1.0)  # the heartbeat finds it gone
    batch = [job(i) for i in range(JOBS)]
    for first in range(0, JOBS, 100):
        await asyncio.gather(*(replies.publish(body) for body in batch[first : first + 100]))
    answers = await replies.wait_for([b["job_id"] for b in batch], 240)

    assert worker.proc.poll() is None
    assert set(answers.values()) == {("ok", "")}, list(replies.messages.items())[:3]
    peak = peak_rss(worker.proc.pid)
    print(f"\npeak RSS {peak / MIB:.0f} MiB over {JOBS} jobs of ~210 KB with Redis away")
    assert peak < 400 * MIB
    text = await worker.metrics()
    dropped = metric(text, "sfworker_redis_outage_dropped_total", kind="result")
    assert dropped > 0
    assert metric(text, "sfworker_redis_outage_dropped_total", kind="binding") == 0
    assert metric(text, "sfworker_redis_outage_dropped_total", kind="insert") == 0
    assert metric(text, "sfworker_redis_outage_buffer_bytes") <= 64 * MIB

    await private_redis.start()  # same port, empty: the worker writes back what it kept
    await _fallback(worker, 0.0)
    bindings = await private_redis.keys(f"{prefix}claim:*")
    markers = await private_redis.keys(f"{prefix}insert-sent:*")
    results = await private_redis.keys(f"{prefix}result:*")
    assert len(bindings) == JOBS  # every binding survived the outage
    assert len(markers) == JOBS // 10  # every insert marker too
    assert 0 < len(results) < JOBS  # the newest results, within the bound
    assert len(results) + dropped == JOBS  # every result kept or counted
    assert metric(await worker.metrics(), "sfworker_redis_outage_buffer_bytes") == 0
