"""Acceptance (issue 10): a three-node cluster loses the node that leads the request queue
(SIGKILL of all its processes) while two workers, connected to different nodes, process a steady
stream of jobs; the node comes back later. Every job is answered (twice only with identical
results), nothing is left in a queue, the workers reconnect by themselves."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from typing import Any

import aio_pika
import aiohttp
import pytest
from sfsim.testing import SimulatorClient

from tests.cluster.helpers import Cluster, Stream, differing_duplicates
from tests.support.job_client import JobClient
from tests.support.metrics import metric
from tests.support.waiting import wait_until
from tests.support.workers import WorkerProcess
from worker.settings import Settings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

JOBS = 240
KILL_AFTER = 60  # jobs published before the leader's node is killed
RESTART_AFTER_S = 6.0  # the node comes back this long after the kill


def job_mix(tag: str, case_id: str) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    for i in range(JOBS):
        base = {"v": 1, "job_id": f"{tag}-{i}", "timeout_ms": 60000}
        kind = i % 4
        if kind == 0:
            jobs.append(
                {
                    **base,
                    "operation": "insert",
                    "object": "Case",
                    "fields": {"Subject": f"{tag}-{i}"},
                }
            )
        elif kind == 1:
            jobs.append(
                {
                    **base,
                    "operation": "search",
                    "soql": "SELECT Id FROM Case WHERE Subject = :s",
                    "params": {"s": "x"},
                }
            )
        elif kind == 2:
            jobs.append(
                {**base, "operation": "get", "object": "Case", "id": case_id, "fields": ["Subject"]}
            )
        else:
            jobs.append(
                {
                    **base,
                    "operation": "update",
                    "object": "Case",
                    "id": case_id,
                    "fields": {"Priority": "High"},
                }
            )
    return jobs


async def _ready(worker: WorkerProcess, http: aiohttp.ClientSession) -> bool:
    with contextlib.suppress(aiohttp.ClientError):
        async with http.get(f"{worker.url}/readyz") as response:
            return response.status == 200
    return False


async def test_the_leader_node_dies_and_every_job_is_answered(
    rabbit_cluster: Cluster,
    cluster_settings: Settings,
    cluster_workers: Any,
    simulator: SimulatorClient,
) -> None:
    settings = cluster_settings
    queue = settings.request_queue
    assert await rabbit_cluster.members(queue) == [1, 2, 3]
    assert await rabbit_cluster.members(settings.dead_letter_queue) == [1, 2, 3]
    leader = await rabbit_cluster.leader(queue)
    other, client_node = [n for n in (1, 2, 3) if n != leader]
    await simulator.set_latency(300)  # about ten jobs in flight at any time
    (case_id,) = await simulator.seed("Case", [{"Subject": "seeded"}])

    # Worker A starts on the leader's node, worker B on another; the caller on the third.
    on_leader: WorkerProcess = cluster_workers(
        settings, amqp_url=rabbit_cluster.urls(first=leader), prefetch=20
    )
    on_other: WorkerProcess = cluster_workers(
        settings, amqp_url=rabbit_cluster.urls(first=other), prefetch=20
    )
    await asyncio.gather(on_leader.wait_ready(60), on_other.wait_ready(60))

    connection = await aio_pika.connect_robust(rabbit_cluster.url(client_node))
    async with connection, aiohttp.ClientSession() as http:
        client = JobClient(await connection.channel(), settings)
        await client.start()
        stream = Stream(client, pace=0.03)
        jobs = job_mix("failover", case_id)
        publishing = asyncio.create_task(stream.run(jobs))
        try:

            async def first_jobs_out() -> bool:
                return len(stream.published) >= KILL_AFTER

            await wait_until(first_jobs_out, 60, "the first jobs published")
            killed = time.monotonic()
            await rabbit_cluster.kill(leader)
            t_reconnected = await _resumed(on_leader, http, within=60)
            resumed_after = t_reconnected - killed
            answers_after = await _answers_resume(stream, killed, within=60)
            await asyncio.sleep(max(0.0, killed + RESTART_AFTER_S - time.monotonic()))
            await rabbit_cluster.start(leader)
            restarted = time.monotonic() - killed
            await asyncio.wait_for(publishing, 120)

            async def everything_answered() -> bool:
                return stream.all_answered()

            await wait_until(everything_answered, 120, "every published job answered")
        finally:
            if not publishing.done():
                publishing.cancel()
                await asyncio.gather(publishing, return_exceptions=True)

        async def queues_empty() -> bool:
            return (
                await rabbit_cluster.messages(queue) == 0
                and await rabbit_cluster.messages(settings.dead_letter_queue) == 0
            )

        await wait_until(queues_empty, 30, "request and dead-letter queues empty")
        answers = stream.answered()
        failed = [r for r in client.results if r["status"] == "failed"]
        duplicates = sum(n - 1 for n in answers.values())
        subjects = Counter(r["Subject"] for r in await simulator.records("Case"))
        inserted_twice = sorted(s for s, n in subjects.items() if n > 1)
        reconnects = metric(await on_leader.metrics(), "sfworker_amqp_reconnects_total")
        redelivered = [
            metric(await w.metrics(), "sfworker_redeliveries_total") for w in (on_leader, on_other)
        ]
        print(
            f"\ncluster failover: {len(stream.published)} jobs, leader node {leader} killed "
            f"after {KILL_AFTER}; worker on it reconnected (ready on another node) "
            f"{resumed_after:.2f} s after the kill, answers to new jobs resumed after "
            f"{answers_after:.2f} s; node restarted at {restarted:.1f} s; duplicate answers "
            f"{duplicates}, redeliveries {sum(redelivered):.0f}, publish retries "
            f"{stream.publish_retries}, outcome unknown {len(failed)}, inserts executed twice "
            f"{len(inserted_twice)}"
        )
        assert {str(j["job_id"]) for j in jobs} <= set(answers)  # nothing lost
        assert not differing_duplicates(client.results)
        # An insert taken again by the other worker while its first run was still going on is
        # OUTCOME_UNKNOWN (it is never sent twice); everything else succeeds.
        assert all(
            r["operation"] == "insert" and r["error"]["code"] == "OUTCOME_UNKNOWN" for r in failed
        ), failed[:3]
        assert on_leader.proc.poll() is None, on_leader.logs()
        assert on_other.proc.poll() is None, on_other.logs()
        assert reconnects >= 1
        assert await rabbit_cluster.members(queue) == [1, 2, 3]
        inserts = {str(j["job_id"]) for j in jobs if j["operation"] == "insert"}
        assert not inserted_twice  # Redis insert markers: never sent twice
        assert inserts <= set(subjects)  # and every one ran: none had its answer dropped


async def _resumed(worker: WorkerProcess, http: aiohttp.ClientSession, within: float) -> float:
    """When the worker that lost its node is connected and consuming again (monotonic)."""

    async def back() -> bool:
        text = await worker.metrics()
        return metric(text, "sfworker_amqp_reconnects_total") >= 1 and await _ready(worker, http)

    await wait_until(back, within, "the worker on the killed node to reconnect elsewhere")
    return time.monotonic()


async def _answers_resume(stream: Stream, killed: float, within: float) -> float:
    """Seconds from the kill to the first answer of a job published after it."""

    async def answered_new() -> bool:
        answered = stream.answered()
        return any(sent > killed and job_id in answered for job_id, sent in stream.sent_at.items())

    await wait_until(answered_new, within, "an answer to a job published after the kill")
    return time.monotonic() - killed
