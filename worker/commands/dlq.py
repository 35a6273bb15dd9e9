"""`sfworker dlq`: look at dead-lettered jobs (why they died) and optionally send them back."""

from __future__ import annotations

from typing import Any

import aio_pika
import orjson

from worker.commands.render import table
from worker.config import ConfigError, Settings
from worker.runtime.reach import connect_amqp


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


async def inspect_dead_letters(settings: Settings, *, limit: int, requeue: bool) -> int:
    """Print up to `limit` dead letters; with `requeue`, publish them back to the request
    exchange (the x-death history stays in their headers) and remove them from the DLQ."""
    connection = await connect_amqp(settings.amqp_url.get_secret_value())
    rows: list[list[Any]] = []
    async with connection:
        channel = await connection.channel()
        try:
            queue = await channel.get_queue(settings.dead_letter_queue, ensure=True)
            requests = await channel.get_exchange(settings.request_exchange, ensure=True)
        except aio_pika.exceptions.ChannelNotFoundEntity as exc:
            raise ConfigError(
                f"{exc.args[0] if exc.args else exc}: has a worker declared the topology yet?"
            ) from None
        held = []
        for _ in range(limit):
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            reason, source, count = _death(dict(message.headers or {}))
            rows.append([_job_id(message.body), reason, source, count, len(message.body)])
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
                await message.ack()
            else:
                held.append(message)
        for message in held:
            await message.nack(requeue=True)
    if not rows:
        print(f"{settings.dead_letter_queue} is empty")
        return 0
    print(table(rows, ["job_id", "reason", "from queue", "times", "bytes"]))
    if requeue:
        print(f"\n{len(rows)} message(s) sent back to {settings.request_exchange}")
    return 0
