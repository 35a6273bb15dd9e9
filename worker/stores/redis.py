"""Results and insert markers shared by the fleet in Redis, with this process's memory store
behind them for when Redis is down (see link.py)."""

from __future__ import annotations

from worker.stores.link import RedisLink, RedisUnavailable
from worker.stores.memory import MemoryResultStore


class RedisResultStore:
    """`result:<job_id>` and `insert-sent:<job_id>` keys with the result cache TTL. Every write
    also lands in memory, so an outage loses nothing this process already knew."""

    def __init__(self, link: RedisLink, memory: MemoryResultStore, ttl: float) -> None:
        self._link = link
        self._memory = memory
        self._ttl_ms = max(1, int(ttl * 1000))

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

    async def mark_insert_sent(self, job_id: str) -> None:
        await self._memory.mark_insert_sent(job_id)
        key = self._link.key("insert-sent", job_id)
        await self._link.attempt(lambda r: r.set(key, b"1", px=self._ttl_ms))

    async def insert_sent(self, job_id: str) -> bool:
        key = self._link.key("insert-sent", job_id)
        try:
            found = await self._link.call(lambda r: r.exists(key))
        except RedisUnavailable:
            return await self._memory.insert_sent(job_id)
        return bool(found) or await self._memory.insert_sent(job_id)

    async def close(self) -> None:
        await self._memory.close()
