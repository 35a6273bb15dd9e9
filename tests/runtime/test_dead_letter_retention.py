"""Issue 16.4: the dead-letter queue is not a data swamp. It keeps dead letters a bounded time
and count, `sfworker dlq` can look at it any number of times without spending the messages'
delivery count, and a dead-letter queue declared by an older version still lets a worker
start."""

from __future__ import annotations

import logging
from typing import Any

import aio_pika
import orjson
import pytest

from tests.support.job_client import JobClient
from tests.support.queues import queue_depth
from tests.support.waiting import wait_until
from worker.app import Worker
from worker.commands.dlq import inspect_dead_letters
from worker.settings import Settings

DELIVERY_LIMIT_OF_RABBITMQ_4 = 20


async def depth(amqp: aio_pika.abc.AbstractRobustConnection, queue: str) -> int:
    ready, _consumers = await queue_depth(amqp, queue)
    return ready


async def dead_letter(
    amqp: aio_pika.abc.AbstractRobustConnection, settings: Settings, job_ids: list[str]
) -> None:
    """Put jobs in the dead-letter queue the way RabbitMQ does: through the dead-letter
    exchange, with an `x-death` history."""
    channel = await amqp.channel()
    try:
        dlx = await channel.get_exchange(settings.dead_letter_exchange)
        for job_id in job_ids:
            body = orjson.dumps({"v": 1, "job_id": job_id, "operation": "get"})
            death = {"reason": "rejected", "queue": settings.request_queue, "count": 1}
            await dlx.publish(
                aio_pika.Message(body, headers={"x-death": [death]}, message_id=job_id),
                routing_key="",
            )
    finally:
        await channel.close()


async def declare_as_older_version(
    amqp: aio_pika.abc.AbstractRobustConnection, settings: Settings, **arguments: Any
) -> None:
    """The topology as a version before issue 16 declared it (plus `arguments`)."""
    channel = await amqp.channel()
    try:
        dlx = await channel.declare_exchange(
            settings.dead_letter_exchange, aio_pika.ExchangeType.FANOUT, durable=True
        )
        dead = await channel.declare_queue(
            settings.dead_letter_queue,
            durable=True,
            arguments={"x-queue-type": "quorum", **arguments},
        )
        await dead.bind(dlx, routing_key="")
        await channel.declare_exchange(
            settings.request_exchange, aio_pika.ExchangeType.DIRECT, durable=True
        )
    finally:
        await channel.close()


async def test_25_inspections_in_a_row_leave_every_message_there(
    settings: Settings,
    amqp: aio_pika.abc.AbstractRobustConnection,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A quorum queue with RabbitMQ 4's default delivery limit: a get-and-requeue look spends
    # one delivery of each message, and the 21st drops it.
    await declare_as_older_version(
        amqp, settings, **{"x-delivery-limit": DELIVERY_LIMIT_OF_RABBITMQ_4}
    )
    job_ids = [f"dead-{i}" for i in range(5)]
    await dead_letter(amqp, settings, job_ids)
    await wait_until(lambda: _has(amqp, settings.dead_letter_queue, 5), 10, "five dead letters")
    for _ in range(25):
        assert await inspect_dead_letters(settings, limit=20, requeue=False) == 0
        listing = capsys.readouterr().out
        assert [line.split("|")[0].strip() for line in listing.splitlines()[2:]] == job_ids
    assert await depth(amqp, settings.dead_letter_queue) == 5
    channel = await amqp.channel()
    queue = await channel.get_queue(settings.dead_letter_queue)
    kept = []
    for _ in range(5):
        message = await queue.get(no_ack=False)
        kept.append(message)
        assert message.headers["x-death"][0]["reason"] == "rejected"
        # The copy still ends when the original's retention would.
        assert 0 < float(message.expiration or 0) <= settings.dead_letter_max_age
    assert [orjson.loads(m.body)["job_id"] for m in kept] == job_ids
    await channel.close()


async def _has(amqp: aio_pika.abc.AbstractRobustConnection, queue: str, count: int) -> bool:
    return await depth(amqp, queue) == count


async def test_dead_letters_are_kept_at_most_max_length_oldest_out_first(
    settings: Settings, amqp: aio_pika.abc.AbstractRobustConnection
) -> None:
    bounded = settings.model_copy(update={"dead_letter_max_length": 3})
    worker = Worker(bounded)
    await worker.start()
    try:
        await dead_letter(amqp, bounded, [f"dead-{i}" for i in range(7)])
        await wait_until(lambda: _has(amqp, bounded.dead_letter_queue, 3), 10, "three left")
        channel = await amqp.channel()
        queue = await channel.get_queue(bounded.dead_letter_queue)
        left = [orjson.loads((await queue.get()).body)["job_id"] for _ in range(3)]
        await channel.close()
        assert left == ["dead-4", "dead-5", "dead-6"]
    finally:
        await worker.stop()


async def test_dead_letters_expire_after_max_age(
    settings: Settings, amqp: aio_pika.abc.AbstractRobustConnection
) -> None:
    brief = settings.model_copy(update={"dead_letter_max_age": 1.0})
    worker = Worker(brief)
    await worker.start()
    try:
        await dead_letter(amqp, brief, ["dead-old"])
        await wait_until(lambda: _has(amqp, brief.dead_letter_queue, 0), 20, "expired")
    finally:
        await worker.stop()


async def test_a_dead_letter_queue_of_an_older_version_still_lets_the_worker_start(
    settings: Settings,
    amqp: aio_pika.abc.AbstractRobustConnection,
    jobs: JobClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await declare_as_older_version(amqp, settings)
    caplog.set_level(logging.WARNING, logger="worker.runtime.topology")
    worker = Worker(settings)
    await worker.start()
    try:
        answer = await jobs.call(
            {
                "v": 1,
                "job_id": "after-upgrade",
                "operation": "search",
                "soql": "SELECT Id FROM Case",
            }
        )
        assert answer["status"] == "no_data"
        assert any("its retention is not set" in r.getMessage() for r in caplog.records)
        await dead_letter(amqp, settings, ["still-dead-lettered"])
        await wait_until(lambda: _has(amqp, settings.dead_letter_queue, 1), 10, "dead letter")
    finally:
        await worker.stop()
