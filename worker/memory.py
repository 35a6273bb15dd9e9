"""The memory budget of one process: the bytes held for work in flight, counted against one
limit (SFWORKER_MEMORY_BUDGET_BYTES), so that a flood of large jobs or large answers waits
instead of growing the process until Kubernetes kills it.

What is counted, per job (a `Hold`, opened when a delivery is taken and released when it is
settled): its request body (`BODY_FACTOR` times: the bytes, the decoded job, the request sent),
and every byte read from Salesforce (`READ_FACTOR` times: the bytes read, their decoded form, the
result built from them). A job first takes `ALLOWANCE` beyond its body, so the small answers of
writes never wait while their request is out.

Who waits:
- everyone keeps `ceiling` (the most one job may hold) free for the oldest job in flight: a job
  takes bytes only while the total stays under `limit - ceiling`;
- the oldest job in flight may use that headroom (up to `limit`): the job the others wait for
  can always finish, so waiting jobs never wait for each other in a circle;
- a job that would hold more than `ceiling` on its own never fits: `OverBudget`, and the job
  is answered RESULT_TOO_LARGE rather than waiting;
- waiting is bounded by the caller (the job's deadline): the caller wraps it in a timeout.

What is not counted here: deliveries the broker has handed over but no job has taken yet. Those
are bounded at start instead (`fit_deliveries`): the prefetch windows times
SFWORKER_MAX_MESSAGE_BYTES must fit half the budget, or the windows are narrowed.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Iterable
from typing import Protocol

from worker.settings import Settings

log = logging.getLogger(__name__)

BODY_FACTOR = 3
READ_FACTOR = 3
ALLOWANCE = 64 * 1024
DELIVERY_SHARE = 2  # deliveries held in the prefetch windows: at most half the budget


class OverBudget(Exception):
    """One job alone would hold more than the budget allows any job."""

    def __init__(self, wanted: int, ceiling: int) -> None:
        super().__init__(
            f"the job would hold {wanted:,} bytes of memory, more than the {ceiling:,} one job "
            "may hold (SFWORKER_MEMORY_BUDGET_BYTES)"
        )
        self.wanted = wanted
        self.ceiling = ceiling


class MemoryBudget:
    def __init__(self, limit: int, ceiling: int | None = None) -> None:
        self.limit = limit
        self.ceiling = ceiling if ceiling is not None else limit // 4
        self.used = 0
        self._seq = itertools.count()
        self._live: dict[int, Hold] = {}  # in the order they were opened: the first is oldest
        self._changed = asyncio.Event()
        self.waiting = 0

    @classmethod
    def of(cls, settings: Settings) -> MemoryBudget:
        return cls(settings.memory_budget_bytes)

    def open(self) -> Hold:
        """A job's hold, empty: it takes bytes as it needs them."""
        hold = Hold(self, next(self._seq))
        self._live[hold.seq] = hold
        return hold

    def lend(self, seq: int) -> Hold:
        """A hold of its own for a request read for several jobs, in the place of the job
        `seq` (the oldest among them: it may use the oldest's headroom)."""
        return Hold(self, seq, live=False)

    def _oldest(self, hold: Hold) -> bool:
        return next(iter(self._live)) == hold.seq

    def _fits(self, hold: Hold, nbytes: int) -> bool:
        room = self.limit if self._oldest(hold) else self.limit - self.ceiling
        return self.used + nbytes <= room

    async def _take(self, hold: Hold, nbytes: int) -> None:
        if hold.size + nbytes > self.ceiling:
            raise OverBudget(hold.size + nbytes, self.ceiling)
        if not self._fits(hold, nbytes):
            self.waiting += 1
            try:
                while not self._fits(hold, nbytes):
                    self._changed.clear()
                    await self._changed.wait()
            finally:
                self.waiting -= 1
        self.used += nbytes
        hold.size += nbytes

    def _release(self, hold: Hold) -> None:
        if hold.live and self._live.pop(hold.seq, None) is None:
            return
        self.used -= hold.size
        hold.size = 0
        self._changed.set()  # every waiter looks again (the oldest may have changed too)


