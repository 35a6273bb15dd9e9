"""Writes that must survive a failover: confirmed by a replica (`WAIT`) before the worker acts.

Redis replicates asynchronously: a write the primary acknowledged can be missing on the replica
Sentinel promotes. For an insert marker, a job-id binding, the token lock and a rotated refresh
token that loss is not a cache miss (an insert sent twice, a reused job id let through, a spent
refresh token replayed and the chain revoked), so these writes are followed, on the same
connection, by `WAIT <replicas> <timeout>`; the worker acts on them only once the replicas
confirm. A write no replica confirms in time raises `NotConfirmed` (a RedisError: the link falls
back, as when Redis does not answer). Results and usage readings, which can be recomputed, do
not wait.

How many: SFWORKER_REDIS_WAIT_REPLICAS, or, unset, 1 when the primary has replicas and 0 when it
has none (read with `ROLE` at start, after every outage and every failover).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

T = TypeVar("T")


class NotConfirmed(RedisError):
    """No replica confirmed a write in time: a failover now could lose it."""


class Replicas:
    """How many replicas a fleet write waits for, and the `WAIT` that confirms it."""

    def __init__(self, wanted: int | None, timeout: float) -> None:
        self._wanted = wanted
        self._detected = 0
        self.timeout_ms = max(1, int(timeout * 1000))

    @property
    def needed(self) -> int:
        """Replicas a durable write waits for (0: it does not wait)."""
        return self._detected if self._wanted is None else self._wanted

    async def detect(self, client: aioredis.Redis) -> None:
        """Read the primary's replicas (`ROLE`); only the automatic setting follows them."""
        if self._wanted is not None:
            return
        role: Any = await client.role()
        kind = role[0].decode() if isinstance(role[0], bytes) else str(role[0])
        count = len(role[2]) if kind == "master" and len(role) > 2 else 0
        needed = min(1, count)
        if needed != self._detected:
            log.info(
                "Redis writes that must survive a failover wait for a replica"
                if needed
                else "the Redis primary has no replica: writes do not wait for one",
                extra={"replicas": count, "wait": needed},
            )
        self._detected = needed

    def wait_command(self) -> tuple[str, int, int] | None:
        """The `WAIT` to append to a pipeline that holds a durable write (None: none needed)."""
        needed = self.needed
        return ("WAIT", needed, self.timeout_ms) if needed else None

    def check(self, reply: Any) -> None:
        """NotConfirmed unless `WAIT`'s reply (the replicas that confirmed) is enough."""
        if isinstance(reply, BaseException):
            raise reply
        if int(reply) < self.needed:
            raise NotConfirmed(
                f"{int(reply)} of {self.needed} replicas confirmed a write within "
                f"{self.timeout_ms} ms"
            )

    async def write(
        self, client: aioredis.Redis, command: Callable[[aioredis.Redis], Awaitable[T]]
    ) -> T:
        """Run `command` and, when replicas are needed, `WAIT` for them on the same connection
        in the same round trip (WAIT counts the writes of its own connection)."""
        wait = self.wait_command()
        if wait is None:
            return await command(client)
        pipe = client.pipeline(transaction=False)
        await command(pipe)
        pipe.execute_command(*wait)
        replies: list[Any] = await pipe.execute(raise_on_error=True)
        self.check(replies[-1])
        result: T = replies[0]
        return result
