"""The concurrency cap of an account: how many calls to its org may be in flight at once.

`LocalSlots` caps this process; the fleet's implementation (stores/slot_leases.py) caps every
process sharing Redis together. The client holds a slot for the time of one HTTP call.
"""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from worker.accounts import Account


class Slots(Protocol):
    def hold(self, account: Account) -> AbstractAsyncContextManager[None]:
        """Wait for a slot of the account's cap and hold it inside the `async with`."""
        ...


class LocalSlots:
    """One semaphore of `max_concurrency` per account, in this process."""

    def __init__(self) -> None:
        self._semaphores: dict[str, asyncio.Semaphore] = {}

    def hold(self, account: Account) -> asyncio.Semaphore:
        semaphore = self._semaphores.get(account.name)
        if semaphore is None:
            semaphore = self._semaphores[account.name] = asyncio.Semaphore(account.max_concurrency)
        return semaphore
