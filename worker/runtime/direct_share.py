"""Who runs straight off the request queue, who waits there for a slot, and who is moved to its
account's lane (the fair share, lanes.py). A move costs a copy published with a confirm, an ack
and a second delivery: about a fifth of the worker's CPU when every job beyond a share moved.
So a job moves only when the move buys something:

- **another account is present**: one of its jobs is in the request queue's window or running in
  its lane, or was within the last `PRESENT_FOR` s. Then each account runs at most its share
  (half the prefetch) here, and the rest of a backlog goes to its lane, where it holds only the
  lane's prefetch. A job that arrives while the slots are held by another account's backlog
  moves to its own lane too, and runs there at once;
- **the backlog exceeds the look-ahead**: the window (the request queue's prefetch) is full, so
  the worker does not see the jobs behind it, and a job in it has waited `look_ahead` s for a
  slot: the window turns over too slowly (a slow org's flood), and the waiting jobs move to free
  it.

Otherwise (one account alone, its backlog within the look-ahead) a job that finds every slot
held waits in the window, in arrival order, and takes the next slot freed: the account runs
`prefetch` jobs at once, as with the fair share off, and no job is moved.

The window's size is `Window`'s (window.py): narrow while one account is alone and its jobs turn
over quickly, wide (the look-ahead) once another account is present or a job waited
`widen_after` for a slot.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from worker.runtime.window import Window

PRESENT_FOR = 1.0  # s an account counts as present after its last job left


def direct_limits(prefetch: int) -> tuple[int, int]:
    """Jobs run straight off the request queue: `prefetch` in all, half of it per account (at
    least one) while another account is present. The request queue's own prefetch
    (`routing_prefetch`) is far larger: the rest of it is the window in which the jobs behind
    are looked at, and wait, run or move."""
    return max(1, prefetch // 2), prefetch


class Turn(Enum):
    RUN = "run"  # a direct slot is held for the job: `release` it when the job is done
    MOVE = "move"  # to its account's lane
    LEAVE = "leave"  # the worker is stopping: the delivery stays unacked, for another worker


@dataclass(slots=True)
class _Waiter:
    account: str
    since: float
    turn: asyncio.Future[Turn]


class DirectShare:
    """The direct slots, the waiting jobs and who is present. `account` is an account with a
    lane; jobs that cannot be placed on one take a slot under "" and never wait or move."""

    def __init__(
        self,
        prefetch: int,
        window: int | Window,
        look_ahead: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_account, self.total = direct_limits(prefetch)
        # A fixed size (narrow = wide) unless a Window that widens and narrows is given.
        if isinstance(window, int):
            window = Window(window, window, widen_after=math.inf, calm_for=math.inf, clock=clock)
        window.watch(lambda: self._slow() or not window.may_narrow(self._held))
        self.window = window
        self._look_ahead = look_ahead
        self._clock = clock
        self._direct: Counter[str] = Counter()
        self._direct_total = 0
        self._present: Counter[str] = Counter()  # jobs in the window or in a lane, by account
        self._left: dict[str, float] = {}  # when an account's last present job left
        self._held = 0  # deliveries of the request queue being handled
        self._waiting: deque[_Waiter] = deque()
        self._timer: asyncio.TimerHandle | None = None
        # When each held slot was taken, oldest first (a release takes out the oldest: the
        # front is the start of the last `total` jobs, the window's turnover).
        self._starts: deque[float] = deque()
        self._turnover_timer: asyncio.TimerHandle | None = None
        self._closed = False

    # --- presence -----------------------------------------------------------------------------

    def enter(self, account: str, *, window: bool) -> None:
        """A job of `account` came: a delivery of the request queue (`window`) or of its lane."""
        self._present[account] += 1
        if self._waiting and self._waiting[0].account != account:
            self._company_came(account)
        if len(self._present) > 1:
            self.window.company()
        if window:
            self._held += 1
            if self._held >= self.window.size and self._waiting:
                self._look()

    def leave(self, account: str, *, window: bool) -> None:
        if window:
            self._held -= 1
        self._present[account] -= 1
        if not self._present[account]:
            del self._present[account]
            self._left[account] = self._clock()

    def contended(self, account: str) -> bool:
        """Whether another account is present (or was, within `PRESENT_FOR` s)."""
        present = self._present
        if len(present) > 1 or (present and account not in present):
            return True
        if not self._left:
            return False
        since = self._clock() - PRESENT_FOR
        for name, left in list(self._left.items()):
            if left < since:
                del self._left[name]
            elif name != account:
                return True
        return False

    # --- slots ----------------------------------------------------------------------------

    def may_run(self, account: str) -> bool:
        if self._direct_total >= self.total:
            return False
        cap = self.per_account if self.contended(account) else self.total
        return self._direct[account] < cap

    def take(self, account: str) -> None:
        """Hold a direct slot (also past the limits: a job whose move failed runs here)."""
        self._direct[account] += 1
        self._direct_total += 1
        self._starts.append(self._clock())
        if self._direct_total >= self.total:
            self._watch_turnover()

    def release(self, account: str) -> None:
        self._direct_total -= 1
        self._direct[account] -= 1
        if not self._direct[account]:
            del self._direct[account]
        self._starts.popleft()
        self._hand_over()

    async def turn(self, account: str) -> Turn:
        """RUN (a slot is held: `release` it) or MOVE, at once or after waiting in the window;
        LEAVE once the worker stops."""
        if self._closed:
            return Turn.LEAVE
        if self.may_run(account):
            self.take(account)
            return Turn.RUN
        if self.contended(account):
            return Turn.MOVE
        waiter = _Waiter(account, self._clock(), asyncio.get_running_loop().create_future())
        self._waiting.append(waiter)
        self._arm()
        try:
            return await waiter.turn
        except asyncio.CancelledError:
            # Granted a slot and cancelled before using it: the slot goes back.
            turn = waiter.turn
            if turn.done() and not turn.cancelled() and turn.result() is Turn.RUN:
                self.release(account)
            raise

    def close(self) -> int:
        """The worker stops: the jobs waiting for a slot are not started here (their deliveries
        go back to the broker with the connection, for another worker). Returns how many."""
        self._closed = True
        left = 0
        for waiter in self._waiting:
            if not waiter.turn.done():
                waiter.turn.set_result(Turn.LEAVE)
                left += 1
        self._waiting.clear()
        for timer in (self._timer, self._turnover_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._turnover_timer = None
        self.window.close()
        return left

    @property
    def waiting(self) -> int:
        return sum(1 for w in self._waiting if not w.turn.done())

    def _hand_over(self) -> None:
        """Freed slots go to the waiting jobs, oldest first."""
        waiting = self._waiting
        while waiting and self._direct_total < self.total:
            head = waiting[0]
            if head.turn.done():  # cancelled
                waiting.popleft()
                continue
            if not self.may_run(head.account):
                return
            waiting.popleft()
            self.take(head.account)
            head.turn.set_result(Turn.RUN)

    def _company_came(self, account: str) -> None:
        """Another account's job arrived: the jobs waiting for a slot move to their lanes."""
        kept: deque[_Waiter] = deque()
        for waiter in self._waiting:
            if waiter.turn.done():
                continue
            if waiter.account == account:
                kept.append(waiter)
            else:
                waiter.turn.set_result(Turn.MOVE)
        self._waiting = kept

    # --- the look-ahead -------------------------------------------------------------------

    def _slow(self) -> bool:
        """Whether the jobs turn over slowly: the oldest job waiting for a slot has waited the
        window's `widen_after`, or every slot is held and the last `total` jobs started over
        more than `widen_after` (the narrow window holds no more than the slots, so nothing
        waits in it: the wait is in the queue)."""
        widen_after = self.window.widen_after
        for waiter in self._waiting:
            if not waiter.turn.done():
                return self._clock() - waiter.since >= widen_after
        return self._slow_turnover()

    def _slow_turnover(self) -> bool:
        return (
            self._direct_total >= self.total
            and bool(self._starts)
            and self._clock() - self._starts[0] >= self.window.widen_after
        )

    def _watch_turnover(self) -> None:
        """Every slot is held: look again once the oldest start is `widen_after` old."""
        if self._turnover_timer is not None or self.window.is_wide or self._closed:
            return
        delay = self._starts[0] + self.window.widen_after - self._clock()
        loop = asyncio.get_running_loop()
        self._turnover_timer = loop.call_later(max(delay, 0.0), self._on_turnover_timer)

    def _on_turnover_timer(self) -> None:
        self._turnover_timer = None
        if self.window.is_wide or self._direct_total < self.total:
            return  # widened meanwhile, or a slot is free: looked at again when all are held
        if self._slow_turnover():
            self.window.slow()
        else:
            self._watch_turnover()

    def _arm(self) -> None:
        if self._timer is not None or not self._waiting:
            return
        if not self.window.is_wide and self._slow():
            self.window.slow()
        # Narrow: first the wait that widens the window; then the look-ahead's.
        patience = self._look_ahead if self.window.is_wide else self.window.widen_after
        delay = self._waiting[0].since + patience - self._clock()
        if delay > 0:
            self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)
        # else: aged, but the window was not full; looked at again when it fills (`enter`).

    def _on_timer(self) -> None:
        self._timer = None
        if not self.window.is_wide and self._slow():
            self.window.slow()
        self._look()

    def _look(self) -> None:
        """With the window full, the jobs that waited `look_ahead` s for a slot move."""
        waiting = self._waiting
        if self._held >= self.window.size:
            aged = self._clock() - self._look_ahead
            while waiting and (waiting[0].turn.done() or waiting[0].since <= aged):
                waiter = waiting.popleft()
                if not waiter.turn.done():
                    waiter.turn.set_result(Turn.MOVE)
        while waiting and waiting[0].turn.done():
            waiting.popleft()
        self._arm()
