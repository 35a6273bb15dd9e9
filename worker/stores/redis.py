"""Results and insert markers shared by the fleet in Redis, with this process's memory store
behind them for when Redis is down (see link.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import OrderedDict

from worker.stores.link import RedisLink, RedisUnavailable, as_text
from worker.stores.memory import MemoryResultStore
from worker.tasks import Loop, stop

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 1.5
WRITE_BACK_MAX = 10_000  # results and insert markers kept for Redis while it is away
HEARTBEAT_TTL_MS = 5000  # a process silent this long is taken for dead
# KEYS: the marker; ARGV: this process, ttl ms. Set it unless another process's is there.
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
        self.sender_id = uuid.uuid4().hex[:16]
        self._heartbeat: asyncio.Task[None] | None = None
        self._beating = Loop()
        # What Redis did not take while it was away (fallback, or a write that timed out: a
        # claim the worker could not write is not a claim the fleet can see), written back when
        # it answers again, so that a redelivery to another worker is answered, not resent.
        self._unwritten: OrderedDict[tuple[str, str], bytes | None] = OrderedDict()
        link.on_restore(self._write_back)

    async def start(self) -> None:
        """Beat `alive:<id>` while this process lives, so the fleet can tell an insert still
        being answered here from one whose worker died."""
        self._heartbeat = asyncio.create_task(self._beat(), name="result-store-heartbeat")

    async def _beat(self) -> None:
        key = self._link.key("alive", self.sender_id)
        while self._beating.running:
            await self._link.attempt(lambda r: r.set(key, b"1", px=HEARTBEAT_TTL_MS))
            await asyncio.sleep(HEARTBEAT_SECONDS)

    async def _write_result(self, job_id: str, value: bytes) -> None:
        key = self._link.key("result", job_id)
        await self._link.call(lambda r: r.set(key, value, px=self._ttl_ms, nx=True))

    async def _write_marker(self, job_id: str) -> bool:
        """This process's insert marker; False when another process's is there."""
        key = self._link.key("insert-sent", job_id)
        args: list[str | int] = [self.sender_id, self._ttl_ms]
        return bool(await self._link.call(lambda r: self._mark(keys=[key], args=args, client=r)))

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
        try:
            await self._link.call(lambda r: r.set(key, result, px=self._ttl_ms))
        except RedisUnavailable:
            self._keep("result", job_id, result)

    def _keep(self, kind: str, job_id: str, value: bytes | None) -> None:
        self._unwritten[(kind, job_id)] = value
        while len(self._unwritten) > WRITE_BACK_MAX:
            self._unwritten.popitem(last=False)

    async def _write_back(self) -> None:
        """A restore hook: write what Redis missed, oldest first. A result another worker
        already stored stays; an insert marker of another worker means both sent the insert
        during the outage (logged: the record may exist twice)."""
        written = 0
        while self._unwritten:
            (kind, job_id), value = next(iter(self._unwritten.items()))
            if kind == "result" and value is not None:
                await self._write_result(job_id, value)
            elif not await self._write_marker(job_id):
                log.warning(
                    "an insert was sent by another worker too while Redis was away; the "
                    "record may exist twice",
                    extra={"job_id": job_id},
                )
            self._unwritten.pop((kind, job_id), None)
            written += 1
        if written:
            log.info("results and insert markers written back to Redis", extra={"count": written})

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
            # This process's marker only (the fallback) until Redis takes it.
            self._keep("insert", job_id, None)
            return True

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
