"""Coalescing: calls for one account that are ready at about the same time travel together, as
one Composite request (one API call), instead of one request each.

Two policies decide when a group leaves (SFWORKER_COALESCE_POLICY):
- adaptive (the default): each account's pace is measured, the gaps between its calls and the
  round trip of its requests (`flight`, around every request). A call goes at once, with only
  the calls ready at the same moment, unless company is likely within one round trip (the
  account's calls come faster than its requests return): at low load nothing waits. Otherwise
  it joins the account's open group, which leaves when its oldest call has waited half a round
  trip, or sooner when it holds the calls of 0.6 of a round trip (a pair at least); when the
  account's last request in flight returns (group commit: the calls that became ready meanwhile
  go together); after at most twice a round trip (and `max_wait`); or when less than a round
  trip is left of a member's deadline. A group that could leave still lingers until its second
  call has waited `linger`, taking the calls that come meanwhile (the price: at most `linger`
  for the calls that found company at once). Under load the groups grow by themselves, and
  the time rule, not a count, bounds the longest wait.
- window: a call that comes less than twice the wait after the account's previous call (or while
  others wait) waits for company at most `wait`, never so long that less than `wait` of its own
  deadline is left; a call to a quiet account goes at once with the calls ready at that moment.
Either way a group leaves as soon as it is full (the limits of the Composite resource: 25
subrequests, 5 of them queries, kept by each group's `Tally` as its calls join, after lookups of
one shape are merged: merging.Planner). A call that found no company is handed back, to be sent
by its own job as a single call. A group of two or more is sent by `together`, which returns
one answer per call, in order; each waiting job gets exactly its own.

The batcher knows nothing of HTTP, tokens or answers: the transport (transport.py) decides which
calls may travel together (composite.supports), sends them, and says what an answer means for each
job.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from worker.accounts import Account
from worker.deadline import Deadline
from worker.observability.metrics import Metrics
from worker.salesforce.composite import MAX_QUERIES, MAX_SUBREQUESTS

log = logging.getLogger(__name__)

T = TypeVar("T")  # one call, as the transport needs it to send it
T_contra = TypeVar("T_contra", contravariant=True)
R = TypeVar("R")  # its answer


class CoalescerClosed(RuntimeError):
    """The worker is stopping; a call that was waiting to be sent never will be."""


@dataclass(eq=False)
class _Member(Generic[T, R]):
    item: T
    query: bool
    joined: float
    # Its answer, or None: no company, send it alone.
    future: asyncio.Future[R | None]


class Tally(Protocol[T_contra]):
    """A group's Composite counts, kept as its calls join: `add` plans one more call and
    answers the subrequests and query-type subrequests so far."""

    def add(self, item: T_contra, query: bool) -> tuple[int, int]: ...


class _EachAlone:
    """Every call a subrequest of its own."""

    def __init__(self, account: Account) -> None:
        self._subrequests = 0
        self._queries = 0

    def add(self, item: object, query: bool) -> tuple[int, int]:
        self._subrequests += 1
        self._queries += query
        return self._subrequests, self._queries


@dataclass(eq=False)
class _Group(Generic[T, R]):
    tally: Tally[T]
    members: list[_Member[T, R]] = field(default_factory=list)
    leave_at: float = math.inf
    timer: asyncio.TimerHandle | None = None


@dataclass
class _Pace:
    """What the adaptive policy knows of one account: how often its calls come (a moving
    average of the gaps between them), how long its requests take, how many are in flight."""

    gap: float | None = None
    last: float | None = None
    rtt: float = 0.0
    started: list[float] = field(default_factory=list)  # of the requests in flight

    def arrive(self, now: float) -> None:
        """A call is ready. Calls ready at the same moment (a burst taken off the queue) go
        together anyway: only the gaps between moments tell the pace."""
        if self.last is not None and now > self.last:
            gap = now - self.last
            self.gap = gap if self.gap is None else self.gap + _SMOOTHING * (gap - self.gap)
        self.last = now

    def round_trip(self, now: float) -> float:
        """The account's round trip: its average, or (none returned yet) the age of its
        oldest request in flight."""
        if self.rtt:
            return self.rtt
        return now - min(self.started) if self.started else 0.0

    def company(self, now: float) -> float:
        """Calls expected to become ready during one round trip."""
        return self.round_trip(now) / self.gap if self.gap else 0.0


_SMOOTHING = 0.1
_TARGET_SHARE = 0.5  # a group's oldest call waits at most half a round trip, once it has company
_COUNT_SHARE = 0.6  # or the group leaves when it holds the calls of 0.6 of a round trip
_MIN_MARGIN = 0.005


class Coalescer(Generic[T, R]):
    def __init__(
        self,
        wait_seconds: float,
        together: Callable[[Account, list[T]], Awaitable[list[R]]],
        metrics: Metrics,
        *,
        adaptive: bool = False,
        max_wait_seconds: float = 0.25,
        linger_seconds: float = 0.0,
        tally: Callable[[Account], Tally[T]] | None = None,
    ) -> None:
        self._wait = wait_seconds
        self._adaptive = adaptive
        self._max_wait = max_wait_seconds
        self._linger = linger_seconds
        self._together = together
        self._metrics = metrics
        self._tally: Callable[[Account], Tally[T]] = tally or _EachAlone
        self._open: dict[str, _Group[T, R]] = {}
        self._accounts: dict[str, Account] = {}
        self._last_call: dict[str, float] = {}
        self._pace: dict[str, _Pace] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def enabled(self, account: Account) -> bool:
        return self._wait > 0 and account.coalesce and not self._closed

    def round_trip(self, account: Account) -> float:
        """The account's usual round trip so far (0.0 before its first request returned)."""
        pace = self._pace.get(account.name)
        return pace.rtt if pace is not None else 0.0

    @contextmanager
    def flight(self, account: Account) -> Iterator[None]:
        """Around every request of the account: what the adaptive policy counts (requests in
        flight, their round trip); when the last one returns, the calls that became ready
        meanwhile leave together (group commit)."""
        pace = self._pace.setdefault(account.name, _Pace())
        loop = asyncio.get_running_loop()
        started = loop.time()
        pace.started.append(started)
        try:
            yield
        finally:
            pace.started.remove(started)
            took = loop.time() - started
            pace.rtt = took if not pace.rtt else pace.rtt + _SMOOTHING * (took - pace.rtt)
            group = self._open.get(account.name)
            if self._adaptive and group and len(group.members) >= 2 and not pace.started:
                self._leave(account.name)

    @staticmethod
    def _over(counts: tuple[int, int]) -> bool:
        subrequests, queries = counts
        return subrequests > MAX_SUBREQUESTS or queries > MAX_QUERIES

    @staticmethod
    def _full(counts: tuple[int, int]) -> bool:
        subrequests, queries = counts
        return subrequests >= MAX_SUBREQUESTS or queries >= MAX_QUERIES

    def _adaptive_leave(
        self, pace: _Pace, group: _Group[T, R] | None, now: float, deadline: Deadline
    ) -> float:
        """When the group, with one more call, leaves: at once (at the end of this moment, so
        that calls ready at the same moment go along) when company is unlikely within a round
        trip. A lone call waits for company at most twice a round trip (and `max_wait`); once
        the group has company it leaves when its oldest call has waited half a round trip, or
        when it holds the calls of 0.6 of one, but not before its second call has lingered
        (`linger`). Never so late that less than a round trip of the call's deadline is left;
        the account's last request returning sends a group at once (`flight`)."""
        company, round_trip = pace.company(now), pace.round_trip(now)
        if company < 1:
            return now
        if group is None:
            due = now + min(self._max_wait, 2 * round_trip)
        else:
            members = group.members
            due = members[0].joined + _TARGET_SHARE * round_trip
            if 1 + len(members) >= max(2, math.ceil(company * _COUNT_SHARE)):
                due = now
            second = members[1].joined if len(members) > 1 else now
            due = max(due, second + self._linger)
        return min(due, max(now, deadline.at - max(round_trip, _MIN_MARGIN)))

    async def join(self, account: Account, item: T, *, deadline: Deadline, query: bool) -> R | None:
        """Wait for company: the call's answer when it travelled with others, or None when its
        account is quiet or it found none (the caller then sends it alone, now). Cancelling a
        call that has not left takes it out of its group; one that has left is sent anyway (its
        answer is dropped)."""
        if not self.enabled(account):
            return None
        loop = asyncio.get_running_loop()
        now = loop.time()
        pace = self._pace.setdefault(account.name, _Pace())
        pace.arrive(now)
        group = self._open.get(account.name)
        member: _Member[T, R] = _Member(item, query, now, loop.create_future())
        # The group's counts with this call planned in; over the limits, the group leaves
        # without it (and its tally with it) and the call starts the next one.
        counts = group.tally.add(item, query) if group is not None else None
        if counts is not None and self._over(counts):
            self._leave(account.name)
            group = None
        target: float
        if self._adaptive:
            leave_at = self._adaptive_leave(pace, group, now, deadline)
            # Only the Composite limits, counted after lookups merge (`_full`), fill a group.
            target = math.inf
        else:
            previous = self._last_call.get(account.name)
            busy = group is not None or (previous is not None and now - previous < 2 * self._wait)
            # Quiet: only the calls ready at this very moment go along.
            leave_at = min(now + self._wait, max(now, deadline.at - self._wait)) if busy else now
            target = MAX_SUBREQUESTS
        self._last_call[account.name] = now
        if group is None:
            group = self._open[account.name] = _Group(self._tally(account))
            self._accounts[account.name] = account
            counts = group.tally.add(item, query)
        assert counts is not None
        group.members.append(member)
        if len(group.members) >= target or self._full(counts):
            self._leave(account.name)
        elif leave_at < group.leave_at:
            group.leave_at = leave_at
            if group.timer is not None:
                group.timer.cancel()
            group.timer = loop.call_at(leave_at, self._leave, account.name)
        try:
            return await asyncio.shield(member.future)
        except asyncio.CancelledError:
            self._forget(account.name, group, member)
            raise

    def _forget(self, name: str, group: _Group[T, R], member: _Member[T, R]) -> None:
        # Its call stays in the group's tally: the group may leave a call early, never late.
        if self._open.get(name) is not group or member not in group.members:
            return
        group.members.remove(member)
        if not group.members:
            del self._open[name]
            if group.timer is not None:
                group.timer.cancel()

    def _leave(self, name: str) -> None:
        group = self._open.pop(name, None)
        if group is None:
            return
        if group.timer is not None:
            group.timer.cancel()
        members = [m for m in group.members if not m.future.done()]
        if not members:
            return
        account = self._accounts[name]
        now = asyncio.get_running_loop().time()
        for member in members:
            self._metrics.coalesce_wait.labels(name).observe(now - member.joined)
        self._metrics.coalesced_calls.labels(name).observe(len(members))
        if len(members) == 1:
            members[0].future.set_result(None)
            return
        task = asyncio.get_running_loop().create_task(self._send(account, members))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, account: Account, members: list[_Member[T, R]]) -> None:
        name = account.name
        try:
            answers = await self._together(account, [m.item for m in members])
        except asyncio.CancelledError:
            self._fail(members, CoalescerClosed("the worker stopped before the call was sent"))
            raise
        except Exception as exc:  # a bug in `together`: fail the calls rather than hang them
            log.exception("coalesced request failed", extra={"account": name})
            self._fail(members, exc)
            return
        for member, answer in zip(members, answers, strict=True):
            if not member.future.done():
                member.future.set_result(answer)

    @staticmethod
    def _fail(members: list[_Member[T, R]], exc: BaseException) -> None:
        for member in members:
            if not member.future.done():
                member.future.set_exception(exc)
                # A job that stopped waiting never reads it; mark it seen.
                member.future.add_done_callback(_consume)

    async def close(self) -> None:
        """Stop coalescing; calls still waiting go alone, requests in flight are cancelled."""
        self._closed = True
        for name in list(self._open):
            self._leave_alone(name)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _leave_alone(self, name: str) -> None:
        group = self._open.pop(name)
        if group.timer is not None:
            group.timer.cancel()
        for member in group.members:
            if not member.future.done():
                member.future.set_result(None)


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
