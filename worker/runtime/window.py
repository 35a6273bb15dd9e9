"""How many deliveries of the request queue the worker holds at once (its prefetch, the window
in which the fair share looks ahead, direct_share.py).

Holding deliveries is not free: a thousand jobs held in the process, parsed and waiting, make
every job slower (a larger working set for the allocator, the caches and the collector), about a
sixth of the worker's pace when one account bursts at 0 ms, and buy nothing while that account is
alone (issue 27, point 3). So the window is **narrow** (`narrow`: the prefetch, the direct slots
themselves, so that nothing waits in the worker: a lone account's backlog waits in the queue, as
with the fair share off) while one account is alone and its jobs turn over quickly, and **wide**
(`SFWORKER_ROUTING_PREFETCH`) while looking ahead buys something:

- another account is present (`company`): the wide window finds its jobs behind a backlog;
- the jobs turn over slowly (`slow`): every slot is held and the last prefetch's worth of jobs
  started over more than `widen_after` (a slow org), or a job waited that long for a slot; the
  jobs of another account, if any come, would wait behind them.

It narrows again once neither has been true for `calm_for` (and the deliveries still held leave
room for the narrow consumer's: the two together never hold more than `wide`). RabbitMQ applies
a prefetch to the consumers started after it, so a change is a new consumer with the new
prefetch and the old one cancelled (`RabbitService.resize`); the deliveries the old one holds
stay the worker's and finish as usual. `on_change` is told each new size, at once.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable


class Window:
    def __init__(
        self,
        narrow: int,
        wide: int,
        *,
        widen_after: float,
        calm_for: float,
        on_change: Callable[[int], None] = lambda size: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.narrow = min(narrow, wide)
        self.wide = wide
        self.widen_after = widen_after
        self._calm_for = calm_for
        self._on_change = on_change
        self._still_needed: Callable[[], bool] = lambda: False
        self._clock = clock
        self.size = self.narrow
        self._needed_at = -math.inf
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, still_needed: Callable[[], bool]) -> None:
        """What tells, while wide, whether the look-ahead is still needed (a job still waits
        `widen_after` for a slot, or too many deliveries are held to narrow)."""
        self._still_needed = still_needed

    def may_narrow(self, held: int) -> bool:
        """Whether the deliveries held now leave room for a narrow consumer's: the old
        consumer's stay held until their jobs finish, and the two together stay within `wide`."""
        return held + self.narrow <= self.wide

    @property
    def is_wide(self) -> bool:
        return self.size == self.wide

    def company(self) -> None:
        """Another account is present: look ahead (again)."""
        self._needed()

    def slow(self) -> None:
        """A job waited `widen_after` for a slot: look ahead (again)."""
        self._needed()

    def _needed(self) -> None:
        self._needed_at = self._clock()
        if self.size == self.wide:
            return
        self._set(self.wide)
        self._arm(self._calm_for)

    def _arm(self, delay: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(max(delay, 0.0), self._check)

    def _check(self) -> None:
        """While wide: narrow once nothing needed the look-ahead for `calm_for`."""
        self._timer = None
        if self.size != self.wide:
            return
        now = self._clock()
        if self._still_needed():
            self._needed_at = now
        left = self._needed_at + self._calm_for - now
        if left > 0:
            self._arm(left)
            return
        self._set(self.narrow)

    def _set(self, size: int) -> None:
        if size != self.size:
            self.size = size
            self._on_change(size)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
