"""`JobClient`: the tests' view of `worker.client.BlockClient` that keeps results as plain dicts
(every one received in `results`).

Every job carries `user_id`, the RabbitMQ user the connection authenticated as: the broker
vouches for it, and a worker with tenant tables runs the job for that user's tenant.
"""

from __future__ import annotations

from typing import Any, Literal

from aio_pika.abc import AbstractChannel

from worker.client import (
    CLIENT_SETTING,
    CONNECTION_USER,
    BlockClient,
    _Sender,
    connection_user,
)
from worker.settings import Settings

__all__ = ["CONNECTION_USER", "JobClient", "connection_user"]


class JobClient:
    """BlockClient on the settings' topology, answering raw result dicts."""

    def __init__(
        self,
        channel: AbstractChannel,
        settings: Settings,
        worker_user: str | None = None,
        tenant_queue: bool = False,
        login_user: str | None = None,
    ) -> None:
        self.client = BlockClient(
            channel,
            login_user=login_user,
            exchange=settings.request_exchange,
            routing_key=settings.request_routing_key,
            publish_timeout=settings.publish_timeout_seconds,
            worker_user=worker_user,
            tenant_exchange=settings.tenant_exchange if tenant_queue else None,
        )
        self.results: list[dict[str, Any]] = []
        self.client.add_listener(self.results.append)

    @property
    def reply_queue(self) -> str:
        return self.client.reply_queue

    @property
    def user(self) -> str:
        """The user the connection authenticated as (known after start())."""
        return self.client.user

    async def start(self, durable_queue: str | None = None) -> None:
        """Consume results on a private exclusive queue, or on a named durable one (which
        survives a broker restart, for callers that must not lose a result)."""
        await self.client.start(durable_queue)

    async def publish(
        self,
        job: dict[str, Any] | bytes,
        *,
        correlation_id: str | None = None,
        reply: bool = True,
        message_id: str | None = None,
        timestamp: float | None = None,
        user_id: str | Literal[_Sender.CONNECTION_USER] | None = CONNECTION_USER,
    ) -> str:
        """Publish one job (a dict, or raw bytes for tests of bad input); returns the
        correlation id its result will carry. `user_id` is the connection's user unless given
        (None: no user_id at all, for tests of what a worker does without one)."""
        return await self.client.publish(
            job,
            correlation_id=correlation_id,
            expect_reply=reply,
            message_id=message_id,
            timestamp=timestamp,
            user_id=CLIENT_SETTING if user_id is CONNECTION_USER else user_id,
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
