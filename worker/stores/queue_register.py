"""The fleet's register of the lanes and tenant queues it declared (a Redis set without a TTL):
what lets a worker find the queues that an accounts file no longer names (runtime/orphans.py)."""

from __future__ import annotations

from worker.stores.link import RedisLink, as_text

REGISTER = "topology-queues"


class QueueRegister:
    def __init__(self, link: RedisLink) -> None:
        self._link = link
        self._key = link.key(REGISTER)

    async def add(self, names: set[str]) -> set[str]:
        """Register `names`; every name registered before (RedisUnavailable when out of
        reach)."""
        key = self._key
        known = {n for n in map(as_text, await self._link.call(lambda r: r.smembers(key))) if n}
        if names:
            await self._link.call(lambda r: r.sadd(key, *sorted(names)))
        return known

    async def forget(self, name: str) -> None:
        key = self._key
        await self._link.attempt(lambda r: r.srem(key, name))
