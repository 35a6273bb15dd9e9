"""The result store's batcher (stores/batch.py) on its own pipelined connection (stores/pipe.py),
against a real Redis: every caller of a tick gets its own answer from one write, a script Redis
forgot is sent again by its source, and a Redis that stalls, dies or answers with an error
switches the link to fallback with every waiting command failed, never left hanging."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_until
from worker.observability.metrics import Metrics
from worker.stores.batch import BIND_SCRIPT, TickBatch
from worker.stores.link import RedisLink, RedisUnavailable

pytestmark = pytest.mark.asyncio


Batcher = Callable[..., Awaitable[tuple[RedisLink, TickBatch]]]


@pytest.fixture
async def batcher() -> AsyncIterator[Batcher]:
    """`await batcher(url, prefix, redis_timeout=0.5)`: a started link and its batcher, both closed
    at the end of the test."""
    made: list[tuple[RedisLink, TickBatch]] = []

    async def make(
        url: str, prefix: str, redis_timeout: float = 0.5
    ) -> tuple[RedisLink, TickBatch]:
        link = RedisLink(url, prefix, Metrics(), timeout=redis_timeout, retry_every=0.2)
        await link.start()
        made.append((link, TickBatch(link)))
        return made[-1]

    yield make
    for link, batch in made:
        await batch.close()
        await link.close()


async def _commands(client: aioredis.Redis, name: str) -> int:
    stats = await client.info("commandstats")
    return int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))


async def test_a_ticks_claims_reads_and_writes_each_get_their_own_answer(
    redis_url: str, redis_prefix: str, batcher: Batcher
) -> None:
    _, batch = await batcher(redis_url, redis_prefix)
    client = aioredis.from_url(redis_url)
    try:
        await client.set(f"{redis_prefix}result:b", b"stored-b")
        await client.set(f"{redis_prefix}claim:c", b"someone-else")
        # One tick: 3 claims, 2 lookups, 2 writes, issued without waiting in between.
        futures = [
            batch.bind(
                f"{redis_prefix}claim:{job}",
                b"mine-" + job.encode(),
                60_000,
                f"{redis_prefix}result:{job}",
            )
            for job in ("a", "b", "c")
        ]
        lookups = [batch.get(f"{redis_prefix}result:b"), batch.get(f"{redis_prefix}result:x")]
        writes = [batch.set(f"{redis_prefix}result:{k}", b"v-" + k.encode(), 60_000) for k in "yz"]
        claimed = await asyncio.gather(*futures)
        assert claimed == [(None, None), (None, b"stored-b"), (b"someone-else", None)]
        assert await asyncio.gather(*lookups) == [b"stored-b", None]
        assert await asyncio.gather(*writes) == [None, None]
        # What the claims bound and the writes wrote is in Redis, with their expiries.
        assert await client.get(f"{redis_prefix}claim:a") == b"mine-a"
        assert await client.get(f"{redis_prefix}claim:c") == b"someone-else"  # kept
        assert await client.get(f"{redis_prefix}result:z") == b"v-z"
        assert 0 < await client.pttl(f"{redis_prefix}claim:a") <= 60_000
        assert 0 < await client.pttl(f"{redis_prefix}result:y") <= 60_000
    finally:
        await client.aclose()


async def test_a_script_redis_forgot_is_sent_again_by_its_source(
    private_redis: RedisServer, batcher: Batcher
) -> None:
    link, batch = await batcher(private_redis.url, "t:")
    client = aioredis.from_url(private_redis.url)
    try:
        keys = ["t:claim:j", "t:result:j"]
        assert await batch.eval(BIND_SCRIPT, keys, [b"f1", 60_000]) == [None, None]
        await client.script_flush()  # as after a restart or a failover
        before = await _commands(client, "eval")
        assert await batch.eval(BIND_SCRIPT, keys, [b"f2", 60_000]) == [b"f1", None]
        assert await _commands(client, "eval") == before + 1  # by source, once
        assert link.available
    finally:
        await client.aclose()


async def test_a_stalled_redis_fails_the_waiting_commands_and_switches_to_fallback(
    private_redis: RedisServer, batcher: Batcher
) -> None:
    link, batch = await batcher(private_redis.url, "t:", redis_timeout=0.3)
    assert private_redis.proc is not None
    try:
        assert await batch.get("t:result:warm") is None  # the connection is open
        os.kill(private_redis.proc.pid, signal.SIGSTOP)
        waiting = [batch.get("t:result:a"), batch.set("t:result:b", b"v", 60_000)]
        outcomes = await asyncio.wait_for(
            asyncio.gather(*waiting, return_exceptions=True), timeout=5
        )
        assert all(isinstance(o, RedisUnavailable) for o in outcomes), outcomes
        assert not link.available
        # While it is down, nothing waits: a command fails at once.
        with pytest.raises(RedisUnavailable):
            await asyncio.wait_for(batch.get("t:result:c"), timeout=0.1)
        os.kill(private_redis.proc.pid, signal.SIGCONT)

        async def back() -> bool:
            return link.available

        await wait_until(back, 10, "the link back on Redis")
        # A new connection: the stalled one may hold a stale reply.
        assert await batch.set("t:result:d", b"after", 60_000) is None
        assert await batch.get("t:result:d") == b"after"
    finally:
        if private_redis.proc is not None and private_redis.proc.poll() is None:
            os.kill(private_redis.proc.pid, signal.SIGCONT)


async def test_a_killed_redis_fails_the_waiting_commands_and_a_restarted_one_is_used_again(
    private_redis: RedisServer, batcher: Batcher
) -> None:
    link, batch = await batcher(private_redis.url, "t:")
    assert await batch.get("t:result:warm") is None
    private_redis.kill()
    outcomes = await asyncio.wait_for(
        asyncio.gather(batch.get("t:result:a"), return_exceptions=True), timeout=5
    )
    assert isinstance(outcomes[0], RedisUnavailable)
    assert not link.available
    private_redis.launch()

    async def back() -> bool:
        return link.available

    await wait_until(back, 20, "the link back on the restarted Redis")
    claimed = await batch.bind("t:claim:j", b"f", 60_000, "t:result:j")
    assert claimed == (None, None)


async def test_an_error_reply_fails_the_command_and_switches_to_fallback(
    redis_url: str, redis_prefix: str, batcher: Batcher
) -> None:
    link, batch = await batcher(redis_url, redis_prefix)
    client = aioredis.from_url(redis_url)
    try:
        await client.hset(f"{redis_prefix}claim:h", "field", "value")  # not a string: WRONGTYPE
        good = batch.get(f"{redis_prefix}result:other")
        bad = batch.bind(f"{redis_prefix}claim:h", b"f", 60_000, f"{redis_prefix}result:h")
        assert await good is None  # its neighbour in the pipeline is answered
        with pytest.raises(RedisUnavailable):
            await bad
        assert not link.available  # as for link.call: this Redis cannot hold the claims
    finally:
        await client.aclose()


async def test_a_connection_the_server_closes_while_idle_is_opened_again_without_fallback(
    tmp_path: Path, batcher: Batcher
) -> None:
    server = RedisServer(tmp_path, "--timeout", "1")  # idle clients closed after 1 s
    await server.start()
    link, batch = await batcher(server.url, "t:")
    client = aioredis.from_url(server.url)
    try:
        assert await batch.set("t:result:a", b"1", 60_000) is None
        ids = await _client_ids(client)

        async def closed_by_the_server() -> bool:
            return not (ids & await _client_ids(client))

        await wait_until(closed_by_the_server, 10, "Redis closing the idle connection")
        assert await batch.get("t:result:a") == b"1"  # on a new connection
        assert link.available
        assert link.outages == 0
    finally:
        await client.aclose()
        server.kill()


async def _client_ids(client: aioredis.Redis) -> set[str]:
    """The ids of the server's other clients (the batcher's, here)."""
    me = await client.client_id()
    return {str(c["id"]) for c in await client.client_list() if str(c["id"]) != str(me)}
