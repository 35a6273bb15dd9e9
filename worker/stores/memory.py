"""In-process stores: bounded, time-limited, and lost when the process dies."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from worker.stores.base import CLAIM_MARGIN_SECONDS


class _Lru:
    """At most `size` values, each kept at most `ttl` seconds, least recently used out first."""

    def __init__(self, size: int, ttl: float, clock: Callable[[], float]) -> None:
        self._size = size
        self._ttl = ttl
        self._clock = clock
        self._items: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def get(self, key: str) -> bytes | None:
        item = self._items.get(key)
        if item is None:
            return None
        expires, value = item
        if expires <= self._clock():
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return value

    def put(self, key: str, value: bytes) -> None:
        if self._size == 0:
            return
        self._items[key] = (self._clock() + self._ttl, value)
        self._items.move_to_end(key)
        while len(self._items) > self._size:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        self._items.clear()


class MemoryResultStore:
    """Results and insert markers of this process, each kept at most `ttl` seconds."""

    def __init__(self, size: int, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._results = _Lru(size, ttl, clock)
        self._inserts = _Lru(size, ttl, clock)
        self._claims = _Lru(size, ttl + CLAIM_MARGIN_SECONDS, clock)

    async def get(self, job_id: str) -> bytes | None:
        return self._results.get(job_id)

    async def put(self, job_id: str, result: bytes) -> None:
        self._results.put(job_id, result)

    async def claim(self, job_id: str, fingerprint: bytes) -> bytes | None:
        held = self._claims.get(job_id)
        if held is None:
            self._claims.put(job_id, fingerprint)
        return held

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

    async def start(self) -> None:
        return None

    def __len__(self) -> int:
        return len(self._results)

    async def close(self) -> None:
        self._results.clear()
        self._inserts.clear()
        self._claims.clear()
