"""A delivery settled: turned into an `Incoming`, decided by the job pipeline (worker/jobs/),
and its decision carried out, each in one place. Nothing is acked unanswered.

- reply: the result is published and confirmed, then the request is acked. If the delivery's
  channel is gone by then, nothing is published: the broker redelivers the job and the stored
  result answers it, so the caller gets one answer. A result not confirmed requeues the request.
- dead-letter: the request is rejected and RabbitMQ dead-letters it.
- dead-letter with a copy (a message RabbitMQ must not dead-letter itself: a forged `x-death`, a
  forbidden reply_to): a confirmed copy in the dead-letter queue, then the ack; a copy not
  confirmed requeues the request.
- requeue: nack with requeue; the queue's delivery limit dead-letters a poison message.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aio_pika.abc import AbstractIncomingMessage
from aiormq.exceptions import AMQPError, ChannelInvalidStateError

from worker.jobs import Checked, Decision, Incoming, JobPipeline, Settle
from worker.memory import MemoryBudget
from worker.observability import tracing
from worker.observability.metrics import Metrics
from worker.runtime.publisher import Published, Reply, ResultPublisher
from worker.settings import Settings

log = logging.getLogger(__name__)

_PUBLISH_ERRORS = (AMQPError, ChannelInvalidStateError, ConnectionError, TimeoutError)
_ACK_ERRORS = (AMQPError, ChannelInvalidStateError, ConnectionError)


def to_incoming(message: AbstractIncomingMessage, *, user_id: str | None = None) -> Incoming:
    """The delivery as the pipeline reads it; `user_id` (the publisher a lane copy vouches
    for) in place of the message's own."""
    stamp = message.timestamp
    return Incoming(
        body=message.body,
        message_id=message.message_id,
        correlation_id=message.correlation_id,
        reply_to=message.reply_to or None,
        timestamp=stamp.timestamp() if stamp is not None else None,
        user_id=user_id if user_id is not None else (message.user_id or None),
        received_wall=time.time(),
        received_mono=time.monotonic(),
        redelivered=bool(message.redelivered),
        headers=message.headers or None,
    )


def _channel_open(message: AbstractIncomingMessage) -> bool:
    try:
        return not message.channel.is_closed
    except ChannelInvalidStateError:
        return False


class Consumer:
    """The request queue's (and the lanes') handler: decide, then settle."""

    def __init__(
        self,
        pipeline: JobPipeline,
        publisher: ResultPublisher,
        settings: Settings,
        metrics: Metrics,
        budget: MemoryBudget | None = None,
    ) -> None:
        self.pipeline = pipeline
        self._publisher = publisher
        self._settings = settings
        self._metrics = metrics
        self.budget = budget or MemoryBudget.of(settings)

    async def handle(
        self,
        message: AbstractIncomingMessage,
        incoming: Incoming | None = None,
        checked: Checked | None = None,
    ) -> None:
        with tracing.active.consume(
            message.headers, self._settings.request_queue, message.message_id, message.routing_key
        ):
            # What the job holds in memory (memory.py) is counted until its answer is out.
            hold = self.budget.open()
            try:
                incoming = incoming or to_incoming(message)
                decision = await self.pipeline.handle(incoming, checked, hold)
                await self.settle(message, incoming, decision)
            except asyncio.CancelledError:
                raise
            except Exception:
                self._metrics.handler_crashes.inc()
                log.exception("unexpected error while handling a delivery; requeued")
                await _reject(message, requeue=True)
            finally:
                hold.release()

    async def settle(
        self, message: AbstractIncomingMessage, incoming: Incoming, decision: Decision
    ) -> None:
        match decision.settle:
            case Settle.REPLY:
                await self._reply(message, incoming, decision)
            case Settle.DEAD_LETTER:
                await _reject(message, requeue=False)
            case Settle.DEAD_LETTER_COPY:
                await self._copy_to_dead_letters(message, decision)
            case Settle.REQUEUE:
                await _reject(message, requeue=True)

    async def _reply(
        self, message: AbstractIncomingMessage, incoming: Incoming, decision: Decision
    ) -> None:
        """Publish the result and wait for its confirm, then ack the request."""
        job_id, answer = decision.job_id, decision.answer
        assert answer is not None
        if not _channel_open(message):
            log.warning(
                "channel closed before the result was published; the redelivery will answer",
                extra={"job_id": job_id},
            )
            return
        reply = Reply(
            body=answer.body,
            job_id=job_id,
            correlation_id=incoming.correlation_id or job_id,
            reply_to=incoming.reply_to,
            status=answer.status,
            operation=answer.operation,
        )
        try:
            published = await self._publisher.publish(reply)
        except _PUBLISH_ERRORS as exc:
            log.warning(
                "result not confirmed; the request is requeued",
                extra={"job_id": job_id, "error": type(exc).__name__},
            )
            await _reject(message, requeue=True)
            return
        if published is Published.UNROUTABLE:
            log.info("request acked although its reply was unroutable", extra={"job_id": job_id})
        await _ack(
            message,
            job_id,
            "ack lost with the channel; the redelivery will be answered from the store",
        )

    async def _copy_to_dead_letters(
        self, message: AbstractIncomingMessage, decision: Decision
    ) -> None:
        """Dead-letter a message RabbitMQ cannot dead-letter: a copy, confirmed, then the ack."""
        try:
            await self._publisher.dead_letter(message, decision.reason)
        except _PUBLISH_ERRORS as exc:
            log.warning(
                "could not move the message to the dead-letter queue; requeued",
                extra={"job_id": decision.job_id, "error": type(exc).__name__},
            )
            await _reject(message, requeue=True)
            return
        await _ack(message, decision.job_id, "ack lost with the channel after the dead-letter copy")


async def _ack(message: AbstractIncomingMessage, job_id: str, lost: str) -> None:
    try:
        await message.ack()
    except _ACK_ERRORS as exc:
        log.warning(lost, extra={"job_id": job_id, "error": type(exc).__name__})


async def _reject(message: AbstractIncomingMessage, *, requeue: bool) -> None:
    """Reject (to the dead-letter queue) or requeue; a lost channel requeues by itself."""
    try:
        if requeue:
            await message.nack(requeue=True)
        else:
            await message.reject(requeue=False)
    except _ACK_ERRORS as exc:
        log.warning("could not settle a delivery", extra={"error": type(exc).__name__})
