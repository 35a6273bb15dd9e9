"""Issue 30, points 1 and 2: Redis behind Sentinel. The link asks the sentinels for the
primary and follows a failover; the writes that must survive one (job-id bindings, insert
markers, the token lock, a rotated refresh token) wait for the replica, and a write the replica
does not confirm sends the worker to its fallback, as an unreachable Redis does."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import pytest
import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.asyncio.connection import SSLConnection
from redis.asyncio.sentinel import SentinelConnectionPool

from tests.fleet.helpers import Fleet, insert, searches
from tests.support.metrics import metric
from tests.support.sentinel_cluster import MASTER, SentinelCluster
from tests.support.waiting import wait_until
from worker.observability.metrics import Metrics
from worker.settings import Settings
from worker.stores.link import RedisLink, RedisUnavailable, from_settings
from worker.stores.memory_results import MemoryResultStore
from worker.stores.redis_results import RedisResultStore
from worker.stores.sentinels import SentinelConfig

pytestmark = pytest.mark.timeout(120)


def _link(cluster: SentinelCluster, **kw: Any) -> RedisLink:
    config = SentinelConfig([("127.0.0.1", g.port) for g in cluster.guards], MASTER)
    return RedisLink(
        "redis://",
        "sentinel-test:",
        Metrics(),
        timeout=0.5,
        retry_every=0.3,
        sentinels=config,
        **kw,
    )


async def _value(port: int, key: str) -> bytes | None:
    client = aioredis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
    try:
        value: bytes | None = await client.get(key)
        return value
    finally:
        await client.aclose()


async def test_writes_that_must_survive_a_failover_wait_for_the_replica(
    sentinel_cluster: SentinelCluster,
) -> None:
    link = _link(sentinel_cluster)
    store = RedisResultStore(link, MemoryResultStore(100, 60), 60)
    await link.start()
    await store.start()
    try:
        assert link.replicas.needed == 1  # the primary has a replica: writes wait for it
        await link.durable(lambda r: r.set(link.key("k"), b"v"))
        # Confirmed: the replica has it when the call returns.
        assert await _value(sentinel_cluster.replica.port, link.key("k")) == b"v"
        assert (await store.bind("bound-before", b"fp")).held is None
        assert await store.mark_insert_sent("insert-before")
        assert not store.blind()

        replica = sentinel_cluster.replica.proc
        assert replica is not None
        os.kill(replica.pid, signal.SIGSTOP)  # the replica stops confirming
        try:
            # A result does not wait: it is written.
            await store.put("result-during", b"r")
            assert link.available
            # A job-id binding (the batch's WAIT) is not confirmed: the worker falls back.
            assert (await store.bind("bound-during", b"fp")).held is None  # its own, in memory
            assert not link.available
            assert store.blind()  # a redelivered insert is OUTCOME_UNKNOWN, not sent again
            with pytest.raises(RedisUnavailable):
                await link.durable(lambda r: r.set(link.key("k"), b"w"))
        finally:
            os.kill(replica.pid, signal.SIGCONT)

        async def back() -> bool:
            return link.available

        await wait_until(back, 15, "the link back once the replica confirms again")
        # What the fallback kept is written back, confirmed.
        binding = link.key("claim", "bound-during")
        assert await _value(sentinel_cluster.replica.port, binding) is not None
    finally:
        await store.close()
        await link.close()


async def test_a_marker_no_replica_confirms_is_not_trusted(
    sentinel_cluster: SentinelCluster,
) -> None:
    """The insert marker's WAIT rides in the batch with it; unconfirmed, the worker is blind
    (the fallback's rule) until the replica confirms again."""
    link = _link(sentinel_cluster)
    store = RedisResultStore(link, MemoryResultStore(100, 60), 60)
    await link.start()
    try:
        replica = sentinel_cluster.replica.proc
        assert replica is not None
        os.kill(replica.pid, signal.SIGSTOP)
        try:
            assert await store.mark_insert_sent("marked-during")  # this process's, in memory
            assert store.blind()
        finally:
            os.kill(replica.pid, signal.SIGCONT)
    finally:
        await store.close()
        await link.close()


async def test_the_link_follows_a_manual_failover(sentinel_cluster: SentinelCluster) -> None:
    link = _link(sentinel_cluster)
    await link.start()
    try:
        old = await sentinel_cluster.primary_port()
        await link.durable(lambda r: r.set(link.key("before"), b"1"))
        await sentinel_cluster.failover()
        new = await sentinel_cluster.wait_new_primary(old)

        async def on_the_new_primary() -> bool:
            try:
                await link.call(lambda r: r.set(link.key("after"), b"1"))
            except RedisUnavailable:
                return False
            return await _value(new, link.key("after")) == b"1"

        await wait_until(on_the_new_primary, 15, "writes on the new primary")
        assert await _value(new, link.key("before")) == b"1"  # confirmed before: kept
    finally:
        await link.close()


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_a_worker_follows_a_manual_failover_without_a_restart_or_a_lost_job(
    fleet: Fleet, sentinel_cluster: SentinelCluster
) -> None:
    await fleet.simulator.seed("Account", [{"Name": "Acme"}])
    settings = fleet.configure(
        redis_url="redis://",
        redis_sentinels=sentinel_cluster.sentinels,
        redis_sentinel_master=MASTER,
        redis_prefix="sfworker-sentinel:",
        redis_retry_seconds=0.5,
    )
    (worker,) = await fleet.start(1, settings, prefetch=50)
    pid = worker.proc.pid
    assert await fleet.run_all(searches("warm", 5)) == ["ok"] * 5
    old = await sentinel_cluster.primary_port()

    batch: list[dict[str, Any]] = []

    async def steady_load() -> None:
        for i in range(120):
            body = insert(f"fo-insert-{i}") if i % 3 == 0 else searches(f"fo-search-{i}", 1)[0]
            batch.append(body)
            await fleet.jobs.publish(body)
            await asyncio.sleep(0.05)

    load = asyncio.create_task(steady_load())
    await asyncio.sleep(1.5)
    await sentinel_cluster.failover()
    new = await sentinel_cluster.wait_new_primary(old)
    await load
    statuses = await fleet.answers(batch)
    assert statuses == ["ok"] * len(batch), [
        r["error"] for r in fleet.jobs.results if r["status"] != "ok"
    ]
    records = await fleet.simulator.records("Case")
    subjects = [r["Subject"] for r in records if r["Subject"].startswith("fo-insert-")]
    assert len(subjects) == len(set(subjects)) == 40  # every insert once

    async def settled() -> bool:
        return metric(await worker.metrics(), "sfworker_redis_fallback") == 0.0

    await wait_until(settled, 15, "the worker on Redis again")
    after = searches("after", 5)
    assert await fleet.run_all(after) == ["ok"] * 5
    assert worker.proc.pid == pid
    assert worker.proc.poll() is None
    # The results of the jobs after the failover are on the new primary.
    client = aioredis.Redis(host="127.0.0.1", port=new, socket_timeout=2)
    try:
        stored = [k async for k in client.scan_iter(match="sfworker-sentinel:result:*after*")]
    finally:
        await client.aclose()
    assert len(stored) == 5


def test_sentinel_settings_need_no_url_and_keep_its_credentials_and_tls() -> None:
    """What `sfworker run` and `sfworker accounts check` build their link from."""
    bare = Settings(redis_sentinels="s1:26379, s2:26380", redis_plaintext=True)
    assert bare.redis_url is not None  # the fleet is on: a link is built
    assert bare.sentinels() == [("s1", 26379), ("s2", 26380)]
    link = from_settings(bare, Metrics())
    assert link.where == "sentinel:mymaster@s1:26379,s2:26380"
    secured = Settings(
        redis_url="rediss://:pw@ignored:1/3",
        redis_sentinels="s1:26379",
        redis_sentinel_master="prod",
        redis_sentinel_password="spw",
        redis_plaintext=True,
    )
    pool = from_settings(secured, Metrics()).client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "prod"
    assert issubclass(pool.connection_class, SSLConnection)
    assert (pool.connection_kwargs["password"], pool.connection_kwargs["db"]) == ("pw", 3)
    assert "host" not in pool.connection_kwargs  # the sentinels name it
    [sentinel] = pool.sentinel_manager.sentinels
    assert sentinel.connection_pool.connection_kwargs["password"] == "spw"
    with pytest.raises(ValidationError):
        Settings(redis_sentinels="no-port")
