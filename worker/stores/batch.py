"""Result-store commands of one loop tick, sent to Redis together: the jobs that arrive or
finish at about the same moment (a burst of deliveries, a Composite request's answers) cost one
round trip (`MGET`, the claims' script and `SET ... PX` in one pipeline), not one each."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from worker.stores.link import Redis, RedisLink, RedisUnavailable

_MAX_BATCH = 256  # commands in one pipeline; more go in the next one
_IN_FLIGHT = 2  # pipelines on their way at once; what comes meanwhile waits for one of them


@dataclass(frozen=True)
class _Eval:
    """One script call: its keys and arguments, and whom to tell."""

    keys: list[str]
    args: list[bytes | str | int]
    future: asyncio.Future[Any]


class TickBatch:
    """Collects `get`, `set` and `eval` calls until the loop has run the callbacks ready now
    (two iterations), then sends them in one pipeline. Each caller gets its own reply, or
    RedisUnavailable as `link.call` would raise it."""

    def __init__(self, link: RedisLink) -> None:
        self._link = link
        self._gets: dict[str, list[asyncio.Future[bytes | None]]] = {}
        self._sets: list[tuple[str, bytes, int, asyncio.Future[None]]] = []
        self._evals: dict[str, list[_Eval]] = {}  # by script source
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    def get(self, key: str) -> asyncio.Future[bytes | None]:
        future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self._gets.setdefault(key, []).append(future)
        self._schedule()
        return future

    def set(self, key: str, value: bytes, px: int) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sets.append((key, value, px, future))
        self._schedule()
        return future

    def eval(
        self, script: str, keys: list[str], args: list[bytes | str | int]
    ) -> asyncio.Future[Any]:
        """A Lua script (EVAL: Redis caches it compiled; no SCRIPT LOAD round trip)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._evals.setdefault(script, []).append(_Eval(keys, args, future))
        self._schedule()
        return future

    def _schedule(self) -> None:
        if self._scheduled:
            return
        self._scheduled = True
        if len(self._tasks) >= _IN_FLIGHT:
            # Group commit: while pipelines are on their way, what comes meanwhile waits for
            # one of them to return and goes in the next (at most one round trip later). Under
            # load the batches grow by themselves; idle, nothing waits.
            return
        # Two loop iterations, not one: the deliveries of one socket read (and the jobs of one
        # Composite answer) reach their lookups over a couple of iterations. Under load an
        # iteration carries many callbacks; idle, it lasts microseconds.
        loop = asyncio.get_running_loop()
        loop.call_soon(loop.call_soon, self._flush)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._scheduled and len(self._tasks) < _IN_FLIGHT:
            self._flush()

    def _flush(self) -> None:
        if not self._scheduled:
            return  # flushed already (by a pipeline that returned meanwhile)
        self._scheduled = False
        gets, self._gets = self._gets, {}
        sets, self._sets = self._sets, []
        evals = [(script, e) for script, calls in self._evals.items() for e in calls]
        self._evals = {}
        while gets or sets or evals:
            some_gets = dict(list(gets.items())[:_MAX_BATCH])
            for key in some_gets:
                del gets[key]
            room = _MAX_BATCH - len(some_gets)
            some_sets, sets = sets[:room], sets[room:]
            room -= len(some_sets)
            some_evals, evals = evals[:room], evals[room:]
            task = asyncio.get_running_loop().create_task(
                self._send(some_gets, some_sets, some_evals)
            )
            self._tasks.add(task)
            task.add_done_callback(self._sent)

    async def _send(
        self,
        gets: dict[str, list[asyncio.Future[bytes | None]]],
        sets: list[tuple[str, bytes, int, asyncio.Future[None]]],
        evals: list[tuple[str, _Eval]],
    ) -> None:
        keys = list(gets)

        async def pipeline(r: Redis) -> list[Any]:
            if len(keys) == 1 and not sets and not evals:  # alone: a plain command costs less
                return [[await r.get(keys[0])]]
            if len(sets) == 1 and not keys and not evals:
                key, value, px, _ = sets[0]
                return [await r.set(key, value, px=px)]
            pipe = r.pipeline(transaction=False)
            if keys:
                pipe.mget(keys)
            for key, value, px, _ in sets:
                pipe.set(key, value, px=px)
            for script, call in evals:
                pipe.eval(script, len(call.keys), *call.keys, *call.args)
            return list(await pipe.execute())

        futures: list[asyncio.Future[Any]] = [f for waiting in gets.values() for f in waiting]
        futures += [entry[3] for entry in sets]
        futures += [call.future for _, call in evals]
        try:
            replies = await self._link.call(pipeline)
        except RedisUnavailable as exc:
            for future in futures:
                _fail(future, exc)
            return
        values = replies[0] if keys else []
        for key, value in zip(keys, values, strict=True):
            for got in gets[key]:
                _settle(got, _as_bytes(value))
        for *_, done in sets:
            _settle(done, None)
        for (_, call), reply in zip(evals, replies[-len(evals) :] if evals else [], strict=True):
            _settle(call.future, reply)

    async def close(self) -> None:
        for _ in range(3):  # what waited for a pipeline goes with the next
            if not self._tasks:
                return
            await asyncio.wait(set(self._tasks), timeout=2.0)


def _as_bytes(value: Any) -> bytes | None:
    return value if isinstance(value, bytes) or value is None else str(value).encode()


def _settle(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(type(exc)(*exc.args))
        future.add_done_callback(lambda f: f.exception())
