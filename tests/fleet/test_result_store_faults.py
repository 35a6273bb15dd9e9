"""The result store over real Redis with one fault injected at a time (issue 25, point 6): a
reply handler that raises, an opening of the batcher's connection that fails after `connect()`,
an opening that never ends, and a store call that stalls with the batcher's own timers out of
play. Each time the waiting callers fail fast, the store answers from memory (the fallback),
and the next calls are answered by Redis again; none hangs, and the link reports what it is."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection

from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_until
from worker.observability.metrics import Metrics
from worker.stores.link import RedisLink, RedisUnavailable
from worker.stores.memory_results import MemoryResultStore
from worker.stores.pipe import OnReply, Pipe, Reply
from worker.stores.redis_results import WAIT_TIMEOUTS, RedisResultStore

pytestmark = pytest.mark.asyncio

Opened = tuple[RedisLink, RedisResultStore, MemoryResultStore]
Stores = Callable[..., Awaitable[Opened]]


@pytest.fixture
async def stores() -> AsyncIterator[Stores]:
    """`await stores(url, prefix, redis_timeout=0.5)`: a started link, its result store and the
    store's memory, closed at the end of the test."""
    made: list[Opened] = []

    async def make(url: str, prefix: str, redis_timeout: float = 0.5) -> Opened:
        link = RedisLink(url, prefix, Metrics(), timeout=redis_timeout, retry_every=0.2)
        await link.start()
        memory = MemoryResultStore(100, 60)
        made.append((link, RedisResultStore(link, memory, 60), memory))
        return made[-1]

    yield make
    for link, store, _ in made:
        await store.close()
        await link.close()


async def _back(link: RedisLink) -> None:
    async def available() -> bool:
        return link.available

    await wait_until(available, 10, "the link back on Redis")