class Hold:
    """The bytes one job holds; released once, when its delivery is settled."""

    __slots__ = ("_budget", "live", "seq", "size")

    def __init__(self, budget: MemoryBudget, seq: int, *, live: bool = True) -> None:
        self._budget = budget
        self.seq = seq
        self.size = 0
        self.live = live

    async def take(self, nbytes: int) -> None:
        """`nbytes` more, once they fit (wait: the caller bounds it by the job's deadline); or
        OverBudget when this job alone would pass the ceiling."""
        if nbytes > 0:
            await self._budget._take(self, nbytes)

    async def read(self, nbytes: int) -> None:
        """Bytes read from Salesforce: counted READ_FACTOR times, beyond the job's allowance."""
        await self.take(nbytes * READ_FACTOR)

    def settle(self, nbytes: int) -> None:
        """The reading of a response of `nbytes` ended: what was read stays counted."""

    def charge(self, nbytes: int) -> None:
        """Bytes this job holds already (its share of a request read for several): counted
        without waiting."""
        self._budget.used += nbytes
        self.size += nbytes

    def release(self) -> None:
        self._budget._release(self)


class Reading(Protocol):
    """What reading a response counts its bytes on."""

    async def read(self, nbytes: int) -> None: ...

    def settle(self, nbytes: int) -> None: ...


class SharedRead:
    """A response read for several jobs (a Composite request): counted, while it is read, on a
    hold of its own in the place of the oldest of them (so the oldest job in flight is never
    held back by its company); once read, each job holds its share."""

    def __init__(self, holds: list[Hold]) -> None:
        self._holds = holds
        oldest = min(holds, key=lambda h: h.seq)
        self._reading = oldest._budget.lend(oldest.seq)

    async def read(self, nbytes: int) -> None:
        await self._reading.read(nbytes)

    def settle(self, nbytes: int) -> None:
        self._reading.release()
        share = nbytes * READ_FACTOR // len(self._holds)
        for hold in self._holds:
            hold.charge(share)


def shared(holds: Iterable[Hold | None]) -> Reading | None:
    """What a request read for these jobs counts on: the one job's hold, or a SharedRead."""
    found = [h for h in holds if h is not None]
    if len(found) < 2:
        return found[0] if found else None
    return SharedRead(found)


def fit_deliveries(settings: Settings, accounts: int, tenants: int = 0) -> Settings:
    """The prefetch windows narrowed so that the deliveries they may hold (at most
    SFWORKER_MAX_MESSAGE_BYTES each) fit their share of the budget: the routing window first,
    then the lanes', the tenant queues' and the direct one (SFWORKER_PREFETCH); refused
    (ValueError) when not even one delivery a window fits. `tenants`: tenant queues consumed
    (strict mode)."""
    share = settings.memory_budget_bytes // DELIVERY_SHARE
    size = settings.max_message_bytes
    lanes = accounts if settings.fair_share else 0
    queues = tenants if settings.tenant_queues else 0
    held = settings.request_prefetch + lanes * settings.prefetch + queues * settings.tenant_prefetch
    if held * size <= share:
        return settings
    fits = share // size  # deliveries that fit
    windows = 1 + lanes + queues
    prefetch = min(settings.prefetch, fits // windows)
    if prefetch < 1:
        raise ValueError(
            f"SFWORKER_MAX_MESSAGE_BYTES {size:,} does not fit: the worker's {windows} "
            f"prefetch windows (the request queue's, {lanes} lanes' and {queues} tenant "
            f"queues') may hold that much each, more than half of SFWORKER_MEMORY_BUDGET_BYTES "
            f"({share:,} bytes); lower the message size or raise the budget"
        )
    tenant_prefetch = min(settings.tenant_prefetch, prefetch)
    others = lanes * prefetch + queues * tenant_prefetch
    routing = max(prefetch, fits - others) if settings.fair_share else prefetch
    log.warning(
        "prefetch windows narrowed to fit the memory budget: the deliveries they may hold "
        "(SFWORKER_MAX_MESSAGE_BYTES each) must fit half of SFWORKER_MEMORY_BUDGET_BYTES",
        extra={
            "routing_prefetch": f"{settings.routing_prefetch} -> {routing}",
            "prefetch": f"{settings.prefetch} -> {prefetch}",
            "tenant_prefetch": f"{settings.tenant_prefetch} -> {tenant_prefetch}",
            "max_message_bytes": size,
            "delivery_share_bytes": share,
        },
    )
    return settings.model_copy(
        update={
            "routing_prefetch": routing,
            "prefetch": prefetch,
            "tenant_prefetch": tenant_prefetch,
        }
    )
