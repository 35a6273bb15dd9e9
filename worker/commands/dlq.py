"""`sfworker dlq`: look at dead-lettered jobs (why they died) and optionally send them back.

Nothing a dead letter carries can crash it (headers are whatever a publisher wrote), and
`--requeue` never loses a letter: the copy sent back is mandatory and confirmed, and the letter
leaves the dead-letter queue only then. A job whose own budget (`timeout_ms` from `sent_at`,
else from its AMQP timestamp) has passed is not run again unless `--force`, which gives it a
fresh budget; an insert past its budget needs `--force-inserts` as well (its first delivery may
have created the record)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aio_pika
import orjson
from aio_pika import DeliveryMode, Message
from aio_pika.abc import AbstractIncomingMessage
from aio_pika.exceptions import DeliveryError, PublishError

from worker.accounts import ConfigError
from worker.commands.render import table
from worker.runtime.publisher import encodable
from worker.runtime.reach import connect_amqp
from worker.settings import Settings

DEAD_SINCE = "x-sfworker-dead-since"  # unix seconds: when the message became a dead letter
DEFAULT_TIMEOUT_MS = 8000  # the contract's default budget


def _text(value: object, limit: int = 200) -> str:
    """A header value as a short line of text, whatever its type."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value)[:limit]


def _death(headers: dict[str, Any]) -> tuple[str, str, int]:
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        first = deaths[0]
        count = first.get("count")
        return (
            _text(first.get("reason", "")),
            _text(first.get("queue", "")),
            count if isinstance(count, int) and not isinstance(count, bool) else 0,
        )
    moved = headers.get("x-sfworker-dead-letter-reason")  # moved by a worker, not the broker
    if isinstance(moved, str | bytes):
        return _text(moved), "", 1
    return "", "", 0


def _json(body: bytes) -> object:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return _NOT_JSON


_NOT_JSON = object()


def _job(body: bytes) -> dict[str, Any] | None:
    data = _json(body)
    return data if isinstance(data, dict) else None


def _job_id(body: bytes) -> str:
    data = _json(body)
    if data is _NOT_JSON:
        return "(not JSON)"
    if not isinstance(data, dict):
        return "(not an object)"
    return _text(data.get("job_id", ""), 128)


def _seconds(value: object) -> float | None:
    """A finite, positive unix time, or None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    seconds = float(value)
    return seconds if math.isfinite(seconds) and 0 < seconds < 1e11 else None


def _dead_since(headers: dict[str, Any], now: float) -> float:
    """When the message was dead-lettered: the copy's stamp, else RabbitMQ's `x-death` time,
    else now (a copy a worker moved itself). Clamped to the past."""
    stamp = _seconds(headers.get(DEAD_SINCE))
    if stamp is not None:
        return min(stamp, now)
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        when = deaths[0].get("time")
        if isinstance(when, datetime):
            try:
                return min(when.timestamp(), now)
            except (OverflowError, OSError, ValueError):
                return now
    return now


def _timestamp(message: AbstractIncomingMessage) -> float | None:
    try:
        stamp = message.timestamp
        return stamp.timestamp() if stamp is not None else None
    except (OverflowError, OSError, ValueError):
        return None


@dataclass(frozen=True)
class Budget:
    """A dead letter's job as far as `--requeue` is concerned."""

    insert: bool
    past: bool  # its own budget has passed: running it now answers nobody in time


def budget_of(message: AbstractIncomingMessage, now: float) -> Budget:
    """Whether the job's budget, counted as the worker counts it, has passed. A job whose start
    is unknown (no sent_at, no timestamp) or that is not a job at all is not past (the worker
    answers it, or refuses it, as it would any delivery)."""
    data = _job(message.body) or {}
    insert = data.get("operation") == "insert"
    timeout_ms = data.get("timeout_ms", DEFAULT_TIMEOUT_MS)
    if isinstance(timeout_ms, bool) or not isinstance(timeout_ms, int):
        timeout_ms = DEFAULT_TIMEOUT_MS
    start = _seconds(data.get("sent_at"))
    if start is None:
        stamp = _timestamp(message)
        if stamp is not None:
            start = stamp + 1.0 if stamp.is_integer() else stamp  # the worker's rounding
    if start is None:
        return Budget(insert, past=False)
    return Budget(insert, past=now - start > timeout_ms / 1000)


def _headers(message: AbstractIncomingMessage) -> dict[str, Any]:
    """The letter's headers, each as it can be published again."""
    return {k: encodable(v) for k, v in (message.headers or {}).items()}


