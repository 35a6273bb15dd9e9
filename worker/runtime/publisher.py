"""Publishing results: to the request's reply_to through the default exchange, or to the results
exchange with routing key `<status>.<operation>`; always with publisher confirms.

One result per job is the hot path: the frame's properties are built directly and sent on the
channel's underlying aiormq channel (what aio-pika's Exchange.publish does, without building an
aio_pika.Message first: that object alone cost about a fifth of a publish's CPU)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage
from aio_pika.exceptions import PublishError
from aiormq import spec
from aiormq.exceptions import ChannelInvalidStateError

from worker.observability import tracing
from worker.observability.metrics import Metrics
from worker.runtime.amqp_urls import login_user

log = logging.getLogger(__name__)

_PERSISTENT = 2  # AMQP delivery mode
OWN_HEADERS = "x-sfworker-"  # the prefix of the headers the worker writes on its copies
_FLOAT32_MAX = 3.4028234663852886e38


def encodable(value: Any) -> Any:
    """A header value as pamqp can write it again: what it reads but cannot write (a long
    string that is not UTF-8 reads as bytes; a double past a 32-bit float's range, which it
    writes as one) becomes a byte array or text, so a copy of any message can be published."""
    if isinstance(value, bytes):
        return bytearray(value)
    if isinstance(value, float) and not abs(value) <= _FLOAT32_MAX:
        return repr(value)
    if isinstance(value, dict):
        return {k: encodable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [encodable(v) for v in value]
    return value


class Published(Enum):
    CONFIRMED = "confirmed"
    UNROUTABLE = "unroutable"


@dataclass(frozen=True)
class Reply:
    body: bytes
    job_id: str
    correlation_id: str
    reply_to: str | None
    status: str
    operation: str


class ResultPublisher:
    def __init__(
        self,
        channel: AbstractChannel,
        results: AbstractExchange,
        metrics: Metrics,
        timeout: float,
        dead_letter_queue: str = "",
        blocked: Callable[[], bool] = lambda: False,
        login: str | None = None,
    ) -> None:
        self._channel = channel
        self._login = login  # SFWORKER_AMQP_LOGIN_USER
        self._results = results
        self._metrics = metrics
        self._timeout = timeout
        self._dead_letter_queue = dead_letter_queue
        self._blocked = blocked

    async def publish(self, reply: Reply) -> Published:
        """Publish and wait for the broker's confirm. Unroutable -> UNROUTABLE (the caller is
        gone); a nack, a timeout or a lost channel raise (the request must not be acked)."""
        if self._channel.is_closed:
            raise ChannelInvalidStateError("the publishing channel is closed")
        channel = await self._channel.get_underlay_channel()
        properties = spec.Basic.Properties(
            content_type="application/json",
            correlation_id=reply.correlation_id,
            message_id=reply.job_id,
            message_type="sfworker.result.v1",
            # Persistent: a durable reply queue keeps the result across a broker restart.
            delivery_mode=_PERSISTENT,
            # RabbitMQ checks it against the connection's user: a caller can tell a result
            # from a message some other publisher put in its queue (BlockClient worker_user).
            user_id=login_user(channel.connection.url, self._login),
        )
        if reply.reply_to:
            exchange, key, destination = "", reply.reply_to, "reply_to"  # the default exchange
        else:
            exchange = self._results.name
            key = f"{reply.status}.{reply.operation or 'unknown'}"
            destination = "results_exchange"
        try:
            # The PRODUCER span, with the confirm; the result carries its W3C trace context.
            # A reply queue's name is the caller's own (often generated): the span says reply_to.
            with tracing.active.publish(exchange or destination, key) as trace_headers:
                if trace_headers:
                    properties.headers = trace_headers
                # Raises PublishError when returned (mandatory, on_return_raises),
                # DeliveryError on a nack, TimeoutError without a confirm in time: as
                # aio-pika's Exchange.publish.
                await self._confirmed(
                    channel.basic_publish(
                        reply.body,
                        exchange=exchange,
                        routing_key=key,
                        properties=properties,
                        mandatory=True,
                    )
                )
        except PublishError:
            self._metrics.replies_unroutable.inc()
            log.warning(
                "result could not be routed; the caller is gone",
                extra={"job_id": reply.job_id, "destination": destination},
            )
            self._metrics.last_job.set_to_current_time()
            return Published.UNROUTABLE
        self._metrics.results_published.labels(destination).inc()
        self._metrics.last_job.set_to_current_time()
        return Published.CONFIRMED

    async def _confirmed(self, confirm: Awaitable[Any]) -> None:
        """Wait for the broker's confirm at most the publish timeout, and longer while the broker
        blocks the connection (an alarm): the frame was written, RabbitMQ reads it when it
        unblocks. Giving up then and requeueing the job would answer it twice."""
        future = asyncio.ensure_future(confirm)
        try:
            while True:
                done, _ = await asyncio.wait({future}, timeout=self._timeout)
                if done:
                    future.result()
                    return
                if not self._blocked():
                    raise TimeoutError("no publisher confirm in time")
        finally:
            if not future.done():
                future.cancel()

    async def dead_letter(self, message: AbstractIncomingMessage, reason: str) -> None:
        """Put a copy of `message` in the dead-letter queue, for a message RabbitMQ must not
        dead-letter itself: without its `x-death` header, with `x-sfworker-dead-letter-reason`.
        Raises like `publish` when the copy is not confirmed (the original must then stay)."""
        headers: dict[str, Any] = {"x-sfworker-dead-letter-reason": reason}
        if message.user_id:
            # Who published it (the copy goes out under the worker's own user).
            headers["x-sfworker-user-id"] = message.user_id
        await self.forward(message, self._dead_letter_queue, headers, drop=("x-death",))

    async def forward(
        self,
        message: AbstractIncomingMessage,
        queue: str,
        headers: dict[str, Any],
        drop: tuple[str, ...] = (),
    ) -> None:
        """Put a copy of `message` (its body and properties; `headers` added; `drop`, the
        broker's delivery count and every incoming `x-sfworker-*` header removed) in `queue`
        through the default exchange, under the worker's own user_id. Raises like `publish`
        when the copy is not confirmed or routed nowhere: the original must then stay."""
        skip = {"x-delivery-count", *drop}
        # Headers of ours are written by the worker alone: whatever a publisher put under that
        # prefix is dropped, so no copy carries a forged one.
        kept = {
            k: encodable(v)
            for k, v in (message.headers or {}).items()
            if k not in skip and not k.startswith(OWN_HEADERS)
        }
        if self._channel.is_closed:
            raise ChannelInvalidStateError("the publishing channel is closed")
        channel = await self._channel.get_underlay_channel()
        expiration = message.expiration
        properties = spec.Basic.Properties(
            headers={**kept, **headers},
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            message_id=message.message_id,
            correlation_id=message.correlation_id,
            reply_to=message.reply_to,
            expiration=(
                str(int(expiration * 1000)) if isinstance(expiration, int | float) else None
            ),
            # The job's budget counts from it when it has no sent_at: never from the move.
            timestamp=message.timestamp or datetime.now(UTC),
            message_type=message.type,
            app_id=message.app_id,
            user_id=login_user(channel.connection.url, self._login),
            delivery_mode=_PERSISTENT,
        )
        # As in publish(): the frame built directly; a return raises PublishError.
        await channel.basic_publish(
            message.body,
            exchange="",
            routing_key=queue,
            properties=properties,
            mandatory=True,
            timeout=self._timeout,
        )
