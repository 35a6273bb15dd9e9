"""Result reads and writes of one loop tick, sent to Redis together: the jobs that arrive or
finish at about the same moment (a burst of deliveries, a Composite request's answers) cost one
round trip (`MGET` and `SET ... PX` in one pipeline), not one each."""

from __future__ import annotations

import asyncio
from typing import Any

from worker.stores.link import Redis, RedisLink, RedisUnavailable

_MAX_BATCH = 256  # commands in one pipeline; more wait for the next one


class TickBatch:
    """Collects `get` and `set` calls until the loop runs its next callbacks, then sends them
    in one pipeline. Each caller gets its own value, or RedisUnavailable as `link.call` would
    raise it."""

    def __init__(self, link: RedisLink) -> None:
        self._link = link
        self._gets: dict[str, list[asyncio.Future[bytes | None]]] = {}
        self._sets: list[tuple[str, bytes, int, asyncio.Future[None]]] = []
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

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            # Two loop iterations, not one: the deliveries of one socket read (and the jobs of
            # one Composite answer) reach their lookups over a couple of iterations. Under load
            # an iteration carries many callbacks; idle, it lasts microseconds.
            loop = asyncio.get_running_loop()
            loop.call_soon(loop.call_soon, self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        while self._gets or self._sets:
            gets: dict[str, list[asyncio.Future[bytes | None]]] = {}
            for key in list(self._gets)[:_MAX_BATCH]:
                gets[key] = self._gets.pop(key)
            sets, self._sets = (
                self._sets[: _MAX_BATCH - len(gets)],
                self._sets[_MAX_BATCH - len(gets) :],
            )
            task = asyncio.get_running_loop().create_task(self._send(gets, sets))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(
        self,
        gets: dict[str, list[asyncio.Future[bytes | None]]],
        sets: list[tuple[str, bytes, int, asyncio.Future[None]]],
    ) -> None:
        keys = list(gets)

        async def pipeline(r: Redis) -> list[object]:
            if len(keys) == 1 and not sets:  # alone: a plain command costs less
                return [[await r.get(keys[0])]]
            if len(sets) == 1 and not keys:
                key, value, px, _ = sets[0]
                return [await r.set(key, value, px=px)]
            pipe = r.pipeline(transaction=False)
            if keys:
                pipe.mget(keys)
            for key, value, px, _ in sets:
                pipe.set(key, value, px=px)
            return list(await pipe.execute())

        try:
            replies = await self._link.call(pipeline)
        except RedisUnavailable as exc:
            for waiting in gets.values():
                for got in waiting:
                    _fail(got, exc)
            for *_, done in sets:
                _fail(done, exc)
            return
        values = replies[0] if keys else []
        assert isinstance(values, list)
        for key, value in zip(keys, values, strict=True):
            found = value if isinstance(value, bytes) or value is None else str(value).encode()
            for got in gets[key]:
                if not got.done():
                    got.set_result(found)
        for *_, done in sets:
            if not done.done():
                done.set_result(None)

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=2.0)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(type(exc)(*exc.args))
        future.add_done_callback(lambda f: f.exception())
