"""`sfworker dlq`: look at dead-lettered jobs (why they died) and optionally send them back."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import aio_pika
import orjson
from aio_pika import DeliveryMode, Message
from aio_pika.abc import AbstractIncomingMessage

from worker.accounts import ConfigError
from worker.commands.render import table
from worker.runtime.reach import connect_amqp
from worker.settings import Settings


def _death(headers: dict[str, Any]) -> tuple[str, str, int]:
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        first = deaths[0]
        count = first.get("count")
        return (
            str(first.get("reason", "")),
            str(first.get("queue", "")),
            count if isinstance(count, int) else 0,
        )
    moved = headers.get("x-sfworker-dead-letter-reason")  # moved by a worker, not the broker
    if isinstance(moved, str | bytes):
        return (moved.decode() if isinstance(moved, bytes) else moved), "", 1
    return "", "", 0


def _job_id(body: bytes) -> str:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "(not JSON)"
    return str(data.get("job_id", "")) if isinstance(data, dict) else "(not an object)"


DEAD_SINCE = "x-sfworker-dead-since"  # unix seconds: when the message became a dead letter


def _dead_since(headers: dict[str, Any], now: float) -> float:
    """When the message was dead-lettered: the copy's stamp, else RabbitMQ's `x-death` time,
    else now (a copy a worker moved itself)."""
    stamp = headers.get(DEAD_SINCE)
    if isinstance(stamp, int | float) and not isinstance(stamp, bool):
        return float(stamp)
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        when = deaths[0].get("time")
        if isinstance(when, datetime):
            return when.timestamp()
    return now


def _kept_copy(message: AbstractIncomingMessage, max_age: float, now: float) -> Message | None:
    """The same message again, for the back of the dead-letter queue: same body, properties and
    headers, stamped with when it died and expiring when its retention ends (None: it has
    already ended)."""
    headers = dict(message.headers or {})
    since = _dead_since(headers, now)
    left = since + max_age - now
    if left <= 0:
        return None
    headers[DEAD_SINCE] = int(since)
    return Message(
        body=message.body,
        headers=headers,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        message_id=message.message_id,
        correlation_id=message.correlation_id,
        reply_to=message.reply_to,
        timestamp=message.timestamp,
        type=message.type,
        app_id=message.app_id,
        expiration=max(1, int(left * 1000)) / 1000,
        delivery_mode=DeliveryMode.PERSISTENT,
    )


async def inspect_dead_letters(settings: Settings, *, limit: int, requeue: bool) -> int:
    """Print up to `limit` dead letters; with `requeue`, publish them back to the request
    exchange (the x-death history stays in their headers) and remove them from the DLQ.

    Looking never returns a message to the queue (a quorum queue counts every return against
    its delivery limit, 20 by default in RabbitMQ 4, and drops the message past it): each
    message of the queue is read once and an identical copy, confirmed, takes its place at the
    back before the original is acked, so the queue keeps its order and each message its
    retention. A crash in between leaves a duplicate, never a loss."""
    connection = await connect_amqp(",".join(settings.amqp_urls()))
    rows: list[list[Any]] = []
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        try:
            queue = await channel.get_queue(settings.dead_letter_queue, ensure=True)
            requests = await channel.get_exchange(settings.request_exchange, ensure=True)
        except aio_pika.exceptions.ChannelNotFoundEntity as exc:
            raise ConfigError(
                f"{exc.args[0] if exc.args else exc}: has a worker declared the topology yet?"
            ) from None
        declared = queue.declaration_result
        count = (declared.message_count or 0) if declared is not None else 0
        # Requeue takes only `limit`; looking goes round the whole queue to keep its order.
        for _ in range(min(count, limit) if requeue else count):
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            if len(rows) < limit:
                reason, source, times = _death(dict(message.headers or {}))
                rows.append([_job_id(message.body), reason, source, times, len(message.body)])
            if requeue:
                await requests.publish(
                    aio_pika.Message(
                        body=message.body,
                        headers=dict(message.headers or {}),
                        content_type=message.content_type,
                        message_id=message.message_id,
                        correlation_id=message.correlation_id,
                        reply_to=message.reply_to,
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    routing_key=settings.request_routing_key,
                )
            else:
                copy = _kept_copy(message, settings.dead_letter_max_age, time.time())
                if copy is not None:
                    await channel.default_exchange.publish(
                        copy, routing_key=settings.dead_letter_queue, mandatory=True
                    )
            await message.ack()
    if not rows:
        print(f"{settings.dead_letter_queue} is empty")
        return 0
    print(table(rows, ["job_id", "reason", "from queue", "times", "bytes"]))
    if requeue:
        print(f"\n{len(rows)} message(s) sent back to {settings.request_exchange}")
    return 0
