"""Publishing block jobs and waiting for their results, as the contact-center runtime does.

Used by `sfworker submit` (an admin's test run of a block), by `sfworker demo`, and by tests.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import aio_pika
import orjson
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from worker.config import Settings
from worker.runtime.brokers import connect_first


class JobClient:
    """Publishes jobs to the request exchange and collects results on a private reply queue."""

    def __init__(self, channel: AbstractChannel, settings: Settings) -> None:
        self._channel = channel
        self._settings = settings
        self._queue: AbstractQueue | None = None
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.results: list[dict[str, Any]] = []

    @property
    def reply_queue(self) -> str:
        assert self._queue is not None
        return self._queue.name

    async def start(self, durable_queue: str | None = None) -> None:
        """Consume results on a private exclusive queue, or on a named durable one (which
        survives a broker restart, for callers that must not lose a result)."""
        if durable_queue:
            self._queue = await self._channel.declare_queue(durable_queue, durable=True)
        else:
            self._queue = await self._channel.declare_queue(exclusive=True, auto_delete=True)
        await self._queue.consume(self._on_result, no_ack=True)

    async def _on_result(self, message: AbstractIncomingMessage) -> None:
        result: dict[str, Any] = orjson.loads(message.body)
        self.results.append(result)
        future = self._waiting.pop(message.correlation_id or "", None)
        if future is not None and not future.done():
            future.set_result(result)

    async def publish(
        self,
        job: dict[str, Any] | bytes,
        *,
        correlation_id: str | None = None,
        reply: bool = True,
        message_id: str | None = None,
        timestamp: float | None = None,
        headers: dict[str, Any] | None = None,
    ) -> str:
        """Publish one job (a dict, or raw bytes for tests of bad input); returns the
        correlation id its result will carry."""
        body = job if isinstance(job, bytes) else orjson.dumps(job)
        job_id = job.get("job_id") if isinstance(job, dict) else None
        correlation = correlation_id or (job_id if isinstance(job_id, str) else None)
        correlation = correlation or uuid.uuid4().hex
        if reply:
            self._waiting[correlation] = asyncio.get_running_loop().create_future()
        exchange = await self._channel.get_exchange(self._settings.request_exchange, ensure=False)
        await exchange.publish(
            aio_pika.Message(
                body=body,
                content_type="application/json",
                message_id=message_id or (job_id if isinstance(job_id, str) else None),
                correlation_id=correlation,
                reply_to=self.reply_queue if reply else None,
                timestamp=time.time() if timestamp is None else timestamp,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                headers=headers,
            ),
            routing_key=self._settings.request_routing_key,
        )
        return correlation

    async def result(self, correlation_id: str, wait: float) -> dict[str, Any]:
        """The result for `correlation_id`, waiting at most `wait` seconds (TimeoutError)."""
        future = self._waiting.get(correlation_id)
        if future is None:
            for result in self.results:
                if result.get("job_id") == correlation_id:
                    return result
            raise KeyError(correlation_id)
        async with asyncio.timeout(wait):
            return await asyncio.shield(future)

    async def call(self, job: dict[str, Any], wait: float = 30.0) -> dict[str, Any]:
        return await self.result(await self.publish(job), wait)


async def submit_one(settings: Settings, job: dict[str, Any], wait: float) -> dict[str, Any]:
    connection = await connect_first(settings.amqp_urls(), attempt_timeout=10)
    async with connection:
        channel = await connection.channel()
        client = JobClient(channel, settings)
        await client.start()
        return await client.call(job, wait)
