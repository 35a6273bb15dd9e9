"""Results and insert markers shared by the fleet in Redis, with this process's memory store
behind them for when Redis is down (see link.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any

from worker.stores.batch import BIND_SCRIPT, TickBatch
from worker.stores.link import RedisLink, RedisUnavailable
from worker.stores.memory_results import MemoryResultStore
from worker.stores.outage_buffer import OutageBuffer
from worker.stores.overdue import OverdueWatch
from worker.stores.results import BINDING_MARGIN_SECONDS, Binding
from worker.tasks import StopFlag, stop

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 1.5
OUTAGE_BUFFER_BYTES = 64 * 1024 * 1024  # SFWORKER_REDIS_OUTAGE_BUFFER_BYTES's default
HEARTBEAT_TTL_MS = 5000  # a process silent this long is taken for dead
# A store call waits for Redis at most this many SFWORKER_REDIS_TIMEOUT_SECONDS, whatever holds
# it up; then it uses memory and the link falls back. Past the batcher's own bounds (a batch
# may wait for the one on its way, 2 timeouts at most, then for its own reply, 2 more).
WAIT_TIMEOUTS = 4
# KEYS: the marker; ARGV: this process (sealed), ttl ms. Set it unless one is there; else
# return the one there (sealed: only the caller can tell whose it is).
_MARK = """
local marked = redis.call('GET', KEYS[1])
if marked then return marked end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
# An insert marker that does not open (sealed with a key this worker does not hold, or
# tampered): some process marked the insert and may have sent it. It is never sent again from here.
UNKNOWN_SENDER = "unreadable"


