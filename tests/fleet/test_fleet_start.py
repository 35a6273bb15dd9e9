"""A fleet started all at once on a fresh broker (a new deployment, a namespace recreated): every
worker becomes ready and consumes. RabbitMQ 3.x may close a worker's connection with 541
INTERNAL_ERROR when it consumes a quorum queue another worker declared a moment before (the
queue's Raft member is not up yet); the worker must ride that out, not exit."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aio_pika
import pytest

from tests.support.job_client import JobClient
from tests.support.settings import make_settings, topology_names
from tests.support.workers import spawning
from worker.runtime import topology

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

WORKERS = 4
ROUNDS = 4


def _search(round_: int, n: int) -> dict[str, object]:
    return {
        "v": 1,
        "job_id": f"start-{round_}-{n}",
        "operation": "search",
        "soql": "SELECT Id FROM Case WHERE Subject = 'nothing'",
    }


async def test_workers_started_together_on_fresh_queues_all_become_ready_and_answer(
    amqp_url: str, accounts_file: Path, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    for round_ in range(ROUNDS):
        settings = make_settings(
            amqp_url,
            topology_names(),
            accounts_file,
            redis_url=redis_url,
            redis_prefix=f"{redis_prefix}{round_}:",
        )
        log_dir = tmp_path / f"round-{round_}"
        log_dir.mkdir()
        try:
            with spawning(log_dir) as spawn:
                workers = [spawn(settings) for _ in range(WORKERS)]
                # wait_ready fails with the worker's log if it exits (e.g. INTERNAL_ERROR).
                await asyncio.gather(*(worker.wait_ready(within=60) for worker in workers))
                connection = await aio_pika.connect(amqp_url, timeout=10)
                async with connection:
                    jobs = JobClient(await connection.channel(), settings)
                    await jobs.start()
                    results = await asyncio.gather(
                        *(jobs.call(_search(round_, n), wait=30) for n in range(20))
                    )
                    assert [r["status"] for r in results] == ["no_data"] * 20
        finally:
            connection = await aio_pika.connect(amqp_url, timeout=10)
            async with connection:
                await topology.delete(await connection.channel(), settings)
