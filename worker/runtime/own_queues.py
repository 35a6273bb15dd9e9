"""Queues the worker consumes each on a channel of its own, with its own prefetch: the lanes of
the fair share (lanes.py) and the tenants' request queues (tenant_queues.py). Each delivery is
handled as a task this object owns; `drain` stops the consumers and waits for those tasks."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import aio_pika
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage, AbstractQueue
from aiormq.exceptions import ChannelAccessRefused, ChannelPreconditionFailed

from worker.accounts import ConfigError
from worker.runtime import topology
from worker.runtime.brokers import FailoverConnection, consume_retrying

log = logging.getLogger(__name__)

Handler = Callable[[AbstractIncomingMessage], Awaitable[None]]


class OwnQueues:
    def __init__(self, what: str, hint: str) -> None:
        self._what = what  # "lane", "tenant queue": for messages
        self.hint = hint  # what to do when the broker refuses one
        self._consumed: list[tuple[AbstractQueue, str]] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    async def consume(
        self,
        connection: FailoverConnection,
        name: str,
        arguments: dict[str, Any],
        prefetch: int,
        handler: Handler,
        bind: tuple[AbstractExchange, list[str]] | None = None,
    ) -> None:
        """Declare the queue `name` (bound to the exchange under each routing key of `bind`)
        and consume it on a channel of its own with `prefetch`."""
        channel = await connection.channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=prefetch, timeout=topology.DECLARE_TIMEOUT)
        try:
            queue = await channel.declare_queue(
                name, durable=True, arguments=arguments, timeout=topology.DECLARE_TIMEOUT
            )
            if bind is not None:
                exchange, keys = bind
                for key in keys:
                    await queue.bind(exchange, routing_key=key, timeout=topology.DECLARE_TIMEOUT)
        except ChannelAccessRefused:
            raise ConfigError(
                f"the broker refused the {self._what} {name!r}: {self.hint}"
            ) from None
        except ChannelPreconditionFailed:
            raise ConfigError(
                f"the {self._what} {name!r} exists with other arguments than this worker's "
                f"({', '.join(f'{k}={v}' for k, v in sorted(arguments.items()))}): delete it "
                "once it is empty, or give it these by a policy (docs/runbook.md)"
            ) from None
        consume = partial(
            queue.consume,
            partial(self._run, handler),
            no_ack=False,
            timeout=topology.DECLARE_TIMEOUT,
        )
        tag = await consume_retrying(connection, name, consume)
        self._consumed.append((queue, tag))

    async def _run(self, handler: Handler, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await handler(message)
        finally:
            self._tasks.discard(task)

    def __len__(self) -> int:
        return len(self._consumed)

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def drain(self, grace: float) -> int:
        """Stop the consumers, wait up to `grace` s for their jobs, cancel the rest (left
        unacked: the broker gives them to another worker). Returns how many."""
        for queue, tag in self._consumed:
            try:
                async with asyncio.timeout(5):
                    await queue.cancel(tag)
            except (TimeoutError, aio_pika.exceptions.AMQPError, RuntimeError) as exc:
                log.warning(
                    f"{self._what} consumer cancel failed", extra={"error": type(exc).__name__}
                )
        pending = set(self._tasks)
        if pending:
            _done, pending = await asyncio.wait(pending, timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        return len(pending)
