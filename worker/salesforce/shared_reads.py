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
from typing import Any, TypeVar

import orjson

from worker.accounts import Account
from worker.memory import OverBudget
from worker.salesforce.call import Call
from worker.salesforce.composite import Subrequest
from worker.salesforce.failures import timeout_error, too_large
from worker.salesforce.http import ResponseTooLarge

A = TypeVar("A")

# A job waits for a shared read at most this many of its account's usual round trips (and at
# least PATIENCE_FLOOR s) after the read left, then sends its own: a read stuck on a hung
# connection must not hold every identical read until their deadlines.
PATIENCE_ROUND_TRIPS = 3.0
PATIENCE_FLOOR = 2.0

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
        self._started: dict[asyncio.Task[object], float] = {}  # loop time each read left
        # The answer of a shared read serialized once for all the jobs that copy it, while
        # any of them still waits: (the bytes, how many jobs wait).
        self._serialized: dict[asyncio.Task[object], tuple[bytes | None, int]] = {}

    def patience(self, task: asyncio.Task[object], round_trip: float) -> float:
        """The loop time until which a job waits for `task`'s answer."""
        started = self._started.get(task, asyncio.get_running_loop().time())
        return started + max(PATIENCE_FLOOR, PATIENCE_ROUND_TRIPS * round_trip)

    def join(self, task: asyncio.Task[object]) -> None:
        """A job waits for `task`'s answer (and will copy it)."""
        raw, users = self._serialized.get(task, (None, 0))
        self._serialized[task] = (raw, users + 1)

    def leave(self, task: asyncio.Task[object]) -> None:
        raw, users = self._serialized.pop(task, (None, 1))
        if users > 1:
            self._serialized[task] = (raw, users - 1)

    def serialized(self, task: asyncio.Task[object], body: Any) -> bytes:
        """`task`'s answer body as JSON, made once for all the jobs copying it."""
        raw, users = self._serialized.get(task, (None, 0))
        if raw is None:
            raw = orjson.dumps(body)
            if users:
                self._serialized[task] = (raw, users)
        return raw

    def flying(self, key: Key) -> asyncio.Task[object] | None:
        return self._flying.get(key)

    def start(self, key: Key, send: Callable[[], Awaitable[A]]) -> asyncio.Task[A]:
        async def run() -> A:
            try:
                return await send()
            finally:
                if self._flying.get(key) is task:
                    del self._flying[key]

        loop = asyncio.get_running_loop()
        task: asyncio.Task[A] = loop.create_task(run())
        self._flying[key] = task
        self._tasks.add(task)
        self._started[task] = loop.time()
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda done: self._started.pop(done, None))
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


async def own_copy(call: Call, raw: bytes, max_bytes: int) -> Any:
    """A copy of a shared answer (`raw`, its JSON) for `call`: memory its job holds as if it had
    read the answer, counted on its hold first (a wait bounded by the deadline;
    RESULT_TOO_LARGE when the job alone could not hold it)."""
    if call.memory is not None:
        try:
            async with asyncio.timeout_at(call.deadline.at):
                await call.memory.read(len(raw))
        except TimeoutError:
            raise timeout_error(call) from None
        except OverBudget as exc:
            raise too_large(call, None, ResponseTooLarge(max_bytes, why=str(exc))) from None
    return orjson.loads(raw)
