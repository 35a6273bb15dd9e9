"""Result-store commands of one loop tick, sent to Redis together: the jobs that arrive or
finish at about the same moment (a burst of deliveries, a Composite request's answers) cost one
write on the batcher's own connection (`MGET`, the bindings' script and `SET ... PX` in one
pipeline, pipe.py), not one round trip each.

A pipeline that holds a write that must survive a failover (a job-id binding, an insert marker:
`durable`) ends with `WAIT` (replicas.py), in the same round trip; the replies of those writes
reach their callers only once the replicas confirm, and as RedisUnavailable (the link falls
back) when none does in time."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from typing import Any

import hiredis
from redis.exceptions import ResponseError

from worker.stores.link import RedisLink, RedisUnavailable
from worker.stores.pipe import Command, OnReply, Pipe, Reply
from worker.stores.replicas import NotConfirmed

_MAX_BATCH = 256  # commands in one pipeline; more go in the next one
_IN_FLIGHT = 1  # pipelines on their way at once; what comes meanwhile waits for the answer


# KEYS: the job id's binding, its result; ARGV: fingerprint (sealed), ttl ms. Bind it unless
# bound; return the binding before and the stored result. The binding's form for a Redis older
# than 7.0, which has no `SET ... NX GET` (the form used otherwise: native, about a fifth of the
# script's cost in Redis' own CPU).
BIND_SCRIPT = """
local held = redis.call('GET', KEYS[1])
if not held then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
return {held, redis.call('GET', KEYS[2])}
"""


@dataclass(frozen=True)
class _Eval:
    """One script call: its keys and arguments, and whom to tell."""

    script: str
    keys: list[str]
    args: list[bytes | str | int]
    future: asyncio.Future[Any]
    by_source: bool = False  # EVAL, not EVALSHA: Redis did not have the script (NOSCRIPT)
    durable: bool = False  # its reply waits for the replicas' confirmation (WAIT)


@dataclass(frozen=True)
class _Bind:
    """One job id's binding and the read of its stored result."""

    key: str
    value: bytes
    px: int
    result_key: str
    future: asyncio.Future[Any]


class _Held:
    """The replies of one pipeline's durable writes, held until its `WAIT` answers (None: the
    pipeline has no `WAIT`, replies go at once)."""

    def __init__(self) -> None:
        self.replies: list[tuple[asyncio.Future[Any], Any]] = []


