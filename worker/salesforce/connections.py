"""Connections per account: each account's calls to Salesforce draw on a budget of the HTTP pool
(`SFWORKER_HTTP_POOL_SIZE`) of their own, so one account's slow calls never hold the connections
another account's calls need.

The budgets add up to no more than the pool. An account gets its `max_concurrency` when the pool
has room for every account's; otherwise the pool is shared out evenly, an account whose cap is
below its even part keeping only its cap and leaving the rest to the others. An account whose
budget covers its cap never waits here (its slot, stores/slots.py, already bounds its calls).

A call waits for a connection of its account's budget at most `SFWORKER_HTTP_CONNECT_TIMEOUT_
SECONDS` (as aiohttp's connect timeout counts the wait for a pooled connection), and at most
until the job's deadline: then the call is answered for what happened, `RATE_LIMITED`
(retryable) saying that no connection of the account was free, and retried like any retryable
answer while attempts and the deadline last. Token requests and `/limits` probes (one of each per
account at a time at most) run outside the budgets, on headroom the pool is given for them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from types import TracebackType

from worker.accounts import Account, ConfigError
from worker.contract import ErrorCode
from worker.salesforce.failures import CallFailed, Retryable, error


class NoConnectionFree(Exception):
    """No connection of the account's budget came free within the connect timeout."""

    def __init__(self, retry: Retryable) -> None:
        super().__init__(retry.error.message)
        self.retry = retry


HEADROOM_PER_ACCOUNT = 2  # a token request and a /limits probe, outside the budgets


def shares(caps: Mapping[str, int], pool: int) -> dict[str, int]:
    """Each account's budget: its cap when every cap fits the pool, else an even share of the
    pool (the part an account's cap leaves unused going to the others). ConfigError when the
    pool cannot give every account one connection."""
    if len(caps) > pool:
        raise ConfigError(
            f"{len(caps)} accounts need at least {len(caps)} connections to Salesforce, and "
            f"SFWORKER_HTTP_POOL_SIZE is {pool}: raise it (to {sum(caps.values())}, every "
            "account's max_concurrency, no account waits for a connection)"
        )
    budgets: dict[str, int] = {}
    left, accounts = pool, len(caps)
    for name, cap in sorted(caps.items(), key=lambda item: item[1]):
        budgets[name] = min(cap, left // accounts)
        left -= budgets[name]
        accounts -= 1
    return budgets


class ConnectionHold:
    """A connection of one account's budget, waited for (bounded): `async with` it around the
    call's request. `waiting` is true while it waits: a deadline that passes meanwhile ended a
    wait for a connection, not for Salesforce (`too_late`)."""

    __slots__ = ("_budget", "waiting")

    def __init__(self, budget: Budget) -> None:
        self._budget = budget
        self.waiting = False

    async def __aenter__(self) -> None:
        budget = self._budget
        semaphore = budget.semaphore
        if not semaphore.locked():
            await semaphore.acquire()
            return
        self.waiting = True
        try:
            async with asyncio.timeout(budget.wait):
                await semaphore.acquire()
        except TimeoutError:
            raise NoConnectionFree(budget.refused()) from None
        self.waiting = False

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.waiting:
            self._budget.semaphore.release()

    def too_late(self) -> CallFailed:
        return self._budget.too_late()


class Budget:
    """One account's connections."""

    __slots__ = ("account", "semaphore", "size", "wait")

    def __init__(self, account: str, size: int, wait: float) -> None:
        self.account = account
        self.size = size
        self.wait = wait
        self.semaphore = asyncio.Semaphore(size)

    def _message(self) -> str:
        return (
            f"no connection to Salesforce was free for account {self.account!r}: its {self.size} "
            "connections (its budget of SFWORKER_HTTP_POOL_SIZE) were all held by its own calls"
        )

    def refused(self) -> Retryable:
        """The wait was longer than the connect timeout: worth another try."""
        why = f"{self._message()} for {self.wait:g} s"
        return Retryable("connection_wait", error(ErrorCode.RATE_LIMITED, why, True))

    def too_late(self) -> CallFailed:
        """The job's deadline passed while the call waited for a connection."""
        why = f"{self._message()} until the job's deadline"
        return CallFailed(error(ErrorCode.RATE_LIMITED, why, True))


class _Free:
    """The hold of an account whose budget covers its cap: it never waits."""

    waiting = False

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *_exc: object) -> None:
        return None

    def too_late(self) -> CallFailed:
        raise AssertionError("an account without a budget never waits for a connection")


FREE = _Free()


class Connections:
    """The budgets of a process's accounts."""

    def __init__(self, budgets: dict[str, Budget]) -> None:
        self._budgets = budgets

    @classmethod
    def of(cls, accounts: Mapping[str, Account], pool: int, wait: float) -> Connections:
        caps = {name: account.max_concurrency for name, account in accounts.items()}
        sizes = shares(caps, pool)
        return cls(
            {
                name: Budget(name, size, wait)
                for name, size in sizes.items()
                if size < caps[name]  # else the account's slot bounds its calls already
            }
        )

    @classmethod
    def unbounded(cls) -> Connections:
        """No budgets: every account's calls share the pool (a client built alone)."""
        return cls({})

    @property
    def limited(self) -> dict[str, int]:
        """The accounts whose budget is below their cap, and their budget."""
        return {name: b.size for name, b in self._budgets.items()}

    def hold(self, account: Account) -> ConnectionHold | _Free:
        budget = self._budgets.get(account.name)
        return FREE if budget is None else ConnectionHold(budget)
