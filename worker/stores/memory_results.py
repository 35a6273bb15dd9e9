"""In-process stores: bounded, time-limited, and lost when the process dies."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from worker.stores.results import BINDING_MARGIN_SECONDS, Binding


def compact(value: bytes) -> bytes:
    """A copy of `value` that holds only its length. orjson.dumps returns bytes whose memory
    block stays at its 4 KiB write buffer however short the JSON: 10,000 cached results of a
    few hundred bytes held 40 MB (RSS rising by that much in the first minute at 150 jobs/s)."""
    return bytes(memoryview(value))


class _Cache:
    """At most `size` values and `max_bytes` bytes of them, each kept at most `ttl` seconds.
    Kept in the order they were put, which is the order they expire in (one ttl for all):
    every put first drops the expired ones, then the oldest while over a bound."""

    def __init__(
        self, size: int, ttl: float, clock: Callable[[], float], max_bytes: int | None = None
    ) -> None:
        self._size = size
        self._ttl = ttl
        self._clock = clock
        self._max_bytes = max_bytes
        self._bytes = 0
        self._items: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def get(self, key: str) -> bytes | None:
        item = self._items.get(key)
        if item is None:
            return None
        expires, value = item
        if expires <= self._clock():
            self._drop(key)
            return None
        return value

    def put(self, key: str, value: bytes) -> None:
        if key in self._items:
            self._drop(key)
        if self._size == 0 or (self._max_bytes is not None and len(value) > self._max_bytes):
            return
        now = self._clock()
        self._items[key] = (now + self._ttl, compact(value))
        self._bytes += len(value)
        while self._items:
            oldest, (expires, _) = next(iter(self._items.items()))
            over = len(self._items) > self._size or (
                self._max_bytes is not None and self._bytes > self._max_bytes
            )
            if expires > now and not over:
                break
            self._drop(oldest)

    def _drop(self, key: str) -> None:
        _, value = self._items.pop(key)
        self._bytes -= len(value)

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        self._items.clear()
        self._bytes = 0


class MemoryResultStore:
    """Results and insert markers of this process, each kept at most `ttl` seconds; results
    at most `max_bytes` bytes in all."""

    def __init__(
        self,
        size: int,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_bytes: int | None = None,
    ) -> None:
        self._results = _Cache(size, ttl, clock, max_bytes)
        self._inserts = _Cache(size, ttl, clock)
        self._bindings = _Cache(size, ttl + BINDING_MARGIN_SECONDS, clock)

    async def get(self, job_id: str) -> bytes | None:
        return self._results.get(job_id)

    async def put(self, job_id: str, result: bytes) -> None:
        self._results.put(job_id, result)

    async def bind(self, job_id: str, fingerprint: bytes) -> Binding:
        held = self._bindings.get(job_id)
        if held is None:
            self._bindings.put(job_id, fingerprint)
        return Binding(held, self._results.get(job_id))

    async def mark_insert_sent(self, job_id: str) -> bool:
        # Only this process writes here; deliveries running here at once are joined by the
        # consumer, so this process's marker is always its own.
        self._inserts.put(job_id, b"self")
        return True

    async def insert_sender(self, job_id: str) -> str | None:
        sender = self._inserts.get(job_id)
        return sender.decode() if sender is not None else None

    async def sender_alive(self, sender: str) -> bool:
        # Only this process writes here, and a delivery running here is joined by the consumer
        # before it gets this far: an earlier run with no result has ended.
        return False

    def blind(self) -> bool:
        return False  # no fleet to see: a process alone knows all it sent

    async def start(self) -> None:
        return None

    def __len__(self) -> int:
        return len(self._results)

    @property
    def result_bytes(self) -> int:
        return self._results.bytes

    async def close(self) -> None:
        self._results.clear()
        self._inserts.clear()
        self._bindings.clear()
