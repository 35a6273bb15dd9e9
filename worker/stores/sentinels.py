"""Redis behind Sentinel: a client whose every connection asks the sentinels for the primary,
and the watch of their failover announcements.

SFWORKER_REDIS_SENTINELS names the sentinels, SFWORKER_REDIS_SENTINEL_MASTER the primary they
watch; SFWORKER_REDIS_URL, when set, gives the user, password, database and TLS (`rediss://`,
its `ssl_*` query parameters) of the primary, and TLS to the sentinels too; its host is not used.

A connection is opened on the primary the sentinels name at that moment (redis-py's
`SentinelConnectionPool`). What sends connections back to them: an outage of the link (a reset,
a timeout, a `READONLY` answer: the link falls back, and its return drops every connection, see
link.py) and the sentinels' `+switch-master` announcement, which the `Announcements` task reads
and hands to the link (`RedisLink.moved`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

SWITCH_MASTER = "+switch-master"
_TLS_ARGUMENTS = ("ssl_cert_reqs", "ssl_ca_certs", "ssl_ca_path", "ssl_check_hostname")


class SentinelConfig:
    """Where the sentinels are and what the primary is called (no secrets in its repr)."""

    def __init__(
        self, addresses: list[tuple[str, int]], master: str, password: str | None = None
    ) -> None:
        self.addresses = addresses
        self.master = master
        self.password = password

    def describe(self) -> str:
        where = ",".join(f"{host}:{port}" for host, port in self.addresses)
        return f"sentinel:{self.master}@{where}"


def primary_client(url: str, config: SentinelConfig, **options: Any) -> tuple[Sentinel, Any]:
    """The sentinels, and a client of the primary they name (`options`: timeouts, retry, pool
    size, as for a plain URL). The URL's host and port are ignored."""
    kwargs: dict[str, Any] = dict(parse_url(url))
    for ignored in ("host", "port", "path"):
        kwargs.pop(ignored, None)
    tls = kwargs.pop("connection_class", None) is SSLConnection
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": options.get("socket_timeout"),
        "socket_connect_timeout": options.get("socket_connect_timeout"),
    }
    if config.password is not None:
        sentinel_kwargs["password"] = config.password
    if tls:
        sentinel_kwargs["ssl"] = True
        sentinel_kwargs.update({k: kwargs[k] for k in _TLS_ARGUMENTS if k in kwargs})
    sentinel = Sentinel(config.addresses, sentinel_kwargs=sentinel_kwargs)
    client = sentinel.master_for(
        config.master,
        redis_class=aioredis.Redis,
        connection_pool_class=SentinelConnectionPool,
        ssl=tls,
        **kwargs,
        **options,
    )
    return sentinel, client


def forget_primary(client: aioredis.Redis) -> None:
    """The next connection asks the sentinels again (not the address they gave last)."""
    pool = client.connection_pool
    if isinstance(pool, SentinelConnectionPool):
        pool.master_address = None


class Announcements:
    """Listens to the sentinels' `+switch-master` (one sentinel at a time, the next when it
    fails) and calls `moved` when the primary of `config.master` changes."""

    def __init__(
        self,
        sentinel: Sentinel,
        config: SentinelConfig,
        moved: Callable[[str], Awaitable[None]],
        retry_every: float,
    ) -> None:
        self._sentinel = sentinel
        self._config = config
        self._moved = moved
        self._retry_every = retry_every

    async def run(self) -> None:
        turn = 0
        while True:
            node = self._sentinel.sentinels[turn % len(self._sentinel.sentinels)]
            turn += 1
            try:
                await self._listen(node)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, TimeoutError) as exc:
                log.debug("sentinel announcements lost", extra={"error": type(exc).__name__})
            await asyncio.sleep(self._retry_every)

    async def _listen(self, node: aioredis.Redis) -> None:
        pubsub = node.pubsub()
        try:
            await pubsub.subscribe(SWITCH_MASTER)
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is None:
                    await pubsub.ping()  # a sentinel gone silent fails here, the next is tried
                    continue
                data = message.get("data")
                text = data.decode() if isinstance(data, bytes) else str(data)
                name, _, where = text.partition(" ")
                if name == self._config.master:
                    await self._moved(where)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
