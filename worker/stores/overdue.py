"""A bound of its own on the result store's waits for Redis.

The batcher's connection (pipe.py) times every batch; this is the store's backstop for a wait
no timer of the batcher covers (a batch that is never sent, a reply that never comes back to its
caller): a future still pending `bound` seconds after it was watched is handed to `on_overdue`,
which fails it like any other Redis failure. One timer serves every waiter, and runs only while
some wait: a timer each would cost more per job than the wait it guards.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound="asyncio.Future[Any]")

_SWEEPS = 4  # looks per bound: a future is handed over between 1 and 1.25 bounds late


class OverdueWatch:
    def __init__(
        self, bound: float, on_overdue: Callable[[list[asyncio.Future[Any]]], None]
    ) -> None:
        self.bound = bound
        self._on_overdue = on_overdue
        self._watched: deque[tuple[float, asyncio.Future[Any]]] = deque()  # deadline order
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, future: F) -> F:
        """`future`, watched: handed to `on_overdue` unless done within the bound."""
        loop = future.get_loop()
        self._watched.append((loop.time() + self.bound, future))
        if self._timer is None:
            self._timer = loop.call_later(self.bound / _SWEEPS, self._sweep, loop)
        return future

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        overdue: list[asyncio.Future[Any]] = []
        while self._watched:
            deadline, future = self._watched[0]
            if not future.done():
                if deadline > now:
                    break
                overdue.append(future)
            self._watched.popleft()
        self._timer = None
        if self._watched:
            self._timer = loop.call_later(self.bound / _SWEEPS, self._sweep, loop)
        if overdue:
            self._on_overdue(overdue)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._watched.clear()