class RedisResultStore:
    """`result:<job_id>` and `insert-sent:<job_id>` keys with the result cache TTL. Every write
    also lands in memory, so an outage loses nothing this process already knew."""

    def __init__(
        self,
        link: RedisLink,
        memory: MemoryResultStore,
        ttl: float,
        unwritten: OutageBuffer | None = None,
    ) -> None:
        self._link = link
        self._memory = memory
        self._ttl_ms = max(1, int(ttl * 1000))
        self._mark = link.script(_MARK)
        self._bind_script = link.script(BIND_SCRIPT)
        self._batch = TickBatch(link)
        self._overdue = OverdueWatch(link.timeout * WAIT_TIMEOUTS, self._gave_up)
        self._binding_ttl_ms = self._ttl_ms + int(BINDING_MARGIN_SECONDS * 1000)
        self.sender_id = uuid.uuid4().hex[:16]
        self._heartbeat: asyncio.Task[None] | None = None
        self._beating = StopFlag()
        # What Redis did not take while it was away (fallback, or a write that timed out: a
        # binding or marker the worker could not write is not one the fleet can see): results,
        # job-id bindings and insert markers, written back when it answers again, so that a
        # redelivery to another worker is answered, not sent to Salesforce again. Bounded in
        # bytes; results are dropped first (outage_buffer.py).
        self._unwritten = unwritten if unwritten is not None else OutageBuffer(OUTAGE_BUFFER_BYTES)
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
        sealed = self._link.seal.seal(key, value)
        await self._link.call(lambda r: r.set(key, sealed, px=self._ttl_ms, nx=True))

    async def _write_binding(self, job_id: str, fingerprint: bytes) -> None:
        """This process's binding of the job id, unless the fleet has one (it stays)."""
        keys = [self._link.key("claim", job_id), self._link.key("result", job_id)]
        args: list[bytes | int] = [self._link.seal.seal(keys[0], fingerprint), self._binding_ttl_ms]
        await self._link.call(lambda r: self._bind_script(keys=keys, args=args, client=r))

    async def _write_marker(self, job_id: str) -> bool:
        """This process's insert marker; False when another process's is there."""
        key = self._link.key("insert-sent", job_id)
        args: list[bytes | int] = [self._link.seal.seal_text(key, self.sender_id), self._ttl_ms]
        marked = await self._link.call(lambda r: self._mark(keys=[key], args=args, client=r))
        return marked == 1 or self._link.seal.open_text(key, marked) == self.sender_id

    async def get(self, job_id: str) -> bytes | None:
        """Lookups of one tick travel together (batch.py)."""
        key = self._link.key("result", job_id)
        try:
            value = await self._overdue.watch(self._batch.get(key))
        except RedisUnavailable:
            return await self._memory.get(job_id)
        # A result that does not open reads as absent: the job runs again (an insert does not:
        # its marker stops it, see insert_sender).
        opened = self._link.seal.open(key, value)
        if opened is None:
            return await self._memory.get(job_id)
        return opened

    async def put(self, job_id: str, result: bytes) -> None:
        await self._memory.put(job_id, result)
        key = self._link.key("result", job_id)
        sealed = self._link.seal.seal(key, result)
        try:
            # With the others of its tick.
            await self._overdue.watch(self._batch.set(key, sealed, self._ttl_ms))
        except RedisUnavailable:
            self._keep("result", job_id, result)

    async def bind(self, job_id: str, fingerprint: bytes) -> Binding:
        """The fleet's binding of the job id (`claim:<job_id>`) and its stored result, in one
        round trip; this process's own when Redis is down."""
        mine = await self._memory.bind(job_id, fingerprint)
        if mine.held is not None and mine.held != fingerprint:
            return mine
        binding_key, result_key = self._link.key("claim", job_id), self._link.key("result", job_id)
        sealed = self._link.seal.seal(binding_key, fingerprint)
        try:
            # Claims of one tick travel together (batch.py).
            held, stored = await self._overdue.watch(
                self._batch.bind(binding_key, sealed, self._binding_ttl_ms, result_key)
            )
        except RedisUnavailable:
            self._keep("binding", job_id, fingerprint)
            return mine
        # A binding that does not open reads as absent: the job goes on as its own (a stored
        # result it cannot read makes it run again; an insert is still stopped by its marker).
        # A result that does not open reads as absent too (see get).
        result = self._link.seal.open(result_key, stored)
        return Binding(
            self._link.seal.open(binding_key, held), result if result is not None else mine.stored
        )

    def _gave_up(self, waiting: list[asyncio.Future[Any]]) -> None:
        """Store calls that waited for Redis past their bound: the same outage as a command
        that timed out (the link falls back), and each caller uses memory."""
        bound = self._overdue.bound
        self._link.fail(TimeoutError(f"a result store call waited {bound:g} s for Redis"))
        for future in waiting:
            if not future.done():
                future.set_exception(RedisUnavailable(self._link.where))

    def _keep(self, kind: str, job_id: str, value: bytes | None) -> None:
        self._unwritten.keep(kind, job_id, value)

    async def _write_back(self) -> None:
        """A restore hook: write what Redis missed, bindings and markers first, each kind
        oldest first. A result or job id binding another worker already stored stays; an insert
        marker of another worker means both sent the insert during the outage (logged: the
        record may exist twice)."""
        written = 0
        while (entry := self._unwritten.oldest()) is not None:
            (kind, job_id), value = entry
            if kind == "result" and value is not None:
                await self._write_result(job_id, value)
            elif kind == "binding" and value is not None:
                await self._write_binding(job_id, value)
            elif not await self._write_marker(job_id):
                log.warning(
                    "an insert was sent by another worker too while Redis was away; the "
                    "record may exist twice",
                    extra={"job_id": job_id},
                )
            self._unwritten.remove(kind, job_id)
            written += 1
        if written:
            log.info("results and insert markers written back to Redis", extra={"count": written})

    async def mark_insert_sent(self, job_id: str) -> bool:
        """A marker that refuses, not only a note: of two deliveries of one insert running at
        once on two workers, only the one that marks it first sends it."""
        await self._memory.mark_insert_sent(job_id)
        key = self._link.key("insert-sent", job_id)
        args: list[bytes | str | int] = [
            self._link.seal.seal_text(key, self.sender_id),
            self._ttl_ms,
        ]
        try:
            # Markers of one tick (a Composite request's inserts) travel together (batch.py).
            # Confirmed by a replica before the insert leaves (replicas.py): a marker lost in a
            # failover would let a redelivery send it again.
            marking = self._batch.eval(_MARK, [key], args, durable=True)
            marked = await self._overdue.watch(marking)
            if marked == 1:
                return True
            if self._link.seal.open_text(key, marked) != self.sender_id:
                return False  # another process's, or one that does not open: not sent here
            await self._link.call(lambda r: r.pexpire(key, self._ttl_ms))
            return True
        except RedisUnavailable:
            # This process's marker only (the fallback) until Redis takes it.
            self._keep("insert", job_id, None)
            return True

    async def insert_sender(self, job_id: str) -> str | None:
        key = self._link.key("insert-sent", job_id)
        try:
            raw = await self._link.call(lambda r: r.get(key))
        except RedisUnavailable:
            raw = None
        sender = self._link.seal.open_text(key, raw)
        if raw is not None and sender is None:
            sender = UNKNOWN_SENDER  # marked, by whom we cannot tell: it may have been sent
        if sender is None or sender == self.sender_id:
            return await self._memory.insert_sender(job_id) or sender
        return sender

    def blind(self) -> bool:
        return not self._link.available

    async def sender_alive(self, sender: str) -> bool:
        if sender in (self.sender_id, UNKNOWN_SENDER):
            # This process (the pipeline joins a run still going here); or a marker that did not
            # open, whose sender and result this worker could not read anyway.
            return False
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
        await self._batch.close()
        self._overdue.close()
        await self._memory.close()
