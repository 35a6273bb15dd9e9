"""Limits the fleet shares through Redis: the concurrency cap of each account (a semaphore whose
slots are leases, so a dead worker cannot leak them) and the org's API usage as last seen."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson

from worker.config import Account
from worker.stores.link import RedisLink, RedisUnavailable
from worker.stores.slots import LocalSlots
from worker.stores.usage import UsageReading
from worker.tasks import Loop, stop

# A dead worker's slots free within a lease; a living one renews the leases of its slots.
SLOT_LEASE_MS = 6_000
_RENEW_SECONDS = SLOT_LEASE_MS / 3000

# KEYS: the account's slot set; ARGV: lease ms, cap, member. Server time: no clock skew.
_TAKE_SLOT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  return 1
end
return 0
"""
# KEYS: the account's slot set; ARGV: lease ms, members still held. Expired ones stay out.
_RENEW_SLOTS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 0
"""


class FleetSlots:
    """`max_concurrency` for the whole fleet: a sorted set of holders scored by lease expiry.
    The process's own semaphore comes first, so waiting jobs poll Redis only when the process
    itself has room. Without Redis, the process's cap alone applies."""

    def __init__(self, link: RedisLink) -> None:
        self._link = link
        self._local = LocalSlots()
        self._take = link.script(_TAKE_SLOT)
        self._renew = link.script(_RENEW_SLOTS)
        self._held: dict[str, set[str]] = {}
        self._renewer: asyncio.Task[None] | None = None
        self._renewing = Loop()

    @asynccontextmanager
    async def hold(self, account: Account) -> AsyncIterator[None]:
        async with self._local.hold(account):
            key = self._link.key("slots", account.name)
            member = await self._acquire(key, account.max_concurrency)
            if member is not None:
                self._held.setdefault(key, set()).add(member)
                if self._renewer is None:
                    self._renewer = asyncio.create_task(self._renew_leases(), name="slot-leases")
            try:
                yield
            finally:
                if member is not None:  # if Redis is gone, the lease frees it
                    self._held[key].discard(member)
                    await self._link.attempt(lambda r: r.zrem(key, member))

    async def _renew_leases(self) -> None:
        while self._renewing.running:
            await asyncio.sleep(_RENEW_SECONDS)
            for key, members in list(self._held.items()):
                if members:
                    await self._renew_one(key, [SLOT_LEASE_MS, *members])

    async def _renew_one(self, key: str, args: list[str | int]) -> None:
        await self._link.attempt(lambda r: self._renew(keys=[key], args=args, client=r))

    async def close(self) -> None:
        await stop(self._renewer, self._renewing)

    async def _acquire(self, key: str, cap: int) -> str | None:
        """A fleet slot (its member id), or None when Redis is out of reach (local cap only).
        Callers bound the wait with their deadline."""
        member = uuid.uuid4().hex
        args: list[str | int] = [SLOT_LEASE_MS, cap, member]
        pause = 0.005
        while True:
            try:
                taken = await self._link.call(lambda r: self._take(keys=[key], args=args, client=r))
            except RedisUnavailable:
                return None
            if taken:
                return member
            await asyncio.sleep(random.uniform(pause / 2, pause))
            pause = min(pause * 2, 0.05)


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

    async def claim_probe(self, account: str, lease: float) -> bool:
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
