"""Poison messages: a delivery that keeps crashing the handler is requeued until the queue's
delivery limit dead-letters it; `sfworker dlq` shows why, and `--requeue` sends it back."""

from __future__ import annotations

from typing import Any

import aio_pika
import pytest

from tests.runtime.helpers import sample, sfworker
from tests.support.job_client import JobClient
from tests.support.settings import settings_env
from worker.app import Worker
from worker.jobs import Admission, Execution, Incoming
from worker.settings import Settings

POISON = {"v": 1, "job_id": "poison-1", "operation": "search", "soql": "SELECT Id FROM Case"}


class CrashOnPoison:
    """The worker's execution step, with a bug that this one job triggers."""

    def __init__(self, execution: Execution) -> None:
        self.execution = execution

    async def run(self, admission: Admission, incoming: Incoming, hold: Any = None) -> Any:
        if admission.job.job_id == POISON["job_id"]:
            raise RuntimeError("bug triggered by this message")
        return await self.execution.run(admission, incoming, hold)


async def test_a_poison_message_is_dead_lettered_by_the_delivery_limit(
    worker: Worker,
    jobs: JobClient,
    settings: Settings,
    amqp: aio_pika.abc.AbstractRobustConnection,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert worker.pipeline is not None
    original = worker.pipeline.execution
    worker.pipeline.execution = CrashOnPoison(original)  # type: ignore[assignment]
    await jobs.publish(POISON)
    channel = await amqp.channel()
    dead = await channel.get_queue(settings.dead_letter_queue)
    async with dead.iterator(timeout=20) as it:
        async for message in it:
            deaths = (message.headers or {}).get("x-death")
            assert isinstance(deaths, list)
            assert deaths[0]["reason"] == "delivery_limit"
            await message.nack(requeue=True)  # leave it for the CLI below
            break
    assert sample(worker, "sfworker_handler_crashes_total") == settings.delivery_limit + 1
    # The worker is still up and serving.
    ok = await jobs.call({**POISON, "job_id": "healthy-1"})
    assert ok["status"] == "no_data"

    worker.pipeline.execution = original
    env = settings_env(settings)
    listing = await sfworker("dlq", env=env)
    assert listing.returncode == 0, listing.stderr
    assert "poison-1" in listing.stdout
    assert "delivery_limit" in listing.stdout

    requeued = await sfworker("dlq", "--requeue", env=env)
    assert requeued.returncode == 0, requeued.stderr
    answer = await jobs.result("poison-1", 20)
    assert answer["status"] == "no_data"
    seen = [r for r in caplog.records if r.getMessage() == "message was dead-lettered before"]
    assert seen
    assert seen[0].death_reason == "delivery_limit"  # type: ignore[attr-defined]