class TickBatch:
    """Collects `get`, `set`, `bind` and `eval` calls until the loop has run the callbacks
    ready now (two iterations), then writes them as one pipeline. Each caller gets its own
    reply, or RedisUnavailable as `link.call` would raise it."""

    def __init__(self, link: RedisLink) -> None:
        self._link = link
        self._pipe = Pipe(link)
        self._gets: dict[str, list[asyncio.Future[bytes | None]]] = {}
        self._sets: list[tuple[str, bytes, int, asyncio.Future[None]]] = []
        self._evals: list[_Eval] = []
        self._bindings: list[_Bind] = []
        self._bind_by_script = False  # Redis < 7.0 refused `SET ... NX GET`
        self._sha: dict[str, str] = {}  # script source -> SHA1 (EVALSHA: the source sent once)
        self._scheduled = False
        self._in_flight = 0
        self._closed = False

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
        self,
        script: str,
        keys: list[str],
        args: list[bytes | str | int],
        *,
        durable: bool = False,
    ) -> asyncio.Future[Any]:
        """A Lua script, by its SHA1 (EVALSHA), by its source when Redis lacks it; `durable`:
        its reply comes once the replicas confirm its writes."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._evals.append(_Eval(script, keys, args, future, durable=durable))
        self._schedule()
        return future

    def bind(
        self, binding_key: str, value: bytes, px: int, result_key: str
    ) -> asyncio.Future[tuple[bytes | None, bytes | None]]:
        """Bind `binding_key` to `value` unless bound, and read `result_key`: the binding before
        (None: this call bound it) and the stored result, in the pipeline of its tick."""
        if self._bind_by_script:
            return self.eval(BIND_SCRIPT, [binding_key, result_key], [value, px], durable=True)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._bindings.append(_Bind(binding_key, value, px, result_key, future))
        self._schedule()
        return future

    def _schedule(self) -> None:
        if self._scheduled:
            return
        self._scheduled = True
        if self._in_flight >= _IN_FLIGHT:
            # Group commit: while pipelines are on their way, what comes meanwhile waits for
            # one of them to return and goes in the next (at most one round trip later). Under
            # load the batches grow by themselves; idle, nothing waits.
            return
        # Two loop iterations, not one: the deliveries of one socket read (and the jobs of one
        # Composite answer) reach their lookups over a couple of iterations. Under load an
        # iteration carries many callbacks; idle, it lasts microseconds.
        loop = asyncio.get_running_loop()
        loop.call_soon(loop.call_soon, self._flush)

    def _answered(self) -> None:
        self._in_flight -= 1
        if self._scheduled and self._in_flight < _IN_FLIGHT:
            self._flush()

    def _flush(self) -> None:
        if not self._scheduled:
            return  # flushed already (by a pipeline that returned meanwhile)
        self._scheduled = False
        gets, self._gets = self._gets, {}
        sets, self._sets = self._sets, []
        evals, self._evals = self._evals, []
        bindings, self._bindings = self._bindings, []
        if self._closed or not self._link.usable:
            exc = RedisUnavailable(self._link.where)
            for future in [f for waiting in gets.values() for f in waiting]:
                _fail(future, exc)
            for *_, done in sets:
                _fail(done, exc)
            for call in evals:
                _fail(call.future, exc)
            for binding in bindings:
                _fail(binding.future, exc)
            return
        wait = self._link.replicas.wait_command()
        while gets or sets or evals or bindings:
            commands: list[Command] = []
            handlers: list[OnReply] = []
            # A WAIT ends a pipeline with a durable write: room for it is kept.
            held = _Held() if wait is not None else None
            keys = list(gets)[: _MAX_BATCH - 2]
            if keys:
                waiting = {key: gets.pop(key) for key in keys}
                commands.append(("MGET", *keys))
                handlers.append(self._on_values(waiting))
            room = _MAX_BATCH - 1 - len(commands)
            some_sets, sets = sets[:room], sets[room:]
            for key, value, px, done in some_sets:
                commands.append(("SET", key, value, "PX", px))
                handlers.append(self._on_set(done))
            room = _MAX_BATCH - 1 - len(commands)
            some_evals, evals = evals[:room], evals[room:]
            for call in some_evals:
                commands.append(self._eval_command(call))
                handlers.append(self._on_eval(call, held if call.durable else None))
            room = (_MAX_BATCH - 1 - len(commands)) // 2
            some_bindings, bindings = bindings[:room], bindings[room:]
            for binding in some_bindings:
                commands.append(("SET", binding.key, binding.value, "NX", "GET", "PX", binding.px))
                commands.append(("GET", binding.result_key))
                on_bound, on_result = self._on_bind(binding, held)
                handlers += [on_bound, on_result]
            if (
                wait is not None
                and held is not None
                and (some_bindings or any(call.durable for call in some_evals))
            ):
                commands.append(wait)
                handlers.append(self._on_wait(held))
            self._in_flight += 1
            self._pipe.send(Pipe.pack(commands), handlers, self._answered)

    def _eval_command(self, call: _Eval) -> Command:
        if call.by_source:
            return ("EVAL", call.script, len(call.keys), *call.keys, *call.args)
        sha = self._sha.get(call.script)
        if sha is None:
            digest = hashlib.sha1(call.script.encode(), usedforsecurity=False)
            sha = self._sha[call.script] = digest.hexdigest()
        return ("EVALSHA", sha, len(call.keys), *call.keys, *call.args)

    def _failed(self, reply: Reply) -> RedisUnavailable | None:
        """The command's failure: no reply (the connection), or an error reply (Redis read-only,
        full, ...: it cannot hold the fleet's state, as for `link.call`)."""
        if isinstance(reply, RedisUnavailable):
            return reply
        if isinstance(reply, hiredis.ReplyError):
            self._link.fail(ResponseError(str(reply)))
            return RedisUnavailable(self._link.where)
        return None

    def _on_values(self, waiting: dict[str, list[asyncio.Future[bytes | None]]]) -> OnReply:
        def on_reply(reply: Reply) -> None:
            failed = self._failed(reply)
            if failed is not None:
                for futures in waiting.values():
                    for future in futures:
                        _fail(future, failed)
                return
            for value, futures in zip(reply, waiting.values(), strict=True):
                for future in futures:
                    _settle(future, _as_bytes(value))

        return on_reply

    def _on_set(self, done: asyncio.Future[None]) -> OnReply:
        def on_reply(reply: Reply) -> None:
            failed = self._failed(reply)
            if failed is not None:
                _fail(done, failed)
            else:
                _settle(done, None)

        return on_reply

    def _on_wait(self, held: _Held) -> OnReply:
        """The pipeline's WAIT: its durable replies go to their callers, or, unconfirmed, fail
        as when Redis does not answer (the link falls back)."""

        def on_reply(reply: Reply) -> None:
            failed = self._failed(reply)
            if failed is None:
                try:
                    self._link.replicas.check(reply)
                except NotConfirmed as exc:
                    self._link.fail(exc)
                    failed = RedisUnavailable(self._link.where)
            replies, held.replies = held.replies, []
            for future, value in replies:
                if failed is not None:
                    _fail(future, failed)
                else:
                    _settle(future, value)

        return on_reply

    @staticmethod
    def _settle_held(held: _Held | None, future: asyncio.Future[Any], value: Any) -> None:
        if held is None:
            _settle(future, value)
        else:
            held.replies.append((future, value))

    def _on_bind(self, binding: _Bind, held_back: _Held | None) -> tuple[OnReply, OnReply]:
        held: list[Reply] = []

        def on_bound(reply: Reply) -> None:
            held.append(reply)  # first: whatever happens below, on_result finds it
            if isinstance(reply, hiredis.ReplyError) and "syntax error" in str(reply):
                # Redis older than 7.0: the binding by script from now on, this one included.
                self._bind_by_script = True
                args: list[bytes | str | int] = [binding.value, binding.px]
                keys = [binding.key, binding.result_key]
                self._evals.append(_Eval(BIND_SCRIPT, keys, args, binding.future, durable=True))
                self._schedule()

        def on_result(reply: Reply) -> None:
            if self._bind_by_script and isinstance(held[0], hiredis.ReplyError):
                return  # gone again by script
            failed = self._failed(held[0]) or self._failed(reply)
            if failed is not None:
                _fail(binding.future, failed)
            else:
                value = (_as_bytes(held[0]), _as_bytes(reply))
                self._settle_held(held_back, binding.future, value)

        return on_bound, on_result

    def _on_eval(self, call: _Eval, held: _Held | None) -> OnReply:
        def on_reply(reply: Reply) -> None:
            if (
                isinstance(reply, hiredis.ReplyError)
                and str(reply).startswith("NOSCRIPT")
                and not call.by_source
            ):
                # Redis restarted or flushed its scripts: this call goes again with the source
                # (Redis keeps it from then on).
                again = _Eval(call.script, call.keys, call.args, call.future, True, call.durable)
                self._evals.append(again)
                self._schedule()
                return
            failed = self._failed(reply)
            if failed is not None:
                _fail(call.future, failed)
            else:
                self._settle_held(held, call.future, reply)

        return on_reply

    async def close(self) -> None:
        """What is on its way gets its answer (or fails); nothing new is sent."""
        self._closed = True
        if self._scheduled:
            self._flush()
        await self._pipe.close()


def _as_bytes(value: Any) -> bytes | None:
    return value if isinstance(value, bytes) or value is None else str(value).encode()


def _settle(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(type(exc)(*exc.args))
        future.add_done_callback(lambda f: f.exception())
