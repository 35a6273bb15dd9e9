"""The API reserve: when an org has used `api_reserve_percent` of its daily API allowance, its
jobs are answered RATE_LIMITED without calling Salesforce, keeping the rest for the agents' own
use of the org.

Usage comes from every response's `Sforce-Limit-Info` and, with Redis, from the whole fleet:
a reading that crosses the reserve (either way) is shared at once, others within
`SFWORKER_USAGE_SHARE_SECONDS`, and every worker reads the fleet's newest reading twice in that
time (the board keeps the newest reading: an older one never overwrites it). While an account
is held back, one worker of the fleet reads `/limits` every `SFWORKER_LIMITS_PROBE_SECONDS`, so a
raised limit or the rolling 24-hour window ending lets work resume.

At start each account's usage is learnt once for the whole fleet (`prime`): from the fleet's
reading when there is one younger than `STALE_AFTER_SHARES` share periods, else one worker reads
`/limits` (its turn at the probe), so the usage gauges show the org's usage before the first job.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

from worker.accounts import Account
from worker.deadline import Deadline
from worker.observability.metrics import Metrics
from worker.stores.usage_board import UsageBoard, UsageReading

log = logging.getLogger(__name__)

LimitsProbe = Callable[[Account], Awaitable[UsageReading | None]]
_FIRST_READ_WAIT = 3.0  # at most this long does a first job wait to learn the usage
# At start a fleet reading older than this many share periods is not trusted: the org's usage
# may have moved any way since (a fleet that stopped hours ago left "13 of 13" behind).
STALE_AFTER_SHARES = 4


def held_back(account: Account, reading: UsageReading) -> bool:
    return reading.limit > 0 and reading.used * 100 >= account.api_reserve_percent * reading.limit


class ApiReserve:
    def __init__(
        self,
        board: UsageBoard,
        metrics: Metrics,
        *,
        share_every: float = 1.0,
        probe_every: float = 5.0,
    ) -> None:
        self._board = board
        self._metrics = metrics
        self._share_every = share_every
        self._probe_every = probe_every
        self._trusted_for = STALE_AFTER_SHARES * share_every
        self._probe: LimitsProbe | None = None
        self._known: dict[str, tuple[UsageReading, float]] = {}
        self._accounts: dict[str, Account] = {}
        self._dirty: set[str] = set()
        self._last_probe: dict[str, float] = {}
        self._first_reads: dict[str, asyncio.Task[None]] = {}
        self._sharing: set[asyncio.Future[None]] = set()
        self._task: asyncio.Task[None] | None = None

    def attach(self, probe: LimitsProbe) -> None:
        """The call that reads /limits (the transport's)."""
        self._probe = probe

    # --- read by the transport -------------------------------------------------------------

    def observe(self, account: Account, reading: UsageReading) -> None:
        at = time.time()
        if self._remember(account, reading, at):
            # Crossing the reserve (either way): every worker must know now, not next tick.
            self._dirty.discard(account.name)
            self._spawn(self._board.publish(account.name, reading, at), "usage-share")
        else:
            self._dirty.add(account.name)
        self._ensure_running()

    def refusal(self, account: Account) -> str | None:
        """Why a call for this account must not be sent now, or None."""
        known = self._known.get(account.name)
        if known is None or not held_back(account, known[0]):
            return None
        reading = known[0]
        percent = reading.used * 100 / reading.limit
        return (
            f"the org has used {percent:.0f}% of its daily API requests ({reading.used:,} of "
            f"{reading.limit:,}); sfworker keeps the last {100 - account.api_reserve_percent:g}% "
            f"for the org's other users (api_reserve_percent = {account.api_reserve_percent:g}), "
            "so Salesforce was not called"
        )

    async def ensure_known(self, account: Account, deadline: Deadline) -> None:
        """With a fleet: before the first call for an account, learn its usage (bounded)."""
        if not self._board.shared or account.name in self._known:
            return
        task = self._first_reads.get(account.name)
        if task is None:
            task = asyncio.create_task(self._first_read(account), name=f"usage:{account.name}")
            self._first_reads[account.name] = task
        wait = min(_FIRST_READ_WAIT, deadline.remaining())
        if wait > 0:
            await asyncio.wait({task}, timeout=wait)

    def prime(self, accounts: Iterable[Account]) -> None:
        """At start: learn each account's usage once for the fleet, in the background (a
        worker whose Redis is out of reach leaves it to its first responses: it cannot tell
        whether the fleet read /limits already)."""
        if self._board.fleet and not self._board.shared:
            return
        for account in accounts:
            if account.name not in self._first_reads and account.name not in self._known:
                self._first_reads[account.name] = asyncio.create_task(
                    self._first_read(account), name=f"usage:{account.name}"
                )

    async def primed(self) -> None:
        """Wait for the reads `prime` started (tests use it to count calls from a quiet org)."""
        if self._first_reads:
            await asyncio.wait(set(self._first_reads.values()))

    # --- fleet sharing ---------------------------------------------------------------------

    def _spawn(self, work: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(work)
        task.set_name(name)
        self._sharing.add(task)
        task.add_done_callback(self._shared)

    def _shared(self, task: asyncio.Future[None]) -> None:
        self._sharing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("sharing the API usage failed", exc_info=task.exception())

    def _remember(self, account: Account, reading: UsageReading, at: float) -> bool:
        """Keep the reading if it is the newest known; True when it moved the account across
        its reserve (held back, or free again)."""
        self._accounts[account.name] = account
        previous = self._known.get(account.name)
        if previous is not None and previous[1] > at:
            return False
        was_held = previous is not None and held_back(account, previous[0])
        self._known[account.name] = (reading, at)
        self._show(account.name, reading)
        now_held = held_back(account, reading)
        if now_held != was_held:
            log.warning(
                "API reserve reached: jobs answered RATE_LIMITED without calling Salesforce"
                if now_held
                else "API usage back under the reserve: calling Salesforce again",
                extra={
                    "account": account.name,
                    "used": reading.used,
                    "limit": reading.limit,
                    "reserve_percent": account.api_reserve_percent,
                },
            )
            return True
        return False

    def _show(self, name: str, reading: UsageReading) -> None:
        """The usage gauges follow the newest reading, whoever made it."""
        m = self._metrics
        m.api_usage_used.labels(name).set(reading.used)
        m.api_usage_limit.labels(name).set(reading.limit)
        if reading.app_used is not None and reading.app_limit is not None:
            m.app_api_usage_used.labels(name).set(reading.app_used)
            m.app_api_usage_limit.labels(name).set(reading.app_limit)

    async def _first_read(self, account: Account) -> None:
        self._accounts[account.name] = account
        self._ensure_running()
        try:
            shared = self._recent(await self._board.read(account.name))
            if shared is not None:
                self._remember(account, *shared)
                return
            if await self._board.take_probe_turn(account.name, self._probe_every):
                await self._read_limits(account)
                return
            # Another worker is reading /limits: its reading will be on the board.
            give_up = time.monotonic() + _FIRST_READ_WAIT
            while time.monotonic() < give_up and account.name not in self._known:
                await asyncio.sleep(0.05)
                shared = self._recent(await self._board.read(account.name))
                if shared is not None:
                    self._remember(account, *shared)
        except Exception:
            log.exception("reading the API usage failed", extra={"account": account.name})

    def _recent(
        self, shared: tuple[UsageReading, float] | None
    ) -> tuple[UsageReading, float] | None:
        """A fleet reading young enough to start from (`STALE_AFTER_SHARES` share periods)."""
        if shared is None or time.time() - shared[1] > self._trusted_for:
            return None
        return shared

    async def _read_limits(self, account: Account) -> None:
        self._last_probe[account.name] = time.monotonic()
        if self._probe is None:
            return
        reading = await self._probe(account)
        outcome = "ok" if reading is not None else "error"
        self._metrics.limits_probes.labels(account.name, outcome).inc()
        if reading is not None:
            at = time.time()
            self._remember(account, reading, at)
            await self._board.publish(account.name, reading, at)

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="api-reserve")

    async def _run(self) -> None:
        while True:
            # Twice per share period: a reading shared at once reaches every worker within
            # half of it.
            await asyncio.sleep(self._share_every / 2)
            try:
                await self._tick()
            except Exception:
                log.exception("sharing the API usage failed")

    async def _tick(self) -> None:
        dirty, self._dirty = self._dirty, set()
        for name in dirty:
            reading, at = self._known[name]
            await self._board.publish(name, reading, at)
        for name, account in list(self._accounts.items()):
            shared = await self._board.read(name)
            if shared is not None:
                self._remember(account, *shared)
            known = self._known.get(name)
            if known is None or not held_back(account, known[0]):
                continue
            due = self._last_probe.get(name, 0.0) + self._probe_every
            if time.monotonic() >= due and await self._board.take_probe_turn(
                name, self._probe_every
            ):
                await self._read_limits(account)

    async def close(self) -> None:
        tasks = [
            t for t in (self._task, *self._first_reads.values(), *self._sharing) if t is not None
        ]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
