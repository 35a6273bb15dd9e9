"""Results and insert markers shared by the fleet in Redis, with this process's memory store
behind them for when Redis is down (see link.py)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

from worker.stores.base import CLAIM_MARGIN_SECONDS, Claimed
from worker.stores.link import RedisLink, RedisUnavailable, as_text
from worker.stores.memory import MemoryResultStore
from worker.tasks import Loop, stop

HEARTBEAT_SECONDS = 1.5
HEARTBEAT_TTL_MS = 5000  # a process silent this long is taken for dead
# KEYS: the marker; ARGV: this process, ttl ms. Set it unless another process's is there.
_MARK = """
local marked = redis.call('GET', KEYS[1])
if marked and marked ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS: the job id's binding, its result; ARGV: fingerprint, ttl ms. Bind it unless bound;
# the binding before and the stored result.
_CLAIM = """
local held = redis.call('GET', KEYS[1])
if not held then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
return {held, redis.call('GET', KEYS[2])}
"""


class RedisResultStore:
    """`result:<job_id>` and `insert-sent:<job_id>` keys with the result cache TTL. Every write
    also lands in memory, so an outage loses nothing this process already knew."""

    def __init__(self, link: RedisLink, memory: MemoryResultStore, ttl: float) -> None:
        self._link = link
        self._memory = memory
        self._ttl_ms = max(1, int(ttl * 1000))
        self._mark = link.script(_MARK)
        self._claim = link.script(_CLAIM)
        self._claim_ttl_ms = self._ttl_ms + int(CLAIM_MARGIN_SECONDS * 1000)
        self.sender_id = uuid.uuid4().hex[:16]
        self._heartbeat: asyncio.Task[None] | None = None
        self._beating = Loop()

    async def start(self) -> None:
        """Beat `alive:<id>` while this process lives, so the fleet can tell an insert still
        being answered here from one whose worker died."""
        self._heartbeat = asyncio.create_task(self._beat(), name="result-store-heartbeat")

    async def _beat(self) -> None:
        key = self._link.key("alive", self.sender_id)
        while self._beating.running:
            await self._link.attempt(lambda r: r.set(key, b"1", px=HEARTBEAT_TTL_MS))
            await asyncio.sleep(HEARTBEAT_SECONDS)

    async def get(self, job_id: str) -> bytes | None:
        key = self._link.key("result", job_id)
        try:
            value = await self._link.call(lambda r: r.get(key))
        except RedisUnavailable:
            return await self._memory.get(job_id)
        if value is None:
            return await self._memory.get(job_id)
        return _as_bytes(value)

    async def put(self, job_id: str, result: bytes) -> None:
        await self._memory.put(job_id, result)
        key = self._link.key("result", job_id)
        await self._link.attempt(lambda r: r.set(key, result, px=self._ttl_ms))

    async def claim(self, job_id: str, fingerprint: bytes) -> Claimed:
        """The fleet's binding of the job id (`claim:<job_id>`) and its result, in one round
        trip; this process's own when Redis is down or has no result."""
        mine = await self._memory.claim(job_id, fingerprint)
        if mine.held is not None and mine.held != fingerprint:
            return mine
        keys = [self._link.key("claim", job_id), self._link.key("result", job_id)]
        args: list[bytes | int] = [fingerprint, self._claim_ttl_ms]
        try:
            held, stored = await self._link.call(
                lambda r: self._claim(keys=keys, args=args, client=r)
            )
        except RedisUnavailable:
            return mine
        return Claimed(_as_bytes(held), _as_bytes(stored) or mine.stored)

    async def mark_insert_sent(self, job_id: str) -> bool:
        """A claim, not only a note: of two deliveries of one insert running at once on two
        workers, only the one that marks it first sends it."""
        await self._memory.mark_insert_sent(job_id)
        key = self._link.key("insert-sent", job_id)
        args: list[str | int] = [self.sender_id, self._ttl_ms]
        try:
            return bool(
                await self._link.call(lambda r: self._mark(keys=[key], args=args, client=r))
            )
        except RedisUnavailable:
            return True  # this process's marker only (the fallback)

    async def insert_sender(self, job_id: str) -> str | None:
        key = self._link.key("insert-sent", job_id)
        try:
            sender = as_text(await self._link.call(lambda r: r.get(key)))
        except RedisUnavailable:
            sender = None
        if sender is None or sender == self.sender_id:
            return await self._memory.insert_sender(job_id) or sender
        return sender

    async def sender_alive(self, sender: str) -> bool:
        if sender == self.sender_id:
            return False  # this process; the consumer joins a run still going here
        key = self._link.key("alive", sender)
        try:
            return bool(await self._link.call(lambda r: r.exists(key)))
        except RedisUnavailable:
            return False

    async def close(self) -> None:
        if self._heartbeat is not None:
            await stop(self._heartbeat, self._beating)
            key = self._link.key("alive", self.sender_id)
            with contextlib.suppress(Exception):
                await self._link.attempt(lambda r: r.delete(key))
        await self._memory.close()


def _as_bytes(value: object) -> bytes | None:
    """A value read from Redis, as stored."""
    if value is None or isinstance(value, bytes):
        return value
    return str(value).encode()
