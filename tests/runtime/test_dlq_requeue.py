"""`sfworker dlq --requeue` never loses a letter (issue 26.5): the copy sent back is mandatory
and confirmed, every property is kept, a job past its own budget is not run again unless
`--force` (an insert needs `--force-inserts` too), and no header a publisher forged under the
worker's prefix makes `dlq` crash or survives a copy the worker makes."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import aio_pika
import orjson
import pytest
from pamqp import decode, encode

from tests.runtime.helpers import sfworker
from tests.support.job_client import JobClient
from tests.support.queues import queue_depth
from tests.support.settings import settings_env
from tests.support.waiting import wait_until
from worker.app import Worker
from worker.commands.dlq import inspect_dead_letters
from worker.runtime.publisher import encodable
from worker.settings import Settings

SEARCH = {"v": 1, "operation": "search", "soql": "SELECT Id FROM Case"}
INSERT = {"v": 1, "operation": "insert", "object": "Case", "fields": {"Subject": "late"}}
HOURS_AGO = 6 * 3600


async def to_dead_letters(
    amqp: aio_pika.abc.AbstractRobustConnection,
    settings: Settings,
    job: dict[str, Any],
    *,
    reply_to: str | None = None,
    timestamp: float | None = None,
    headers: dict[str, Any] | None = None,
    **properties: Any,
) -> None:
    """A job dead-lettered the way RabbitMQ does it: through the dead-letter exchange, with an
    `x-death` history."""
    channel = await amqp.channel()
    try:
        dlx = await channel.get_exchange(settings.dead_letter_exchange)
        death = {"reason": "rejected", "queue": settings.request_queue, "count": 1}
        await dlx.publish(
            aio_pika.Message(
                orjson.dumps(job),
                headers={"x-death": [death], **(headers or {})},
                message_id=job["job_id"],
                correlation_id=job["job_id"],
                reply_to=reply_to,
                timestamp=datetime.fromtimestamp(timestamp, UTC) if timestamp else None,
                **properties,
            ),
            routing_key="",
        )
    finally:
        await channel.close()


async def dead_letters(amqp: aio_pika.abc.AbstractRobustConnection, settings: Settings) -> int:
    ready, _consumers = await queue_depth(amqp, settings.dead_letter_queue)
    return ready


async def test_a_requeue_nothing_routes_leaves_the_letter_and_fails(
    worker: Worker,
    settings: Settings,
    amqp: aio_pika.abc.AbstractRobustConnection,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await to_dead_letters(amqp, settings, {**SEARCH, "job_id": "lost-1"})
    await wait_until(lambda: _has(amqp, settings, 1), 10, "the dead letter")
    nowhere = settings.model_copy(update={"request_routing_key": "bound-to-no-queue"})
    assert await inspect_dead_letters(nowhere, limit=20, requeue=True) == 1
    out = capsys.readouterr().out
    assert "0 message(s) sent back" in out
    assert "routed them to no queue" in out
    assert await dead_letters(amqp, settings) == 1  # still there, not lost
    # And the same letter, sent where a queue is bound, goes back and is answered.
    assert await inspect_dead_letters(settings, limit=20, requeue=True) == 0
    await wait_until(lambda: _has(amqp, settings, 0), 10, "the dead-letter queue emptied")


async def _has(amqp: aio_pika.abc.AbstractRobustConnection, settings: Settings, n: int) -> bool:
    return await dead_letters(amqp, settings) == n


async def test_every_property_of_a_letter_is_kept_when_it_is_sent_back(
    worker: Worker,
    settings: Settings,
    amqp: aio_pika.abc.AbstractRobustConnection,
) -> None:
    channel = await amqp.channel()
    spy = await channel.declare_queue(exclusive=True)
    await spy.bind(settings.request_exchange, routing_key=settings.request_routing_key)
    sent = time.time() - 2
    await to_dead_letters(
        amqp,
        settings,
        {**SEARCH, "job_id": "props-1"},
        reply_to="amq.gen-nobody",
        timestamp=sent,
        content_type="application/json",
        content_encoding="identity",
        type="block-job",
        app_id="scenario-runtime",
        priority=3,
        headers={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
    )
    await wait_until(lambda: _has(amqp, settings, 1), 10, "the dead letter")
    assert await inspect_dead_letters(settings, limit=20, requeue=True) == 0
    copy = await _next(spy)
    assert copy.timestamp is not None
    assert abs(copy.timestamp.timestamp() - int(sent)) <= 1
    assert (copy.content_type, copy.content_encoding) == ("application/json", "identity")
    assert (copy.type, copy.app_id, copy.priority) == ("block-job", "scenario-runtime", 3)
    assert (copy.message_id, copy.correlation_id) == ("props-1", "props-1")
    assert copy.reply_to == "amq.gen-nobody"
    headers = copy.headers or {}
    assert headers["traceparent"].startswith("00-0af7651916cd43dd")
    assert isinstance(headers.get("x-death"), list)  # the history stays
    await channel.close()


async def _next(queue: aio_pika.abc.AbstractQueue) -> aio_pika.abc.AbstractIncomingMessage:
    async with queue.iterator(timeout=10) as messages:
        async for message in messages:
            await message.ack()
            return message
    raise AssertionError("no message")


async def test_a_job_past_its_budget_is_not_run_again_unless_forced(
    worker: Worker,
    settings: Settings,
    jobs: JobClient,
    amqp: aio_pika.abc.AbstractRobustConnection,
    capsys: pytest.CaptureFixture[str],
) -> None:
    old = time.time() - HOURS_AGO
    await to_dead_letters(
        amqp, settings, {**SEARCH, "job_id": "old-search"}, reply_to=jobs.reply_queue, timestamp=old
    )
    await to_dead_letters(
        amqp,
        settings,
        {**INSERT, "job_id": "old-insert", "sent_at": old},
        reply_to=jobs.reply_queue,
    )
    await to_dead_letters(
        amqp,
        settings,
        {**SEARCH, "job_id": "fresh-search"},
        reply_to=jobs.reply_queue,
        timestamp=time.time(),
    )
    await wait_until(lambda: _has(amqp, settings, 3), 10, "the dead letters")

    assert await inspect_dead_letters(settings, limit=20, requeue=True) == 0
    assert "2 kept: past their own budget" in capsys.readouterr().out
    assert (await jobs.result("fresh-search", 20))["status"] == "no_data"
    assert await dead_letters(amqp, settings) == 2

    # --force: the search goes back with a fresh budget and is answered, not TIMEOUT; the
    # insert stays (its first delivery may have created the record).
    assert await inspect_dead_letters(settings, limit=20, requeue=True, force=True) == 0
    assert (await jobs.result("old-search", 20))["status"] == "no_data"
    assert await dead_letters(amqp, settings) == 1

    assert (
        await inspect_dead_letters(settings, limit=20, requeue=True, force=True, force_inserts=True)
        == 0
    )
    inserted = await jobs.result("old-insert", 20)
    assert inserted["status"] == "ok", inserted
    assert await dead_letters(amqp, settings) == 0


FORGED_STAMPS: list[Any] = [
    "yesterday",
    3e38,
    -5,
    -3e38,
    True,
    [1, 2],
    {"a": 1},
    bytearray(b"\xff\xfe"),
    None,
]


async def test_forged_headers_never_crash_dlq(
    worker: Worker,
    settings: Settings,
    amqp: aio_pika.abc.AbstractRobustConnection,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for n, stamp in enumerate(FORGED_STAMPS):
        await to_dead_letters(
            amqp,
            settings,
            {**SEARCH, "job_id": f"forged-{n}", "sent_at": 1e300 if n % 2 else -1},
            headers={
                "x-sfworker-dead-since": stamp,
                "x-sfworker-dead-letter-reason": stamp if n % 2 else "x" * 10_000,
            },
        )
    await wait_until(lambda: _has(amqp, settings, len(FORGED_STAMPS)), 10, "the dead letters")
    env = settings_env(settings)
    for _ in range(3):
        listing = await sfworker("dlq", env=env)
        assert listing.returncode == 0, listing.stderr
        assert "Traceback" not in listing.stderr
        assert all(f"forged-{n}" in listing.stdout for n in range(len(FORGED_STAMPS)))
    assert await dead_letters(amqp, settings) == len(FORGED_STAMPS)
    requeued = await sfworker("dlq", "--requeue", env=env)
    assert requeued.returncode == 0, requeued.stderr
    assert "Traceback" not in requeued.stderr


async def test_the_worker_drops_forged_headers_of_its_own_from_the_copies_it_makes(
    worker: Worker,
    settings: Settings,
    jobs: JobClient,
    amqp: aio_pika.abc.AbstractRobustConnection,
) -> None:
    """A message RabbitMQ cannot dead-letter (a forged x-death, no reply_to) is copied to the
    dead letters by the worker: the copy carries the worker's headers, never the publisher's."""
    await jobs.client.channel.default_exchange.publish(
        aio_pika.Message(
            orjson.dumps({**SEARCH, "job_id": "forger"}),
            headers={
                "x-death": [{"count": "many"}],
                "x-sfworker-dead-since": 3e38,
                "x-sfworker-publisher": "someone-else",
                "x-sfworker-dead-letter-reason": "made-up",
            },
        ),
        routing_key=settings.request_queue,
    )
    await wait_until(lambda: _has(amqp, settings, 1), 20, "the worker's dead-letter copy")
    channel = await amqp.channel()
    dead = await channel.get_queue(settings.dead_letter_queue)
    message = await dead.get(no_ack=False)
    headers = message.headers or {}
    await message.nack(requeue=True)
    await channel.close()
    assert headers["x-sfworker-dead-letter-reason"] == "forged_x_death"
    assert "x-sfworker-dead-since" not in headers
    assert "x-sfworker-publisher" not in headers


def test_any_header_a_copy_carries_can_be_written_again() -> None:
    """What pamqp reads but cannot write (a long string that is not UTF-8 reads as bytes; a
    double past a float32, which it writes as one) is made writable, nested ones included."""
    read = {"s": b"\xff\xfe", "d": 1e300, "n": -1e300, "deep": {"l": [b"\x80", 2.5e39]}, "ok": 1}
    with pytest.raises((TypeError, OverflowError)):
        encode.field_table(read)
    written = encode.field_table(encodable(read))
    _, back = decode.field_table(written)
    assert back["s"] == bytearray(b"\xff\xfe")
    assert back["d"] == "1e+300"
    assert back["deep"]["l"] == [bytearray(b"\x80"), "2.5e+39"]
    assert back["ok"] == 1
