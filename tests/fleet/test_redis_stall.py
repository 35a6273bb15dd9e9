"""Acceptance (issue 19, point 2): a stalled Redis (a partition: the connection stays open,
nothing comes back; not a refusal). The worker behind the stall switches to its in-process
fallback within its Redis timeout, goes back to Redis when it answers again, and inserts stay
exactly once across the fleet: what it could not write (results, insert claims) is written back
when Redis returns, so that a redelivery to the other worker is answered, not sent again."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest

from tests.fleet.helpers import Fleet
from tests.support.metrics import metric
from tests.support.ports import free_port
from tests.support.redis_server import RedisServer
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import wait_until
from tests.support.workers import WorkerProcess
from worker.app import Worker
from worker.runtime import topology
from worker.settings import Settings

JOBS = 120
PACE = 0.1
STALL_AT, STALL_FOR = 3.0, 6.0


def job(i: int) -> dict[str, Any]:
    base = {"v": 1, "job_id": f"stall-{i}", "timeout_ms": 30000}
    if i % 3 == 0:
        return {**base, "operation": "insert", "object": "Case", "fields": {"Subject": f"st-{i}"}}
    return {**base, "operation": "search", "soql": "SELECT Id FROM Case WHERE Subject = 'x'"}


@pytest.fixture
async def redis_proxy(private_redis: RedisServer) -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy("127.0.0.1", private_redis.port)
    await proxy.start()
    yield proxy
    await proxy.cut()


async def _fallback(worker: WorkerProcess) -> float:
    return metric(await worker.metrics(), "sfworker_redis_fallback")


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_a_stalled_redis_falls_back_in_time_and_inserts_stay_exactly_once(
    fleet: Fleet,
    private_redis: RedisServer,
    redis_proxy: TcpProxy,
) -> None:
    def through(redis_url: str) -> Settings:
        return fleet.settings_with(redis_url=redis_url, redis_prefix="stall:")

    stalled: WorkerProcess = fleet.spawn(through(f"redis://127.0.0.1:{redis_proxy.port}/0"))
    other: WorkerProcess = fleet.spawn(through(private_redis.url))
    await asyncio.gather(stalled.wait_ready(), other.wait_ready())
    timeout = fleet.settings.redis_timeout_seconds
    assert await _fallback(stalled) == 0

    first: dict[str, dict[str, Any]] = {}
    fleet.jobs.client.add_listener(lambda r: first.setdefault(str(r["job_id"]), r))
    marks: dict[str, float] = {}

    async def load() -> None:
        start = time.monotonic()
        for i in range(JOBS):
            await asyncio.sleep(max(0.0, start + i * PACE - time.monotonic()))
            await fleet.jobs.publish(job(i))

    async def stall() -> None:
        await asyncio.sleep(STALL_AT)
        redis_proxy.stall()
        marks["stalled"] = time.monotonic()
        while await _fallback(stalled) != 1:
            await asyncio.sleep(0.05)
        marks["fallback"] = time.monotonic()
        await asyncio.sleep(max(0.0, marks["stalled"] + STALL_FOR - time.monotonic()))
        redis_proxy.resume()
        marks["resumed"] = time.monotonic()
        while await _fallback(stalled) != 0:
            await asyncio.sleep(0.05)
        marks["back"] = time.monotonic()

    await asyncio.wait_for(asyncio.gather(load(), stall()), 90)

    async def all_answered() -> bool:
        return len(first) >= JOBS

    await wait_until(all_answered, 60, "every job answered")
    inserts = [f"stall-{i}" for i in range(0, JOBS, 3)]

    # The stalled worker wrote back what Redis missed, and leaves. Every insert delivered again
    # (a redelivery) goes to the other worker: answered with its first result, never sent
    # again; this includes the inserts the stalled worker ran alone.
    written_back = "written back to Redis" in stalled.logs()
    stalled.proc.terminate()
    assert await stalled.wait_exit(30) == 0
    answers_before = len(fleet.jobs.results)
    for i in range(0, JOBS, 3):
        await fleet.jobs.publish(job(i))

    async def again() -> bool:
        return len(fleet.jobs.results) >= answers_before + len(inserts)

    await wait_until(again, 60, "every insert answered again")
    cases = Counter(r["Subject"] for r in await fleet.simulator.records("Case"))
    by_job: dict[str, list[dict[str, Any]]] = {}
    for result in fleet.jobs.results:
        by_job.setdefault(str(result["job_id"]), []).append(result)
    fell_back_after = marks["fallback"] - marks["stalled"]
    print(
        f"\nredis stall: fallback after {fell_back_after:.1f} s, back in Redis "
        f"{marks['back'] - marks['resumed']:.1f} s after it answered; "
        f"statuses {dict(Counter(r['status'] for r in fleet.jobs.results))}"
    )
    # Within its Redis timeout of the first command that met the stall (a command goes out at
    # least every 1.5 s: the liveness beat, and every job).
    assert fell_back_after <= 2 * timeout + 1.5
    assert {r["status"] for r in fleet.jobs.results} <= {"ok", "no_data"}
    assert all(len(by_job[f"stall-{i}"]) == 1 for i in range(JOBS) if i % 3)
    assert all({r["id"] for r in by_job[j]} == {first[j]["id"]} for j in inserts)
    assert all(cases[f"st-{i}"] == 1 for i in range(0, JOBS, 3)), "an insert ran twice"
    assert written_back


@pytest.mark.timeout(60)
async def test_a_redelivered_insert_is_not_sent_while_the_fleet_cannot_be_read(
    fleet: Fleet,
    amqp: aio_pika.abc.AbstractRobustConnection,
) -> None:
    """Redis out of reach: a first delivery of an insert is sent (this worker alone knows it),
    but a redelivered one is answered OUTCOME_UNKNOWN: the claim of an earlier delivery, made
    by another worker, cannot be read, and a claim that cannot be read is no proof of none."""
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    alone = fleet.settings_with(redis_url=nowhere, redis_prefix="blind:")
    channel = await amqp.channel()
    await topology.declare(channel, alone)
    fresh = {"v": 1, "operation": "insert", "object": "Case", "timeout_ms": 10000}
    await fleet.jobs.publish({**fresh, "job_id": "again", "fields": {"Subject": "blind-again"}})
    queue = await channel.get_queue(alone.request_queue, ensure=False)
    taken = await queue.get(no_ack=False, timeout=10)  # another worker took it and died
    assert taken is not None
    await taken.nack(requeue=True)

    worker = Worker(alone)
    await worker.start()
    try:
        assert worker.fleet.link is not None
        assert not worker.fleet.link.available  # Redis out of reach from the start
        again = await fleet.jobs.result("again", wait=20)
        first = await fleet.jobs.call(
            {**fresh, "job_id": "first", "fields": {"Subject": "blind-first"}}
        )
    finally:
        await worker.stop()
    subjects = Counter(r["Subject"] for r in await fleet.simulator.records("Case"))
    assert (again["status"], again["error"]["code"]) == ("failed", "OUTCOME_UNKNOWN")
    assert subjects["blind-again"] == 0
    assert first["status"] == "ok"
    assert subjects["blind-first"] == 1
