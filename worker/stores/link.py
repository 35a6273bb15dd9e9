"""The one Redis connection of a process: its key prefix, its timeouts and the fallback switch.

Every fleet store goes through `RedisLink.call`. When Redis does not answer (refused, reset, or
slower than `SFWORKER_REDIS_TIMEOUT_SECONDS`), the link switches to fallback: the gauge
`sfworker_redis_fallback` reads 1, one warning is logged, and callers get `RedisUnavailable` at
once (no command is tried) so they use their in-process state. A monitor pings Redis every
`SFWORKER_REDIS_RETRY_SECONDS`; when it answers, the link is available again, the restore hooks
run (e.g. a refresh token rotated during the outage is written back), and the gauge reads 0.

Behind Sentinel (sentinels.py) every connection asks the sentinels for the primary; an outage's
end and a failover announcement drop the connections, so the next ones go to the new primary.
Writes that must survive a failover go through `durable` (a replica confirms them, replicas.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import AuthenticationError, AuthorizationError, RedisError

from worker.observability.metrics import Metrics
from worker.settings import Settings
from worker.stores.replicas import NotConfirmed, Replicas
from worker.stores.sealing import Seal, seal_from_settings
from worker.stores.sentinels import Announcements, SentinelConfig, forget_primary, primary_client
from worker.tasks import stop

log = logging.getLogger(__name__)

T = TypeVar("T")
Redis = aioredis.Redis
RestoreHook = Callable[[], Awaitable[None]]
REPLICAS_EVERY = 5.0  # while available, the primary's replicas are read again this often


class RedisUnavailable(Exception):
    """Redis cannot be used right now: use the in-process state instead."""


def from_settings(settings: Settings, metrics: Metrics) -> RedisLink:
    """The link of a process whose settings name a Redis (ConfigError: no key, see sealing.py)."""
    assert settings.redis_url is not None
    sentinels = None
    if settings.redis_sentinels is not None:
        password = settings.redis_sentinel_password
        sentinels = SentinelConfig(
            settings.sentinels(),
            settings.redis_sentinel_master,
            password.get_secret_value() if password is not None else None,
        )
    return RedisLink(
        settings.redis_url.get_secret_value(),
        settings.redis_prefix,
        metrics,
        timeout=settings.redis_timeout_seconds,
        retry_every=settings.redis_retry_seconds,
        seal=seal_from_settings(settings),
        sentinels=sentinels,
        wait_replicas=settings.redis_wait_replicas,
    )


def describe(url: str) -> str:
    """host:port/db of a Redis URL, never its credentials."""
    parts = urlsplit(url)
    db = parts.path.lstrip("/") or "0"
    return f"{parts.hostname or '?'}:{parts.port or 6379}/{db}"


class RedisLink:
    def __init__(
        self,
        url: str,
        prefix: str,
        metrics: Metrics,
        *,
        timeout: float = 0.5,
        retry_every: float = 2.0,
        seal: Seal | None = None,
        sentinels: SentinelConfig | None = None,
        wait_replicas: int | None = None,
    ) -> None:
        self.prefix = prefix
        # What the stores seal their values with (sealing.py); plain text only when chosen.
        self.seal = seal or Seal.plaintext()
        self.seal.on_unreadable = lambda _key_id: metrics.redis_unreadable.inc()
        self._metrics = metrics
        self._timeout = timeout
        self._retry_every = retry_every
        # Writes that must survive a failover wait for this many replicas (replicas.py).
        self.replicas = Replicas(wait_replicas, timeout)
        options: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "health_check_interval": 10,
            "retry": Retry(NoBackoff(), 0),
            "max_connections": 200,
        }
        self._announcements: Announcements | None = None
        self._sentinel: Sentinel | None = None
        self._listening: asyncio.Task[None] | None = None
        if sentinels is None:
            self.where = describe(url)
            self.client: Redis = aioredis.from_url(url, **options)
        else:
            self.where = sentinels.describe()
            sentinel, self.client = primary_client(url, sentinels, **options)
            self._sentinel = sentinel
            self._announcements = Announcements(sentinel, sentinels, self.moved, retry_every)
        self._moves = 0
        self._available = True
        self._restoring = False
        self._outages = 0
        self._ping_error: BaseException | None = None
        self._restore_hooks: list[RestoreHook] = []
        self._monitor: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._back = asyncio.Event()  # set while available
        self._back.set()

    # --- keys and scripts ------------------------------------------------------------------

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def script(self, source: str) -> AsyncScript:
        return self.client.register_script(source)

    # --- the switch ------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        return self._available

    @property
    def usable(self) -> bool:
        """Commands may be sent: available, or restoring (the restore hooks write)."""
        return self._available or self._restoring

    @property
    def timeout(self) -> float:
        return self._timeout

    @property
    def outages(self) -> int:
        """How many times the link fell back: a connection opened before the last one may be
        dead."""
        return self._outages

    @property
    def epoch(self) -> int:
        """Changes with every outage and every failover: a connection opened in an older epoch
        may be dead, or on a demoted primary."""
        return self._outages + self._moves

    def fail(self, exc: BaseException) -> None:
        """A command outside `call` (the batcher's own connection) found Redis unusable."""
        self._fall_back(exc)

    async def wait_available(self, within: float) -> bool:
        """Wait (at most `within` seconds) until Redis can be used; whether it can."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self._back.wait()
        return self._available

    def on_restore(self, hook: RestoreHook) -> None:
        self._restore_hooks.append(hook)

    async def call(self, command: Callable[[Redis], Awaitable[T]]) -> T:
        """Run one command (or script) on Redis; RedisUnavailable when it cannot be used."""
        if not self.usable:
            raise RedisUnavailable(self.where)
        try:
            async with asyncio.timeout(self._timeout * 2):
                return await command(self.client)
        except (RedisError, TimeoutError, OSError) as exc:
            # Not only refused or slow: a Redis that answers READONLY (a demoted primary after
            # a failover) or OOM (full, noeviction) cannot hold the fleet's state either.
            self._fall_back(exc)
            raise RedisUnavailable(self.where) from None

    async def durable(self, command: Callable[[Redis], Awaitable[T]]) -> T:
        """A write that must survive a failover: confirmed by the replicas `replicas` asks for
        before it returns (replicas.py); RedisUnavailable when none confirms in time."""
        return await self.call(lambda r: self.replicas.write(r, command))

    async def _check_replicas(self) -> None:
        """Read the primary's replicas again (one that joined, or left, since)."""
        with contextlib.suppress(RedisError, TimeoutError, OSError):
            async with asyncio.timeout(self._timeout * 2):
                await self.replicas.detect(self.client)

    async def moved(self, where: str) -> None:
        """The sentinels announced a new primary: connections go back to them."""
        self._moves += 1
        forget_primary(self.client)
        log.warning("Redis primary moved (failover)", extra={"redis": self.where, "to": where})
        with contextlib.suppress(Exception):
            await self.client.connection_pool.disconnect(inuse_connections=False)
        await self._check_replicas()

    async def attempt(self, command: Callable[[Redis], Awaitable[Any]]) -> None:
        """Run a write that may be lost with Redis (a lease or a TTL covers it)."""
        with contextlib.suppress(RedisUnavailable):
            await self.call(command)

    def _fall_back(self, exc: BaseException) -> None:
        self._restoring = False
        if not self._available:
            return
        self._available = False
        self._outages += 1
        self._back.clear()
        self._metrics.redis_fallback.set(1)
        if isinstance(exc, AuthenticationError | AuthorizationError):
            reason = "Redis refused the user or password of SFWORKER_REDIS_URL"
        elif isinstance(exc, NotConfirmed):
            reason = "no Redis replica confirmed a write that must survive a failover"
        else:
            reason = "Redis unreachable"
        log.warning(
            f"{reason}: working alone with in-process state until it answers again",
            extra={"redis": self.where, "error": type(exc).__name__},
        )
        self._wake.set()

    async def _ping(self) -> bool:
        """Redis answers and takes writes (a PING alone passes on a read-only replica), and the
        replicas the fleet's writes wait for confirm one."""
        key = self.key("ping")
        try:
            async with asyncio.timeout(self._timeout * 3):
                await self.replicas.detect(self.client)
                wrote = self.replicas.write(self.client, lambda r: r.set(key, b"1", px=60_000))
                return bool(await wrote)
        except (RedisError, TimeoutError, OSError) as exc:
            self._ping_error = exc
            return False

    async def _restore(self) -> None:
        """Run the restore hooks (they may use Redis; nothing else does yet), then switch."""
        # Connections of the pool opened before the outage are dead: drop them all at once, not
        # one failed command (and one more fallback) each.
        with contextlib.suppress(Exception):
            await self.client.connection_pool.disconnect()
        self._restoring = True
        try:
            for hook in self._restore_hooks:
                try:
                    await hook()
                except RedisUnavailable:
                    return  # it went away again; the monitor goes on
                except Exception:
                    log.exception("a Redis restore step failed")
        finally:
            restored = self._restoring
            self._restoring = False
        if restored:
            self._available = True
            self._back.set()
            self._metrics.redis_fallback.set(0)
            log.warning("Redis answers again: fleet state back in use", extra={"redis": self.where})

    async def _watch(self) -> None:
        while True:
            if self._available:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(REPLICAS_EVERY):
                        await self._wake.wait()
                if self._available and not self._wake.is_set():
                    await self._check_replicas()
                    continue
            await asyncio.sleep(self._retry_every)
            if not self._available and await self._ping():
                await self._restore()

    # --- life ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Check Redis once (a worker starts in fallback when it is down) and start the
        monitor."""
        if not await self._ping():
            self._fall_back(self._ping_error or ConnectionError("no answer at start"))
        else:
            self._metrics.redis_fallback.set(0)
            log.info("fleet state in Redis", extra={"redis": self.where, "prefix": self.prefix})
        self._monitor = asyncio.create_task(self._watch(), name="redis-monitor")
        if self._announcements is not None:
            self._listening = asyncio.create_task(
                self._announcements.run(), name="redis-sentinel-announcements"
            )

    async def close(self) -> None:
        if self._monitor is not None:
            await stop(self._monitor)
        if self._listening is not None:
            await stop(self._listening)
        with contextlib.suppress(Exception):
            await self.client.aclose()
        if self._sentinel is not None:
            with contextlib.suppress(Exception):
                await self._sentinel.aclose()


def as_text(value: Any) -> str | None:
    """A Redis reply (bytes) as text, None stays None."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode()
    return str(value)
