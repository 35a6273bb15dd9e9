"""`sfworker submit` (an admin's test run of a block) and `JobClient`, the tests' view of
`worker.client.BlockClient` that keeps results as plain dicts (every one received in `results`).
"""

from __future__ import annotations

from typing import Any

from aio_pika.abc import AbstractChannel

from worker.client import BlockClient
from worker.config import Settings
from worker.contract import BlockResult
from worker.reach import amqp_user


class JobClient:
    """BlockClient on the settings' topology, answering raw result dicts."""

    def __init__(
        self, channel: AbstractChannel, settings: Settings, *, stamp_user_id: bool = True
    ) -> None:
        url = settings.amqp_url.get_secret_value()
        self.client = BlockClient(
            channel,
            user_id=amqp_user(url) if stamp_user_id else None,
            exchange=settings.request_exchange,
            routing_key=settings.request_routing_key,
            publish_timeout=settings.publish_timeout_seconds,
        )
        self.results: list[dict[str, Any]] = []
        self.client.add_listener(self.results.append)

    @property
    def reply_queue(self) -> str:
        return self.client.reply_queue

    async def start(self, durable_queue: str | None = None) -> None:
        await self.client.start(durable_queue)

    async def publish(
        self,
        job: dict[str, Any] | bytes,
        *,
        correlation_id: str | None = None,
        reply: bool = True,
        message_id: str | None = None,
        timestamp: float | None = None,
    ) -> str:
        """Publish one job (a dict, or raw bytes for tests of bad input); returns the
        correlation id its result will carry."""
        return await self.client.publish(
            job,
            correlation_id=correlation_id,
            expect_reply=reply,
            message_id=message_id,
            timestamp=timestamp,
        )

    async def result(self, correlation_id: str, wait: float) -> dict[str, Any]:
        """The result for `correlation_id`, waiting at most `wait` seconds; a job id whose
        result was already handed out and is not awaited again is answered from `results`."""
        if not self.client.awaiting(correlation_id):
            answered = [r for r in self.results if r.get("job_id") == correlation_id]
            if answered:
                return answered[-1]
        return await self.client.raw_result(correlation_id, wait)

    async def call(self, job: dict[str, Any], wait: float = 30.0) -> dict[str, Any]:
        return await self.result(await self.publish(job), wait)


async def submit_one(settings: Settings, job: dict[str, Any], wait: float) -> BlockResult:
    """Publish `job` on the settings' topology and return its result (TimeoutError after
    `wait` seconds; worker.reach.Unreachable when RabbitMQ cannot be reached)."""
    async with BlockClient.connect(
        settings.amqp_url.get_secret_value(),
        exchange=settings.request_exchange,
        routing_key=settings.request_routing_key,
        publish_timeout=settings.publish_timeout_seconds,
    ) as client:
        return await client.call(job, wait)
