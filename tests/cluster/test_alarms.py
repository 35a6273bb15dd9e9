"""Acceptance (issue 19, point 3): broker alarms. When RabbitMQ raises a memory alarm it blocks
the connections that publish: results cannot go out. The worker then starts no new job (those it
holds wait unstarted), reports not ready, and takes them up when the broker unblocks; every job
is answered once, none is left in a queue.

On the test's private cluster (never the shared broker on 5672): the alarm is raised with
`rabbitmqctl set_vm_memory_high_watermark 0.0001` on one node (alarms hold for the whole cluster)
and lowered again."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import aio_pika
import aiohttp
import pytest
from sfsim.testing import SimulatorClient

from tests.cluster.helpers import Cluster
from tests.support.job_client import JobClient
from tests.support.metrics import metric
from tests.support.waiting import wait_until
from tests.support.workers import WorkerProcess
from worker.settings import Settings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

JOBS = 40
PREFETCH = 4


async def _checks(worker: WorkerProcess, http: aiohttp.ClientSession) -> dict[str, bool]:
    async with http.get(f"{worker.url}/readyz") as response:
        body: dict[str, Any] = await response.json()
        checks: dict[str, bool] = body["checks"]
        return checks


async def _started(worker: WorkerProcess) -> float:
    """Jobs the worker has run to a result so far (answered or not)."""
    text = await worker.metrics()
    return sum(
        metric(text, "sfworker_job_duration_seconds_count", operation="search", status=status)
        for status in ("ok", "no_data", "failed")
    )


async def test_a_memory_alarm_pauses_the_worker_and_loses_nothing(
    rabbit_cluster: Cluster,
    cluster_settings: Settings,
    cluster_workers: Any,
    simulator: SimulatorClient,
) -> None:
    # Every query waits at the simulator until released: the worker's first deliveries are in
    # flight, for certain, when the alarm goes up.
    await simulator.hold("alarm", count=10_000, path_contains="/query")
    worker: WorkerProcess = cluster_workers(
        cluster_settings,
        amqp_url=rabbit_cluster.urls(first=1),
        prefetch=PREFETCH,
        coalesce_wait_ms=0,
    )
    await worker.wait_ready(60)
    connection = await aio_pika.connect_robust(rabbit_cluster.url(2), reconnect_interval=0.5)
    alarm = False
    try:
        jobs = JobClient(await connection.channel(), cluster_settings)
        await jobs.start()
        for i in range(JOBS):
            await jobs.publish(
                {
                    "v": 1,
                    "job_id": f"alarm-{i}",
                    "operation": "search",
                    "timeout_ms": 60_000,
                    "soql": "SELECT Id FROM Case",
                }
            )
        try:
            await simulator.wait_held("alarm", count=PREFETCH, within=30)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; worker: {worker.logs()}") from None
        await rabbit_cluster.arun("ctl", "1", "set_vm_memory_high_watermark", "0.0001")
        alarm = True
        await simulator.release("alarm")  # the jobs in flight finish: their results are blocked
        async with aiohttp.ClientSession() as http:

            async def paused() -> bool:
                return not (await _checks(worker, http))["unblocked"]

            await wait_until(paused, 60, "the worker not ready: the broker blocks it")

            async def settled() -> bool:  # what was running when the block came has finished
                return metric(await worker.metrics(), "sfworker_jobs_in_flight") == 0

            await wait_until(settled, 30, "the jobs in flight at the block finished")
            started = await _started(worker)
            # Longer than the publish timeout: a worker that gave up on its blocked results and
            # requeued the jobs would answer them twice once the broker reads again.
            await asyncio.sleep(cluster_settings.publish_timeout_seconds + 2)
            assert await _started(worker) == started  # nothing new was started
            assert metric(await worker.metrics(), "sfworker_amqp_blocked") == 1
            assert jobs.results == []  # nothing could go out
            assert started < JOBS

            await rabbit_cluster.arun("ctl", "1", "set_vm_memory_high_watermark", "0.4")
            alarm = False

            async def all_answered() -> bool:
                return len({r["job_id"] for r in jobs.results}) >= JOBS

            await wait_until(all_answered, 120, "every job answered after the alarm")

            async def ready() -> bool:
                return all((await _checks(worker, http)).values())

            await wait_until(ready, 30, "the worker ready again")
            # A job requeued for a second answer would be in the queue ahead of this one.
            last = await jobs.call(
                {"v": 1, "job_id": "after", "operation": "search", "soql": "SELECT Id FROM Case"},
                wait=60,
            )
            assert last["status"] == "no_data"
        counts = Counter(r["job_id"] for r in jobs.results)
        print(f"\nalarm: {started:.0f} jobs ran before the block, answered {len(counts)}")
        assert not [j for j, n in counts.items() if n > 1], "jobs answered twice"
        assert {r["status"] for r in jobs.results} == {"no_data"}
        assert len(counts) == JOBS + 1

        async def queue_empty() -> bool:  # every job acked (the count lags a little)
            return await rabbit_cluster.messages(cluster_settings.request_queue) == 0

        await wait_until(queue_empty, 30, "the request queue empty")
    finally:
        if alarm:
            await rabbit_cluster.arun("ctl", "1", "set_vm_memory_high_watermark", "0.4")
        await connection.close()
