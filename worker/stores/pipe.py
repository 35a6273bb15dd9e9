"""The batcher's own Redis connection, pipelined: a batch of commands goes out in one write and
its replies come back in order on one reader, parsed by hiredis.

redis-py's pipeline costs a task, a pool checkout, a retry wrapper, a timeout context and a
response callback per batch and per command; at two commands per job that machinery was most of
what the fleet's state cost a worker (docs/benchmarks.md §6b). Here a batch costs one packed
buffer, one write and one timer, and a reply one call of its handler. The connection is opened by
redis-py (so the URL's TLS, user, password and database are honoured as everywhere else), then
read and written directly. Behind Sentinel the connection is redis-py's sentinel-managed one:
opening it asks the sentinels for the primary (sentinels.py).

Failure is the link's: a batch unanswered within the link's timeout, a reset or a closed
connection drops the connection, fails every command waiting on it with RedisUnavailable and
switches the link to fallback (link.py); the next batch after the link is back opens a new one.
Every batch is timed from the moment it is sent, also while it waits for a connection, and an
opening that fails at any step fails what waits for it. A reply handler that raises is told its
command has no reply (its caller uses the fallback); the connection and the other batches go on.

redis-py's private `connection_class`, `_reader`, `_writer` and `_close()` are used here and
nowhere else (tests/unit/test_library_seams.py names them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import hiredis

from worker.stores.link import RedisLink, RedisUnavailable

log = logging.getLogger(__name__)

Reply = Any  # a RESP reply as hiredis gives it (a hiredis.ReplyError for an error reply)
OnReply = Callable[[Reply], None]  # a command's reply, or RedisUnavailable when it has none
Command = Sequence[str | bytes | int]

_READ_SIZE = 1 << 16


class _Batch:
    __slots__ = ("done", "handlers", "next", "timer")

    def __init__(self, handlers: list[OnReply], done: Callable[[], None]) -> None:
        self.handlers = handlers
        self.done = done
        self.next = 0
        self.timer: asyncio.TimerHandle | None = None


class Pipe:
    """Batches written as they come (no waiting for the one before: RESP answers in order)."""

    def __init__(self, link: RedisLink) -> None:
        self._link = link
        self._conn: Any = None  # the redis-py connection that did the handshake
        self._writer: asyncio.StreamWriter | None = None
        self._reading: asyncio.Task[None] | None = None
        self._opening: asyncio.Task[None] | None = None
        self._epoch = -1  # the link's epoch (outages, failovers) when this connection was opened
        self._sent: deque[_Batch] = deque()  # written, replies due in this order
        self._unsent: deque[tuple[bytes, _Batch]] = deque()  # waiting for the connection
        self._drained: asyncio.Future[None] | None = None  # set when close waits for replies

    @staticmethod
    def pack(commands: Sequence[Command]) -> bytes:
        pack: Callable[[tuple[Any, ...]], bytes] = hiredis.pack_command  # its stub: one argument
        return b"".join(pack(tuple(command)) for command in commands)

    def send(self, packed: bytes, handlers: list[OnReply], done: Callable[[], None]) -> None:
        """Write one batch (`handlers`: one per command, in order); `done` runs after the last
        handler, or after every handler got RedisUnavailable."""
        batch = _Batch(handlers, done)
        if not self._link.usable:
            self._fail_batch(batch, RedisUnavailable(self._link.where))
            return
        if self._link.epoch != self._epoch and self._writer is not None:
            # The link fell back, or the primary moved (a failover), since this connection was
            # opened: it may be dead, or on a demoted primary. What still waits on it is the
            # failover's: the link falls back, and its return writes what it kept.
            self._drop(ConnectionError("the Redis primary moved") if self._sent else None)
        if self._writer is None:
            self._arm(batch)  # waiting for the connection: bounded as well
            self._unsent.append((packed, batch))
            if self._opening is None:
                self._opening = asyncio.create_task(self._open(), name="redis-pipe-open")
            return
        self._write(self._writer, packed, batch)

    def _arm(self, batch: _Batch) -> None:
        if batch.timer is not None:
            batch.timer.cancel()
        batch.timer = asyncio.get_running_loop().call_later(
            self._link.timeout * 2, self._expired, batch
        )

    def _write(self, writer: asyncio.StreamWriter, packed: bytes, batch: _Batch) -> None:
        self._sent.append(batch)
        self._arm(batch)  # its reply's time, from its write
        writer.write(packed)

    def _expired(self, batch: _Batch) -> None:
        if batch in self._sent:
            self._drop(TimeoutError(f"no reply from Redis within {self._link.timeout * 2:g} s"))
        elif any(waiting is batch for _, waiting in self._unsent):
            # No connection in time (an opening that hangs): what waits for it fails, and the
            # next batch after the link is back opens a new one.
            if self._opening is not None:
                self._opening.cancel()
                self._opening = None
            self._link.fail(TimeoutError(f"no connection within {self._link.timeout * 2:g} s"))
            self._fail_unsent(RedisUnavailable(self._link.where))

    async def _open(self) -> None:
        me = asyncio.current_task()
        conn: Any = None
        epoch = self._link.epoch
        try:
            pool = self._link.client.connection_pool
            conn = pool.connection_class(**pool.connection_kwargs)
            async with asyncio.timeout(self._link.timeout * 2):
                await conn.connect()
            if self._opening is not me:
                _discard(conn)  # given up on meanwhile (its time ran out, or the pipe closed)
                return
            # redis-py's streams of the connection it opened; from here on only this class
            # uses them.
            reader: asyncio.StreamReader = conn._reader
            writer: asyncio.StreamWriter = conn._writer
            if reader is None or writer is None:
                raise ConnectionError("redis-py opened the connection without its streams")
            self._conn, self._epoch, self._writer = conn, epoch, writer
            self._reading = asyncio.create_task(self._read(reader), name="redis-pipe-read")
            while self._unsent:
                packed, batch = self._unsent.popleft()
                self._write(writer, packed, batch)
            self._opening = None
        except asyncio.CancelledError:
            if self._conn is not conn:
                _discard(conn)
            raise
        except Exception as exc:
            # Any step (the connection, its streams, the first writes): nothing stays opening,
            # nothing waits for it.
            if self._opening is not me:
                _discard(conn)
                return
            self._opening = None
            if conn is not None and self._conn is conn:
                self._drop(exc)  # its reader, and what was written on it
            else:
                _discard(conn)
                self._link.fail(exc)  # first: what the failures below start finds the link down
            self._fail_unsent(RedisUnavailable(self._link.where))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        parser = hiredis.Reader()
        try:
            while True:
                data = await reader.read(_READ_SIZE)
                if not data:
                    raise ConnectionError("Redis closed the connection")
                parser.feed(data)
                while (reply := parser.gets()) is not False:
                    self._deliver(reply)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._reading = None  # this task ends here: not cancelled by _drop
            # Closed while idle (the server's `timeout` for idle clients, a proxy): the next
            # batch opens a new one; only a connection lost with commands waiting is an outage.
            self._drop(exc if self._sent else None)

    def _deliver(self, reply: Reply) -> None:
        if not self._sent:
            raise ConnectionError("a Redis reply no command asked for")
        batch = self._sent[0]
        handler = batch.handlers[batch.next]
        batch.next += 1
        if batch.next == len(batch.handlers):
            self._sent.popleft()
            if batch.timer is not None:
                batch.timer.cancel()
            try:
                handler(reply)
            except Exception:
                self._unhandled(handler)
            _finish(batch)
            if not self._sent and self._drained is not None and not self._drained.done():
                self._drained.set_result(None)
        else:
            try:
                handler(reply)
            except Exception:
                self._unhandled(handler)

    def _unhandled(self, handler: OnReply) -> None:
        """A handler raised on its reply: it is told its command has none, as when the
        connection is lost (its caller uses the fallback). The connection goes on."""
        log.exception("a Redis reply could not be handled; its caller goes without it")
        with contextlib.suppress(Exception):
            handler(RedisUnavailable(self._link.where))

    def _drop(self, exc: BaseException | None) -> None:
        """Close the connection; what waited on it fails; an error switches the link."""
        if self._reading is not None and self._reading is not asyncio.current_task():
            self._reading.cancel()
        self._reading = None
        if self._conn is not None:
            self._conn._close()  # closes the streams, without waiting (redis-py's own way)
        self._writer, self._conn = None, None
        if exc is not None:
            self._link.fail(exc)  # first: what the failures below start finds the link down
        sent, self._sent = self._sent, deque()
        for batch in sent:
            self._fail_batch(batch, RedisUnavailable(self._link.where))
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def _fail_unsent(self, exc: RedisUnavailable) -> None:
        unsent, self._unsent = self._unsent, deque()
        for _, batch in unsent:
            self._fail_batch(batch, exc)

    @staticmethod
    def _fail_batch(batch: _Batch, exc: RedisUnavailable) -> None:
        if batch.timer is not None:
            batch.timer.cancel()
        handlers, batch.next = batch.handlers[batch.next :], len(batch.handlers)
        for handler in handlers:
            try:
                handler(exc)
            except Exception:
                log.exception("a Redis command's failure could not be handled")
        _finish(batch)

    async def close(self) -> None:
        """Batches written get their replies (each is bounded by the timeout), then the
        connection closes; batches still waiting for it fail."""
        if self._sent:
            self._drained = asyncio.get_running_loop().create_future()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._link.timeout * 2):
                    await self._drained
        if self._opening is not None:
            self._opening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._opening
            self._opening = None
        self._fail_unsent(RedisUnavailable(self._link.where))
        reading = self._reading
        self._drop(None)
        if reading is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await reading


def _finish(batch: _Batch) -> None:
    """The batch's `done`, which never stops the connection's own bookkeeping."""
    try:
        batch.done()
    except Exception:
        log.exception("a Redis batch's completion could not be handled")


def _discard(conn: Any) -> None:
    """Close a connection this class did not adopt, without waiting (redis-py's own way)."""
    if conn is not None:
        with contextlib.suppress(Exception):
            conn._close()
