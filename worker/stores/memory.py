"""In-process stores: bounded, time-limited, and lost when the process dies."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


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

    async def get(self, job_id: str) -> bytes | None:
        return self._results.get(job_id)

    async def put(self, job_id: str, result: bytes) -> None:
        self._results.put(job_id, result)

    async def mark_insert_sent(self, job_id: str) -> None:
        self._inserts.put(job_id, b"1")

    async def insert_sent(self, job_id: str) -> bool:
        return self._inserts.get(job_id) is not None

    def __len__(self) -> int:
        return len(self._results)

    async def close(self) -> None:
        self._results.clear()
        self._inserts.clear()