def _properties(message: AbstractIncomingMessage, headers: dict[str, Any]) -> dict[str, Any]:
    """Every property of `message` for a copy, with `headers`."""
    return {
        "body": message.body,
        "headers": headers,
        "content_type": message.content_type,
        "content_encoding": message.content_encoding,
        "message_id": message.message_id,
        "correlation_id": message.correlation_id,
        "reply_to": message.reply_to,
        "timestamp": message.timestamp,
        "type": message.type,
        "app_id": message.app_id,
        "priority": message.priority,
        "delivery_mode": DeliveryMode.PERSISTENT,
    }


def _kept_copy(message: AbstractIncomingMessage, max_age: float, now: float) -> Message | None:
    """The same message again, for the back of the dead-letter queue: same body, properties and
    headers, stamped with when it died and expiring when its retention ends (None: it has
    already ended)."""
    headers = _headers(message)
    since = _dead_since(headers, now)
    left = since + max_age - now
    if left <= 0:
        return None
    headers[DEAD_SINCE] = int(since)
    return Message(
        **_properties(message, headers), expiration=max(1, int(min(left, 1e9) * 1000)) / 1000
    )


def _sent_back(message: AbstractIncomingMessage, fresh: bool, now: float) -> Message:
    """The job again, for the request exchange: every property kept but the retention's
    expiration; `fresh` restarts its budget (a new timestamp, no sent_at)."""
    properties = _properties(message, _headers(message))
    properties["headers"].pop(DEAD_SINCE, None)
    if fresh:
        data = _job(message.body)
        if data is not None and "sent_at" in data:
            del data["sent_at"]
            properties["body"] = orjson.dumps(data)
        properties["timestamp"] = datetime.fromtimestamp(now).astimezone()
    return Message(**properties)


@dataclass
class Tally:
    sent: int = 0
    kept_past: int = 0
    unroutable: int = 0


async def inspect_dead_letters(
    settings: Settings,
    *,
    limit: int,
    requeue: bool,
    force: bool = False,
    force_inserts: bool = False,
) -> int:
    """Print up to `limit` dead letters; with `requeue`, publish them back to the request
    exchange (the x-death history stays in their headers) and remove them from the DLQ.

    Looking never returns a message to the queue (a quorum queue counts every return against
    its delivery limit, 20 by default in RabbitMQ 4, and drops the message past it): each
    message of the queue is read once and an identical copy, confirmed, takes its place at the
    back before the original is acked, so the queue keeps its order and each message its
    retention. A crash in between leaves a duplicate, never a loss. Exit 1 when a letter could
    not be sent back (it stays in the queue)."""
    connection = await connect_amqp(",".join(settings.amqp_urls()))
    rows: list[list[Any]] = []
    tally = Tally()
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        try:
            queue = await channel.get_queue(settings.dead_letter_queue, ensure=True)
            requests = await channel.get_exchange(settings.request_exchange, ensure=True)
        except aio_pika.exceptions.ChannelNotFoundEntity as exc:
            raise ConfigError(
                f"{exc.args[0] if exc.args else exc}: has a worker declared the topology yet?"
            ) from None
        declared = queue.declaration_result
        count = (declared.message_count or 0) if declared is not None else 0
        for _ in range(count):
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            now = time.time()
            if len(rows) < limit:
                reason, source, times = _death(dict(message.headers or {}))
                rows.append([_job_id(message.body), reason, source, times, len(message.body)])
            send_back = requeue and tally.sent + tally.unroutable < limit
            if send_back:
                budget = budget_of(message, now)
                allowed = not budget.past or (force and (force_inserts or not budget.insert))
                if not allowed:
                    tally.kept_past += 1
                    send_back = False
            if send_back:
                try:
                    await requests.publish(
                        _sent_back(message, budget.past, now),
                        routing_key=settings.request_routing_key,
                        mandatory=True,
                    )
                except (PublishError, DeliveryError):
                    tally.unroutable += 1
                    send_back = False
                else:
                    tally.sent += 1
                    await message.ack()
                    continue
            copy = _kept_copy(message, settings.dead_letter_max_age, now)
            if copy is not None:
                await channel.default_exchange.publish(
                    copy, routing_key=settings.dead_letter_queue, mandatory=True
                )
            await message.ack()
    if not rows:
        print(f"{settings.dead_letter_queue} is empty")
        return 0
    print(table(rows, ["job_id", "reason", "from queue", "times", "bytes"]))
    if not requeue:
        return 0
    print(f"\n{tally.sent} message(s) sent back to {settings.request_exchange}")
    if tally.kept_past:
        print(
            f"{tally.kept_past} kept: past their own budget (timeout_ms), so running them now "
            "would answer nobody in time; --force sends them back with a fresh budget "
            "(inserts also need --force-inserts)"
        )
    if tally.unroutable:
        print(
            f"{tally.unroutable} kept: {settings.request_exchange} routed them to no queue "
            f"(routing key {settings.request_routing_key!r}); nothing was lost"
        )
        return 1
    return 0
