"""Results and insert markers shared by the fleet in Redis, with this process's memory store
behind them for when Redis is down (see link.py)."""

from __future__ import annotations

from worker.stores.link import RedisLink, RedisUnavailable
from worker.stores.memory import MemoryResultStore

# KEYS: the marker; ARGV: owner, ttl ms. Set it unless another delivery's marker is there.
_MARK = """
local marked = redis.call('GET', KEYS[1])
if marked and marked ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""


class RedisResultStore:
    """`result:<job_id>` and `insert-sent:<job_id>` keys with the result cache TTL. Every write
    also lands in memory, so an outage loses nothing this process already knew."""

    def __init__(self, link: RedisLink, memory: MemoryResultStore, ttl: float) -> None:
        self._link = link
        self._memory = memory
        self._ttl_ms = max(1, int(ttl * 1000))
        self._mark = link.script(_MARK)

    async def get(self, job_id: str) -> bytes | None:
        key = self._link.key("result", job_id)
        try:
            value = await self._link.call(lambda r: r.get(key))
        except RedisUnavailable:
            return await self._memory.get(job_id)
        if value is None:
            return await self._memory.get(job_id)
        return value if isinstance(value, bytes) else str(value).encode()

    async def put(self, job_id: str, result: bytes) -> None:
        await self._memory.put(job_id, result)
        key = self._link.key("result", job_id)
        await self._link.attempt(lambda r: r.set(key, result, px=self._ttl_ms))

    async def mark_insert_sent(self, job_id: str, owner: str) -> bool:
        """A claim, not only a note: of two deliveries of one insert running at once on two
        workers, only the one that marks it first sends it."""
        if not await self._memory.mark_insert_sent(job_id, owner):
            return False
        key = self._link.key("insert-sent", job_id)
        args: list[str | int] = [owner, self._ttl_ms]
        try:
            return bool(
                await self._link.call(lambda r: self._mark(keys=[key], args=args, client=r))
            )
        except RedisUnavailable:
            return True  # this process's marker only (the fallback)

    async def insert_sent(self, job_id: str) -> bool:
        key = self._link.key("insert-sent", job_id)
        try:
            found = await self._link.call(lambda r: r.exists(key))
        except RedisUnavailable:
            return await self._memory.insert_sent(job_id)
        return bool(found) or await self._memory.insert_sent(job_id)

    async def close(self) -> None:
        await self._memory.close()