async def test_a_reply_handler_that_raises_fails_its_own_caller_and_the_connection_goes_on(
    redis_url: str, redis_prefix: str, stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    link, store, memory = await stores(redis_url, redis_prefix)
    client = aioredis.from_url(redis_url)
    try:
        assert await store.bind("warm", b"fp-warm") == (None, None)  # the connection is open
        await memory.put("j", b"known here")
        batch: Any = store._batch
        reads = batch._on_values

        def unreadable(waiting: Any) -> OnReply:
            handler: OnReply = reads(waiting)

            def on_reply(reply: Reply) -> None:
                if not isinstance(reply, RedisUnavailable):
                    raise ValueError("a reply this handler cannot read")
                handler(reply)

            return on_reply

        monkeypatch.setattr(batch, "_on_values", unreadable)
        started = time.monotonic()
        assert await asyncio.wait_for(store.get("j"), 10) == b"known here"  # from memory
        took = time.monotonic() - started
        monkeypatch.undo()
        assert took < link.timeout, f"the caller waited {took:.2f} s for a reply it had"
        assert link.available  # a handler's fault is no outage: /readyz stays true, rightly
        # The connection's bookkeeping is whole: the calls after it are answered by Redis.
        claims = [store.bind(f"k{i}", f"fp-{i}".encode()) for i in range(3)]
        assert await asyncio.wait_for(asyncio.gather(*claims), 5) == [(None, None)] * 3
        await store.put("r", b"stored")
        assert await asyncio.wait_for(store.get("r"), 5) == b"stored"
        assert await client.get(f"{redis_prefix}claim:k2") == b"fp-2"
        assert await client.get(f"{redis_prefix}result:r") == b"stored"
        assert link.available
        assert link.outages == 0
    finally:
        await client.aclose()


class _StreamsMoved(Connection):
    """redis-py as after an upgrade that moved the connection's streams: `connect()` works,
    then `_reader` is not where stores/pipe.py reads it."""

    async def connect(self) -> None:
        await super().connect()
        del self._reader


async def test_an_opening_that_fails_after_connect_fails_its_callers_at_once_and_the_next_opens(
    redis_url: str, redis_prefix: str, stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    link, store, _ = await stores(redis_url, redis_prefix)
    client = aioredis.from_url(redis_url)
    try:
        monkeypatch.setattr(link.client.connection_pool, "connection_class", _StreamsMoved)
        started = time.monotonic()
        claimed = await asyncio.wait_for(store.bind("a", b"fp-a"), 10)
        took = time.monotonic() - started
        monkeypatch.undo()
        assert claimed == (None, None)  # this process's own binding: the fallback
        assert took < link.timeout, f"the caller waited {took:.2f} s for a failed opening"
        assert not link.available
        await _back(link)
        # What Redis missed is written back, and the next batch opens a connection again.
        assert await client.get(f"{redis_prefix}claim:a") == b"fp-a"
        started = time.monotonic()
        assert await asyncio.wait_for(store.bind("b", b"fp-b"), 10) == (None, None)
        took = time.monotonic() - started
        assert took < link.timeout, f"{took:.2f} s: the batcher did not open a new connection"
        assert await client.get(f"{redis_prefix}claim:b") == b"fp-b"
        assert link.available
        assert link.outages == 1
    finally:
        await client.aclose()


async def test_callers_waiting_for_a_connection_that_never_opens_fail_in_the_batchers_time(
    redis_url: str, redis_prefix: str, stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `connect()` that swallows its cancellation (its own timeout cannot end it): the batches
    waiting for it fail within the batcher's timeout of their sending, and the next batch after
    the link is back opens a connection of its own instead of waiting for that one."""
    link, store, _ = await stores(redis_url, redis_prefix)
    client = aioredis.from_url(redis_url)
    released = asyncio.Event()

    class Hangs(Connection):
        async def connect(self) -> None:
            while not released.is_set():
                with contextlib.suppress(asyncio.CancelledError):
                    await released.wait()
            raise ConnectionError("let go at the end of the test")

    try:
        monkeypatch.setattr(link.client.connection_pool, "connection_class", Hangs)
        started = time.monotonic()
        claimed = await asyncio.wait_for(store.bind("a", b"fp-a"), 10)
        took = time.monotonic() - started
        monkeypatch.undo()
        assert claimed == (None, None)  # the fallback's
        assert not link.available
        # The batcher's bound (2 timeouts from its sending), not the store's (WAIT_TIMEOUTS).
        assert took < link.timeout * WAIT_TIMEOUTS, f"the caller waited {took:.2f} s"
        await _back(link)
        started = time.monotonic()
        assert await asyncio.wait_for(store.bind("b", b"fp-b"), 10) == (None, None)
        took = time.monotonic() - started
        assert took < link.timeout, f"{took:.2f} s: the batcher waited for the old opening"
        assert await client.get(f"{redis_prefix}claim:b") == b"fp-b"
        assert link.available
    finally:
        released.set()
        await client.aclose()


async def test_a_store_call_that_stalls_falls_back_within_its_own_bound(
    private_redis: RedisServer, stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis stopped (SIGSTOP: the connection stays open, nothing comes back) while the
    batcher's own timers are out of play: the store's call still ends, from memory, within
    its own bound of SFWORKER_REDIS_TIMEOUT_SECONDS, and the link falls back."""
    server = private_redis
    assert server.proc is not None
    link, store, memory = await stores(server.url, "t:", redis_timeout=0.3)
    monkeypatch.setattr(Pipe, "_expired", lambda self, batch: None)
    try:
        assert await store.bind("warm", b"fp") == (None, None)  # the connection is open
        await memory.put("a", b"known here")
        os.kill(server.proc.pid, signal.SIGSTOP)
        started = time.monotonic()
        assert await asyncio.wait_for(store.get("a"), 10) == b"known here"
        took = time.monotonic() - started
        assert not link.available
        bound = link.timeout * WAIT_TIMEOUTS
        assert bound <= took < bound * 1.25 + link.timeout, f"{took:.2f} s for a {bound} s bound"
        os.kill(server.proc.pid, signal.SIGCONT)
        await _back(link)
    finally:
        if server.proc.poll() is None:
            os.kill(server.proc.pid, signal.SIGCONT)
