"""An org's API usage as last seen, and where the fleet shares it: `UsageReading` (what the client
reads from every response's `Sforce-Limit-Info`, `worker.salesforce.usage` parses it), the
`UsageBoard` protocol, `LocalBoard` (one process: nothing shared) and `RedisUsageBoard` (the
fleet: the newest reading of each account)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import orjson

from worker.stores.link import RedisLink, RedisUnavailable


@dataclass(frozen=True)
class UsageReading:
    used: int
    limit: int
    app_used: int | None = None
    app_limit: int | None = None
    app_name: str | None = None

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)

    @property
    def fraction_used(self) -> float:
        return self.used / self.limit if self.limit else 0.0


class UsageBoard(Protocol):
    """Where readings are shared: nowhere (one process) or Redis (the fleet)."""

    @property
    def fleet(self) -> bool:
        """Readings are meant to be shared (Redis configured, reachable or not)."""
        ...

    @property
    def shared(self) -> bool:
        """Readings are shared right now (Redis reachable)."""
        ...

    async def publish(self, account: str, reading: UsageReading, at: float) -> None: ...

    async def read(self, account: str) -> tuple[UsageReading, float] | None: ...

    async def take_probe_turn(self, account: str, lease: float) -> bool: ...


class LocalBoard:
    fleet = False
    shared = False

    async def publish(self, account: str, reading: UsageReading, at: float) -> None:
        return None

    async def read(self, account: str) -> tuple[UsageReading, float] | None:
        return None

    async def take_probe_turn(self, account: str, lease: float) -> bool:
        return True


# KEYS: the reading, its time; ARGV: the reading, its time, ttl s. Only a newer reading goes in.
_PUBLISH_USAGE = """
local at = tonumber(redis.call('GET', KEYS[2]) or '0')
if at and at >= tonumber(ARGV[2]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
return 1
"""
_USAGE_TTL_SECONDS = 3600


class RedisUsageBoard:
    """The newest `Sforce-Limit-Info` reading of each account, for the whole fleet: a reading
    older than the one on the board (a worker sharing late) never replaces it."""

    fleet = True

    def __init__(self, link: RedisLink) -> None:
        self._link = link
        self._publish = link.script(_PUBLISH_USAGE)

    async def publish(self, account: str, reading: UsageReading, at: float) -> None:
        keys = [self._link.key("usage", account), self._link.key("usage-at", account)]
        value = orjson.dumps({"used": reading.used, "limit": reading.limit, "at": at})
        args: list[bytes | str | int] = [value, repr(at), _USAGE_TTL_SECONDS]
        await self._link.attempt(lambda r: self._publish(keys=keys, args=args, client=r))

    async def read(self, account: str) -> tuple[UsageReading, float] | None:
        key = self._link.key("usage", account)
        try:
            raw = await self._link.call(lambda r: r.get(key))
        except RedisUnavailable:
            return None
        if raw is None:
            return None
        data = orjson.loads(raw)
        return UsageReading(used=int(data["used"]), limit=int(data["limit"])), float(data["at"])

    async def take_probe_turn(self, account: str, lease: float) -> bool:
        """One worker of the fleet reads /limits per lease."""
        key = self._link.key("limits-probe", account)
        try:
            return bool(
                await self._link.call(lambda r: r.set(key, b"1", nx=True, px=int(lease * 1000)))
            )
        except RedisUnavailable:
            return True

    @property
    def shared(self) -> bool:
        return self._link.available
