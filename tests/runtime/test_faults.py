"""Acceptance 4.4-4.6 and the watchdog: kill -9, SIGTERM, broker restart, deleted queue.
Workers run as real processes (`python -m worker run`)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
from collections import Counter
from typing import Any

import aio_pika
import pytest
from sfsim.testing import SimulatorClient

from tests.support.job_client import JobClient
from tests.support.metrics import metric
from tests.support.queues import queue_depth
from tests.support.settings import LOCAL_AMQP
from tests.support.waiting import wait_until
from tests.support.workers import WorkerProcess
from worker.settings import Settings

pytestmark = pytest.mark.slow

SEARCH = {"v": 1, "operation": "search", "soql": "SELECT Id FROM Case"}


def searches_and_inserts(n: int, tag: str) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    for i in range(n):
        base = {"v": 1, "job_id": f"{tag}-{i}", "timeout_ms": 60000}
        if i % 3 == 0:
            jobs.append(
                {
                    **base,
                    "operation": "insert",
                    "object": "Case",
                    "fields": {"Subject": f"{tag}-{i}"},
                }
            )
        else:
            jobs.append({**base, "operation": "search", "soql": "SELECT Id FROM Case LIMIT 1"})
    return jobs


async def test_kill_9_loses_nothing(
    settings: Settings,
    spawn_worker: Any,
    jobs: JobClient,
    simulator: SimulatorClient,
    amqp: aio_pika.abc.AbstractRobustConnection,
) -> None:
    # A second per call: the batch stays in flight long enough for the kill to catch it.
    await simulator.set_latency(1000)
    first: WorkerProcess = spawn_worker(settings, prefetch=400)
    await first.wait_ready()
    batch = searches_and_inserts(300, "kill")
    for body in batch:
        await jobs.publish(body)

    async def busy() -> bool:
        # Many jobs in the worker's hands and calls on their way to Salesforce. (The jobs
        # share requests: identical reads one call, inserts 25 a Composite request; so the
        # worker's own count of jobs in flight says how much the kill catches.)
        in_flight = metric(await first.metrics(), "sfworker_jobs_in_flight")
        return in_flight >= 100 and (await simulator.counters())["in_flight"] >= 1

    await wait_until(busy, 20, "jobs in flight")
    first.proc.kill()
    assert await first.wait_exit(10) == -signal.SIGKILL
    answered_before = len(jobs.results)

    second: WorkerProcess = spawn_worker(settings, prefetch=400)
    await second.wait_ready()

    async def all_answered() -> bool:
        return {r["job_id"] for r in jobs.results} >= {b["job_id"] for b in batch}

    await wait_until(all_answered, 60, "every job answered")
    answers = Counter(r["job_id"] for r in jobs.results)
    duplicates = sum(n - 1 for n in answers.values())
    subjects = Counter(r["Subject"] for r in await simulator.records("Case"))
    reexecuted = sum(n - 1 for s, n in subjects.items() if s.startswith("kill-"))
    print(
        f"\nkill -9: 300 jobs, answered before the kill {answered_before}, "
        f"duplicate answers {duplicates}, inserts executed twice {reexecuted}"
    )
    assert set(answers) == {b["job_id"] for b in batch}  # none lost
    assert all(r["status"] in ("ok", "no_data") for r in jobs.results)
    assert await queue_depth(amqp, settings.request_queue) == (0, 1)


async def test_sigterm_answers_everything_in_flight_and_exits_0(
    settings: Settings,
    spawn_worker: Any,
    jobs: JobClient,
    simulator: SimulatorClient,
    amqp: aio_pika.abc.AbstractRobustConnection,
) -> None:
    # Salesforce answers no REST call until the SIGTERM is sent: all 100 jobs are in flight then.
    await simulator.hold("rest", count=10_000, path_contains="/services/data/")
    worker: WorkerProcess = spawn_worker(settings, prefetch=200)
    await worker.wait_ready()
    batch = [{**SEARCH, "job_id": f"term-{i}", "timeout_ms": 30000} for i in range(100)]
    for body in batch:
        await jobs.publish(body)

    async def all_in_flight() -> bool:
        return metric(await worker.metrics(), "sfworker_jobs_in_flight") == 100

    await wait_until(all_in_flight, 30, "100 jobs in flight")
    worker.proc.send_signal(signal.SIGTERM)
    await simulator.release("rest")
    assert await worker.wait_exit(30) == 0, worker.logs()
    answered = {r["job_id"] for r in jobs.results}
    assert answered == {b["job_id"] for b in batch}
    assert await queue_depth(amqp, settings.request_queue) == (0, 0)


def _local_broker(amqp_url: str) -> bool:
    return amqp_url == LOCAL_AMQP or "127.0.0.1" in amqp_url or "localhost" in amqp_url


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


async def test_broker_restart_every_job_is_answered(
    settings: Settings,
    spawn_worker: Any,
    simulator: SimulatorClient,
    amqp_url: str,
    amqp: aio_pika.abc.AbstractRobustConnection,
) -> None:
    if not shutil.which("rabbitmqctl") or not _local_broker(amqp_url):
        if os.environ.get("CI"):
            pytest.fail("the broker restart test needs rabbitmqctl and the local broker")
        pytest.skip("needs rabbitmqctl and a local broker")
    await simulator.set_latency(50)
    worker: WorkerProcess = spawn_worker(settings, prefetch=50)
    await worker.wait_ready()
    channel = await amqp.channel()
    client = JobClient(channel, settings)
    await client.start(durable_queue=f"{settings.request_queue}.replies")
    batch = [{**SEARCH, "job_id": f"restart-{i}", "timeout_ms": 60000} for i in range(150)]
    published: list[str] = []

    async def publish_all() -> None:
        for body in batch:
            while True:
                try:
                    await client.publish(body, reply=True)
                    published.append(str(body["job_id"]))
                    break
                except Exception:  # broker down: the runtime retries too
                    await asyncio.sleep(0.2)
            await asyncio.sleep(0.02)

    publisher = asyncio.create_task(publish_all())
    try:
        await asyncio.sleep(0.5)
        await asyncio.to_thread(_rabbitmqctl, "stop_app")
        await asyncio.sleep(1)
        await asyncio.to_thread(_rabbitmqctl, "start_app")
        await asyncio.wait_for(publisher, 60)

        async def all_answered() -> bool:
            return {r["job_id"] for r in client.results} >= set(published)

        await wait_until(all_answered, 60, "every published job answered")
    finally:
        if not publisher.done():
            publisher.cancel()
        await asyncio.to_thread(_rabbitmqctl, "start_app")
    assert len(published) == len(batch)
    assert worker.proc.poll() is None, worker.logs()
    assert metric(await worker.metrics(), "sfworker_amqp_reconnects_total") >= 1
    await channel.queue_delete(f"{settings.request_queue}.replies")


async def test_a_deleted_queue_is_noticed_and_consumption_resumes(
    settings: Settings,
    spawn_worker: Any,
    jobs: JobClient,
    amqp: aio_pika.abc.AbstractRobustConnection,
) -> None:
    worker: WorkerProcess = spawn_worker(settings)
    await worker.wait_ready()
    assert (await jobs.call({**SEARCH, "job_id": "before"}))["status"] == "no_data"
    channel = await amqp.channel()
    await channel.queue_delete(settings.request_queue)

    async def consumer_back() -> bool:
        try:
            _count, consumers = await queue_depth(amqp, settings.request_queue)
        except aio_pika.exceptions.ChannelNotFoundEntity:
            return False
        return consumers == 1

    await wait_until(consumer_back, 30, "the consumer back on a re-declared queue")
    assert (await jobs.call({**SEARCH, "job_id": "after"}, wait=15))["status"] == "no_data"
    assert worker.proc.poll() is None
    assert metric(await worker.metrics(), "sfworker_consumer_restarts_total") == 1
