"""The benchmark's own side of RabbitMQ: publish jobs (all at once, or paced), collect replies
(time of arrival, whether the answer is right), and delete what it declared."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractIncomingMessage,
    AbstractQueue,
)

Encoder = Callable[[str, str], aio_pika.Message]  # (job_id, reply_to) -> message
Checker = Callable[[bytes], bool]  # reply body -> is it the right answer


@dataclass
class Replies:
    """Arrival times of replies by correlation id, for one batch of jobs."""

    expected: set[str]
    sent: dict[str, float] = field(default_factory=dict)
    arrived: dict[str, float] = field(default_factory=dict)
    wrong: int = 0
    unexpected: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)
    progress: asyncio.Event = field(default_factory=asyncio.Event)
    on_first: Callable[[], None] | None = None
    on_count: tuple[int, Callable[[], None]] | None = None
    on_last: Callable[[], None] | None = None

    def latencies_ms(self) -> list[float]:
        return sorted(
            (self.arrived[k] - self.sent[k]) * 1000 for k in self.arrived if k in self.sent
        )


class Broker:
    """One connection: a confirming channel for loading queues, a plain one for paced
    publishing, and one exclusive reply queue consumed without acks."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._connection: AbstractConnection | None = None
        self.confirm: AbstractChannel | None = None
        self.plain: AbstractChannel | None = None
        self.reply_queue: AbstractQueue | None = None
        self._batch: Replies | None = None
        self._check: Checker = lambda _body: True
        self.queues: set[str] = set()
        self.exchanges: set[str] = set()

    async def open(self) -> None:
        self._connection = await aio_pika.connect(
            self.url, client_properties={"connection_name": "sfworker-bench"}, timeout=10
        )
        self.confirm = await self._connection.channel(publisher_confirms=True)
        self.plain = await self._connection.channel(publisher_confirms=False)
        consume = await self._connection.channel(publisher_confirms=False)
        await consume.set_qos(prefetch_count=0)
        self.reply_queue = await consume.declare_queue(
            "", exclusive=True, auto_delete=True, timeout=10
        )
        await self.reply_queue.consume(self._on_reply, no_ack=True, timeout=10)

    @property
    def reply_to(self) -> str:
        assert self.reply_queue is not None
        return self.reply_queue.name

    async def declare_quorum(self, name: str, arguments: dict[str, object] | None = None) -> None:
        assert self.confirm is not None
        await self.confirm.declare_queue(
            name,
            durable=True,
            arguments={"x-queue-type": "quorum", **(arguments or {})},
            timeout=10,
        )
        self.queues.add(name)

    async def consumers(self, queue: str) -> int:
        assert self.confirm is not None
        declared = await self.confirm.declare_queue(queue, passive=True, timeout=10)
        result = declared.declaration_result
        return int(result.consumer_count or 0)

    async def depth(self, queue: str) -> int:
        assert self.confirm is not None
        declared = await self.confirm.declare_queue(queue, passive=True, timeout=10)
        return int(declared.declaration_result.message_count or 0)

    async def consumers_if_any(self, queue: str) -> int:
        """Consumers of `queue`, 0 while nobody has declared it: asked on a channel of its own,
        since the broker closes the channel that asks after a missing queue."""
        assert self._connection is not None
        channel = await self._connection.channel(publisher_confirms=False)
        try:
            declared = await channel.declare_queue(queue, passive=True, timeout=10)
        except aio_pika.exceptions.ChannelNotFoundEntity:
            return 0
        try:
            return int(declared.declaration_result.consumer_count or 0)
        finally:
            await channel.close()

    async def wait_consumers(
        self, queue: str, count: int, within: float, declared: bool = True
    ) -> None:
        """Wait for `count` consumers on `queue`; `declared=False`: the queue may not exist yet
        (the system declares it at its start)."""
        ask = self.consumers if declared else self.consumers_if_any
        give_up = time.monotonic() + within
        while await ask(queue) < count:
            if time.monotonic() > give_up:
                raise RuntimeError(f"no {count} consumer(s) on {queue} after {within:.0f} s")
            await asyncio.sleep(0.05)

    def expect(self, ids: list[str], check: Checker) -> Replies:
        self._batch = Replies(set(ids))
        self._check = check
        return self._batch

    async def load(self, queue: str, ids: list[str], encode: Encoder, chunk: int = 250) -> None:
        """Publish every job to `queue` and wait for the broker's confirms."""
        assert self.confirm is not None
        assert self._batch is not None
        exchange = self.confirm.default_exchange
        for start in range(0, len(ids), chunk):
            part = ids[start : start + chunk]
            now = time.monotonic()
            for job_id in part:
                self._batch.sent[job_id] = now
            await asyncio.gather(
                *(
                    exchange.publish(encode(job_id, self.reply_to), routing_key=queue, timeout=30)
                    for job_id in part
                )
            )

    async def paced(self, queue: str, ids: list[str], encode: Encoder, rate: float) -> None:
        """Publish one job every 1/rate seconds (in small bursts when the loop is late)."""
        assert self.plain is not None
        assert self._batch is not None
        exchange = self.plain.default_exchange
        start = time.monotonic()
        for i, job_id in enumerate(ids):
            due = start + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            message = encode(job_id, self.reply_to)
            self._batch.sent[job_id] = time.monotonic()
            await exchange.publish(message, routing_key=queue, timeout=30)

    async def one_by_one(self, queue: str, ids: list[str], encode: Encoder, within: float) -> None:
        """Publish a job, wait for its reply, then the next one."""
        assert self.plain is not None
        assert self._batch is not None
        exchange = self.plain.default_exchange
        for job_id in ids:
            self._batch.progress.clear()
            self._batch.sent[job_id] = time.monotonic()
            await exchange.publish(encode(job_id, self.reply_to), routing_key=queue, timeout=30)
            async with asyncio.timeout(within):
                while job_id not in self._batch.arrived:
                    await self._batch.progress.wait()
                    self._batch.progress.clear()

    def _on_reply(self, message: AbstractIncomingMessage) -> None:
        now = time.monotonic()
        batch = self._batch
        key = message.correlation_id or ""
        if batch is None or key not in batch.expected or key in batch.arrived:
            if batch is not None:
                batch.unexpected += 1
            return
        batch.arrived[key] = now
        batch.progress.set()
        if not self._check(message.body):
            batch.wrong += 1
        count = len(batch.arrived)
        if count == 1 and batch.on_first is not None:
            batch.on_first()
        if batch.on_count is not None and count == batch.on_count[0]:
            batch.on_count[1]()
        if count == len(batch.expected):
            if batch.on_last is not None:
                batch.on_last()
            batch.done.set()

    async def wait(self, batch: Replies, within: float) -> None:
        try:
            await asyncio.wait_for(batch.done.wait(), within)
        except TimeoutError:
            missing = len(batch.expected) - len(batch.arrived)
            raise RuntimeError(
                f"{missing} of {len(batch.expected)} replies missing after {within:.0f} s"
            ) from None

    async def delete(self, queues: list[str], exchanges: tuple[str, ...] | list[str] = ()) -> None:
        """Delete queues and exchanges (each on a channel of its own: a failure closes it)."""
        assert self._connection is not None
        for kind, names in (("queue", queues), ("exchange", exchanges)):
            for name in names:
                with contextlib.suppress(Exception):
                    channel = await self._connection.channel(publisher_confirms=False)
                    try:
                        if kind == "queue":
                            await channel.queue_delete(name, timeout=10)
                        else:
                            await channel.exchange_delete(name, timeout=10)
                    finally:
                        await channel.close()
                (self.queues if kind == "queue" else self.exchanges).discard(name)

    async def close(self) -> None:
        """Delete every queue and exchange the run declared and not yet deleted, then close."""
        if self._connection is None:
            return
        with contextlib.suppress(Exception):
            await self.delete(sorted(self.queues), sorted(self.exchanges))
        with contextlib.suppress(Exception):
            await self._connection.close()
