"""Coalescing: calls for one account that are ready at about the same time travel together, as
one Composite request (one API call), instead of one request each.

Only a busy account waits: a call that comes less than twice the wait after the account's
previous call (or while others wait) joins the account's open group and waits for company at
most `wait`, and never so long that less than `wait` of its own deadline is left. A call to a
quiet account goes at once, with only the calls ready at the same moment (a burst taken off the
queue together): at low load nothing waits. The group leaves as soon as it is full
(25 calls, or 5 queries: the limits of the Composite resource) or when the wait of its most
pressed member ends. A call that found no company is handed back, to be sent by its own job as a
single call (no other delay than the wait). A group of two or more is sent by `together`, which
returns one answer per call, in order; each waiting job gets exactly its own.

The batcher knows nothing of HTTP, tokens or answers: the transport (transport.py) decides which
calls may travel together (composite.supports), sends them, and says what an answer means for each
job.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from worker.accounts import Account
from worker.deadline import Deadline
from worker.observability.metrics import Metrics
from worker.salesforce.composite import MAX_QUERIES, MAX_SUBREQUESTS

log = logging.getLogger(__name__)

T = TypeVar("T")  # one call, as the transport needs it to send it
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


@dataclass(eq=False)
class _Group(Generic[T, R]):
    members: list[_Member[T, R]] = field(default_factory=list)
    leave_at: float = math.inf
    timer: asyncio.TimerHandle | None = None

    @property
    def queries(self) -> int:
        return sum(1 for m in self.members if m.query)

    @property
    def full(self) -> bool:
        return len(self.members) >= MAX_SUBREQUESTS or self.queries >= MAX_QUERIES


class Coalescer(Generic[T, R]):
    def __init__(
        self,
        wait_seconds: float,
        together: Callable[[Account, list[T]], Awaitable[list[R]]],
        metrics: Metrics,
    ) -> None:
        self._wait = wait_seconds
        self._together = together
        self._metrics = metrics
        self._open: dict[str, _Group[T, R]] = {}
        self._accounts: dict[str, Account] = {}
        self._last_call: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def enabled(self, account: Account) -> bool:
        return self._wait > 0 and account.coalesce and not self._closed

    async def join(self, account: Account, item: T, *, deadline: Deadline, query: bool) -> R | None:
        """Wait for company: the call's answer when it travelled with others, or None when its
        account is quiet or it found none (the caller then sends it alone, now). Cancelling a
        call that has not left takes it out of its group; one that has left is sent anyway (its
        answer is dropped)."""
        if not self.enabled(account):
            return None
        loop = asyncio.get_running_loop()
        now = loop.time()
        previous = self._last_call.get(account.name)
        self._last_call[account.name] = now
        group = self._open.get(account.name)
        busy = group is not None or (previous is not None and now - previous < 2 * self._wait)
        member: _Member[T, R] = _Member(item, query, now, loop.create_future())
        if group is None:
            group = self._open[account.name] = _Group()
            self._accounts[account.name] = account
        group.members.append(member)
        # Quiet: only the calls ready at this very moment go along.
        leave_at = min(now + self._wait, max(now, deadline.at - self._wait)) if busy else now
        if group.full:
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
        self._metrics.composite_requests.labels(name).inc()
        self._metrics.composite_subrequests.labels(name).inc(len(members))
        self._metrics.api_calls_saved.labels(name).inc(len(members) - 1)
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
