"""In-process stores: bounded, time-limited, and lost when the process dies."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class MemoryResultStore:
    """LRU of serialized results, each kept at most `ttl` seconds, at most `size` of them."""

    def __init__(self, size: int, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._size = size
        self._ttl = ttl
        self._clock = clock
        self._items: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    async def get(self, job_id: str) -> bytes | None:
        item = self._items.get(job_id)
        if item is None:
            return None
        expires, result = item
        if expires <= self._clock():
            del self._items[job_id]
            return None
        self._items.move_to_end(job_id)
        return result

    async def put(self, job_id: str, result: bytes) -> None:
        if self._size == 0:
            return
        self._items[job_id] = (self._clock() + self._ttl, result)
        self._items.move_to_end(job_id)
        while len(self._items) > self._size:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)

    async def close(self) -> None:
        self._items.clear()
