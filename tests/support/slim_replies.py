"""Jobs published with a reply queue whose results are kept as (status, error code) only: for
tests that send thousands of jobs with large results, which a `JobClient` (it keeps every result
whole) would hold in the test process by the hundreds of megabytes."""

from __future__ import annotations

import time
from typing import Any

import aio_pika
import orjson
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from tests.support.waiting import wait_until
from worker.client import connection_user
from worker.settings import Settings


class SlimReplies:
    """Publishes jobs on the settings' topology; `answers` maps each answered job id to its
    status and error code ('' when ok)."""

    def __init__(self, channel: AbstractChannel, settings: Settings) -> None:
        self._channel = channel
        self._settings = settings
        self._queue: AbstractQueue | None = None
        self._user = ""
        self.answers: dict[str, tuple[str, str]] = {}
        self.messages: dict[str, str] = {}  # the error message of each failed job

    async def start(self) -> None:
        self._user = await connection_user(self._channel)
        self._queue = await self._channel.declare_queue(exclusive=True, auto_delete=True)
        await self._queue.consume(self._on_result, no_ack=True)

    async def _on_result(self, message: AbstractIncomingMessage) -> None:
        data: dict[str, Any] = orjson.loads(message.body)
        error = data.get("error") or {}
        job_id = str(data.get("job_id"))
        self.answers[job_id] = (str(data.get("status")), error.get("code", ""))
        if error:
            self.messages[job_id] = str(error.get("message", ""))[:300]

    async def publish(self, job: dict[str, Any]) -> None:
        assert self._queue is not None, "start() first"
        exchange = await self._channel.get_exchange(self._settings.request_exchange)
        await exchange.publish(
            aio_pika.Message(
                body=orjson.dumps(job),
                content_type="application/json",
                message_id=job["job_id"],
                correlation_id=job["job_id"],
                reply_to=self._queue.name,
                timestamp=time.time(),
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                user_id=self._user,
            ),
            routing_key=self._settings.request_routing_key,
        )

    async def wait_for(self, job_ids: list[str], within: float) -> dict[str, tuple[str, str]]:
        """The answers of `job_ids`, once every one is in."""

        async def answered() -> bool:
            return all(job_id in self.answers for job_id in job_ids)

        await wait_until(answered, within, f"{len(job_ids)} answers")
        return {job_id: self.answers[job_id] for job_id in job_ids}
