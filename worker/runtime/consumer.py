"""Handling one delivery: read it, answer it from the result store or run it, publish the result
with a confirm, and only then ack. Nothing is acked unanswered.

- Bad input (not JSON, not an object, not v1, too large) is answered INVALID_REQUEST and acked;
  without a reply_to it is rejected to the dead-letter queue.
- A job its publisher may not send (tenant isolation, worker/tenancy.py) is answered
  FORBIDDEN_ACCOUNT the same way, before the result store or Salesforce are touched.
- In strict tenant mode, a message whose reply_to is not a queue its publisher may read is not
  run nor answered (not even refused: that too would land in someone else's queue): the worker
  moves it to the dead-letter queue with reason `forbidden_reply_to`, then acks it.
- A redelivered job whose result is known (the ack was lost) is answered from the store.
- A job already running in this process (its channel died, the broker redelivered it) is not run
  twice: the redelivery waits for the running one and answers with its result.
- If the delivery's channel is gone when the result is ready, nothing is published: the broker
  redelivers the job and the stored result answers it then, so the caller gets one answer.
- An unexpected error requeues the message; the queue's delivery limit dead-letters a poison one.
- A message whose `x-death` header RabbitMQ did not write (an entry that is not a table, a count
  that is not a number) is refused INVALID_REQUEST: RabbitMQ 3.x crashes the queue when it
  dead-letters such a message, and loses it. Without a reply_to, the worker itself moves a copy
  (without that header) to the dead-letter queue, then acks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import orjson
from aio_pika.abc import AbstractIncomingMessage
from aiormq.exceptions import AMQPError, ChannelInvalidStateError

from worker.contract import BlockResult, ErrorCode, Operation, Status
from worker.contract.fingerprint import differences
from worker.jobs import (
    Admission,
    Decoded,
    Incoming,
    JobRunner,
    decode,
    failed,
    finish,
    result_json,
    reused,
    too_large,
)
from worker.observability import tracing
from worker.observability.metrics import Metrics
from worker.runtime.publisher import Published, Reply, ResultPublisher
from worker.settings import Settings
from worker.stores.base import ResultStore, pack_result, unpack_result
from worker.tenancy import Reason

log = logging.getLogger(__name__)


def to_incoming(message: AbstractIncomingMessage) -> Incoming:
    stamp = message.timestamp
    return Incoming(
        body=message.body,
        message_id=message.message_id,
        correlation_id=message.correlation_id,
        reply_to=message.reply_to or None,
        timestamp=stamp.timestamp() if stamp is not None else None,
        user_id=message.user_id or None,
        received_wall=time.time(),
        received_mono=time.monotonic(),
        redelivered=bool(message.redelivered),
    )


def _channel_open(message: AbstractIncomingMessage) -> bool:
    try:
        return not message.channel.is_closed
    except ChannelInvalidStateError:
        return False


def _log_history(message: AbstractIncomingMessage, job_id: str) -> None:
    headers = message.headers or {}
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths:
        first = deaths[0] if isinstance(deaths[0], dict) else {}
        log.warning(
            "message was dead-lettered before",
            extra={
                "job_id": job_id,
                "death_reason": str(first.get("reason", "")),
                "death_queue": str(first.get("queue", "")),
                "death_count": _int(first.get("count")),
            },
        )
    count = headers.get("x-delivery-count")
    if message.redelivered or count:
        log.info(
            "redelivered job",
            extra={"job_id": job_id, "delivery_count": _int(count)},
        )


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0


FORGED_DEATH = "forged_x_death"


def forged_death(headers: dict[str, Any] | None) -> bool:
    """True when an `x-death` header has what RabbitMQ never writes and cannot dead-letter: an
    array entry that is not a table, or a `count` that is not an integer."""
    deaths = (headers or {}).get("x-death")
    if not isinstance(deaths, list):
        return False  # absent, or a value RabbitMQ ignores
    for death in deaths:
        if not isinstance(death, dict):
            return True
        count = death.get("count")
        if count is not None and (isinstance(count, bool) or not isinstance(count, int)):
            return True
    return False


def _refuse_forged(decoded: Decoded) -> Decoded:
    operation: Operation | None = None
    if decoded.job is not None:
        operation = Operation(decoded.job.operation)
    elif decoded.refusal is not None:
        operation = decoded.refusal.operation
    refusal = failed(
        decoded.job_id,
        ErrorCode.INVALID_REQUEST,
        "header x-death is reserved for RabbitMQ and this one is malformed "
        "(an entry that is not a table, or a count that is not an integer)",
        operation=operation,
    )
    return Decoded(decoded.job_id, refusal=refusal, reason=FORGED_DEATH)


class DeliveryHandler:
    def __init__(
        self,
        runner: JobRunner,
        store: ResultStore,
        publisher: ResultPublisher,
        settings: Settings,
        metrics: Metrics,
    ) -> None:
        self._runner = runner
        self._store = store
        self._publisher = publisher
        self._settings = settings
        self._metrics = metrics
        self._running: dict[str, tuple[bytes, asyncio.Future[_Answer]]] = {}

    async def handle(self, message: AbstractIncomingMessage) -> None:
        with tracing.active.consume(
            message.headers, self._settings.request_queue, message.message_id, message.routing_key
        ):
            try:
                await self._handle(message)
            except asyncio.CancelledError:
                raise
            except Exception:
                self._metrics.handler_crashes.inc()
                log.exception("unexpected error while handling a delivery; requeued")
                await _settle(message, requeue=True)

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        incoming = to_incoming(message)
        decoded = decode(incoming, self._settings.max_message_bytes)
        if forged_death(message.headers):
            decoded = _refuse_forged(decoded)
        if message.redelivered:
            self._metrics.redeliveries.inc()
        if message.redelivered or message.headers:
            _log_history(message, decoded.job_id)
        if not self._runner.may_reply(decoded.job_id, incoming):
            reason = Reason.FORBIDDEN_REPLY_TO.value
            self._metrics.dead_lettered.labels(reason).inc()
            await self._move_to_dead_letters(message, decoded.job_id, reason)
            return
        if decoded.job is None:
            self._invalid(decoded)
            assert decoded.refusal is not None
            await self._refuse(message, incoming, decoded.refusal, decoded.reason)
            return
        tracing.active.job_started(decoded.job)
        admission = self._runner.admit(decoded.job, incoming)
        if admission.refusal is not None:
            await self._refuse(message, incoming, admission.refusal, admission.reason)
            return
        job_id = decoded.job_id
        held, stored = await self._store.claim(admission.key, admission.fingerprint)
        if held is not None and held != admission.fingerprint:
            answer = self._reused(admission, held, incoming)
        elif stored is not None:
            answer = self._replay(admission, stored, incoming)
        else:
            answer = await self._execute_once(admission, incoming)
        await self._answer(message, incoming, job_id, answer)

    def _replay(self, admission: Admission, stored: bytes, incoming: Incoming) -> _Answer:
        """The stored result of this job (of another job, for one stored by a version before
        claims: JOB_ID_REUSED)."""
        first, body = unpack_result(stored)
        if first is not None and first != admission.fingerprint:
            return self._reused(admission, first, incoming)
        self._metrics.results_replayed.inc()
        log.info(
            "answering a redelivered job from the result store",
            extra={"job_id": admission.job.job_id},
        )
        return _Answer.of(body)

    def _reused(self, admission: Admission, first: bytes, incoming: Incoming) -> _Answer:
        """JOB_ID_REUSED: counted and logged (the parts that differ, never values); nothing is
        stored, so the first job's result stays as it was."""
        result = finish(reused(admission, first), incoming)
        self._metrics.job_id_reused.inc()
        log.warning(
            "job id reused for another job; refused",
            extra={
                "job_id": admission.job.job_id,
                "differs": ",".join(differences(first, admission.fingerprint)),
            },
        )
        self._observe(result)
        return _Answer.from_result(result)

    async def _execute_once(self, admission: Admission, incoming: Incoming) -> _Answer:
        """Run the job, or join the run already going on in this process for the same job
        (same job_id, and in strict tenant mode the same tenant)."""
        key = admission.key
        running = self._running.get(key)
        if running is not None:
            first, joined = running
            if first != admission.fingerprint:
                return self._reused(admission, first, incoming)
            log.info(
                "job already running here; waiting for its result",
                extra={"job_id": admission.job.job_id},
            )
            return await asyncio.shield(joined)
        future: asyncio.Future[_Answer] = asyncio.get_running_loop().create_future()
        self._running[key] = (admission.fingerprint, future)
        self._metrics.jobs_in_flight.inc()
        try:
            result = finish(await self._runner.run(admission.job, incoming), incoming)
            answer = _Answer.from_result(result)
            limit = self._settings.max_result_bytes
            if len(answer.body) > limit:
                result = too_large(result, len(answer.body), limit)
                answer = _Answer.from_result(result)
            await self._store.put(key, pack_result(admission.fingerprint, answer.body))
            self._observe(result)
            future.set_result(answer)
            return answer
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here: joiners see it, nobody else has to
            raise
        finally:
            self._metrics.jobs_in_flight.dec()
            del self._running[key]

    def _observe(self, result: BlockResult) -> None:
        operation = result.operation.value if result.operation else ""
        code = result.error.code.value if result.error else ""
        self._metrics.jobs.labels(operation, result.status.value, code).inc()
        self._metrics.job_duration.labels(operation, result.status.value).observe(
            result.duration_ms / 1000, tracing.exemplar()
        )
        tracing.active.job_done(result)
        log.info(
            "job answered",
            extra={
                "job_id": result.job_id,
                "operation": operation,
                "account": result.account or "",
                "status": result.status.value,
                "code": code,
                "http_status": result.http_status,
                "attempts": result.attempts,
                "duration_ms": result.duration_ms,
            },
        )

    def _invalid(self, decoded: Decoded) -> None:
        self._metrics.invalid_requests.labels(decoded.reason).inc()
        assert decoded.refusal is not None
        log.warning(
            "invalid request",
            extra={
                "job_id": decoded.job_id,
                "reason": decoded.reason,
                "error": decoded.refusal.error.message if decoded.refusal.error else "",
            },
        )

    async def _refuse(
        self,
        message: AbstractIncomingMessage,
        incoming: Incoming,
        refusal: BlockResult,
        reason: str,
    ) -> None:
        """Answer a job refused before execution, or dead-letter it when it has no reply_to."""
        if not incoming.reply_to:
            # Nobody to tell: keep it for a human in the dead-letter queue.
            self._metrics.dead_lettered.labels(reason).inc()
            if reason == FORGED_DEATH:
                await self._move_to_dead_letters(message, refusal.job_id, reason)
            else:
                await _settle(message, requeue=False)
            return
        result = finish(refusal, incoming)
        self._observe(result)
        await self._answer(message, incoming, refusal.job_id, _Answer.from_result(result))

    async def _move_to_dead_letters(
        self, message: AbstractIncomingMessage, job_id: str, reason: str
    ) -> None:
        """Dead-letter a message RabbitMQ cannot dead-letter: a copy, confirmed, then the ack."""
        try:
            await self._publisher.dead_letter(message, reason)
        except (AMQPError, ChannelInvalidStateError, ConnectionError, TimeoutError) as exc:
            log.warning(
                "could not move the message to the dead-letter queue; requeued",
                extra={"job_id": job_id, "error": type(exc).__name__},
            )
            await _settle(message, requeue=True)
            return
        try:
            await message.ack()
        except (AMQPError, ChannelInvalidStateError, ConnectionError) as exc:
            log.warning(
                "ack lost with the channel after the dead-letter copy",
                extra={"job_id": job_id, "error": type(exc).__name__},
            )

    async def _answer(
        self, message: AbstractIncomingMessage, incoming: Incoming, job_id: str, answer: _Answer
    ) -> None:
        """Publish the result and wait for its confirm, then ack the request."""
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
        except (AMQPError, ChannelInvalidStateError, ConnectionError, TimeoutError) as exc:
            log.warning(
                "result not confirmed; the request is requeued",
                extra={"job_id": job_id, "error": type(exc).__name__},
            )
            await _settle(message, requeue=True)
            return
        if published is Published.UNROUTABLE:
            log.info("request acked although its reply was unroutable", extra={"job_id": job_id})
        try:
            await message.ack()
        except (AMQPError, ChannelInvalidStateError, ConnectionError) as exc:
            log.warning(
                "ack lost with the channel; the redelivery will be answered from the store",
                extra={"job_id": job_id, "error": type(exc).__name__},
            )


@dataclass(frozen=True)
class _Answer:
    """A serialized result and what its routing key needs."""

    body: bytes
    status: str
    operation: str

    @classmethod
    def from_result(cls, result: BlockResult) -> _Answer:
        return cls(
            result_json(result),
            result.status.value,
            result.operation.value if result.operation else "",
        )

    @classmethod
    def of(cls, body: bytes) -> _Answer:
        data: Any = orjson.loads(body)
        return cls(
            body, str(data.get("status") or Status.FAILED.value), str(data.get("operation") or "")
        )


async def _settle(message: AbstractIncomingMessage, *, requeue: bool) -> None:
    """Reject (to the dead-letter queue) or requeue; a lost channel requeues by itself."""
    try:
        if requeue:
            await message.nack(requeue=True)
        else:
            await message.reject(requeue=False)
    except (AMQPError, ChannelInvalidStateError, ConnectionError) as exc:
        log.warning("could not settle a delivery", extra={"error": type(exc).__name__})
