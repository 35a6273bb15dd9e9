"""Nothing asked twice at once: identical reads of one account in flight at the same moment (the
same method, URL, parameters and query options) share one request; each job gets its own copy of
the answer and classifies it itself.

The first read starts the request in a task of its own, so that a job that stops waiting does not
take the answer away from the others; the task is bounded by the first job's deadline. A later
job whose read is already on its way waits for that answer (within its own deadline). When the
shared request ends in a failure rather than an answer, each of the other jobs sends its read
itself: failures are per job (a lost connection of an insert is not a read's), and a read that
fails anyway costs nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from worker.accounts import Account
from worker.salesforce.composite import Subrequest

A = TypeVar("A")

Key = tuple[str, str, str, tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]
_SHARED_HEADERS = ("sforce-query-options",)


def read_key(account: Account, request: Subrequest) -> Key | None:
    """What makes two reads the same read, or None for a request that is not a read."""
    if request.method != "GET" or request.body is not None:
        return None
    if any(k.lower() not in _SHARED_HEADERS for k in request.headers):
        return None  # a header that may change the answer
    headers = tuple(sorted((k.lower(), v) for k, v in request.headers.items()))
    params = tuple(sorted((request.params or {}).items()))
    return (account.scope + account.name, request.method, request.url, params, headers)


class SharedReads:
    def __init__(self) -> None:
        self._flying: dict[Key, asyncio.Task[object]] = {}
        self._tasks: set[asyncio.Task[object]] = set()

    def flying(self, key: Key) -> asyncio.Task[object] | None:
        return self._flying.get(key)

    def start(self, key: Key, send: Callable[[], Awaitable[A]]) -> asyncio.Task[A]:
        async def run() -> A:
            try:
                return await send()
            finally:
                if self._flying.get(key) is task:
                    del self._flying[key]

        task: asyncio.Task[A] = asyncio.get_running_loop().create_task(run())
        self._flying[key] = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_seen)
        return task

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._flying.clear()


def _seen(task: asyncio.Task[object]) -> None:
    if not task.cancelled():
        task.exception()
