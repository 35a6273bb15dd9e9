"""The one aiohttp session of a process: keep-alive pool, and a trace that tells whether a request
was sent (so a lost answer to an insert is told apart from a connection that never carried it)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import SimpleNamespace

import aiohttp
import orjson

from worker.memory import ALLOWANCE, READ_FACTOR, OverBudget, Reading
from worker.observability import tracing
from worker.settings import Settings


class ResponseTooLarge(Exception):
    """A response body past the cap: its reading was stopped (and its connection closed).
    `prefix`: what was read before it stopped (a Composite answer's first parts may be in it)."""

    def __init__(self, limit: int, prefix: bytes = b"", why: str = "") -> None:
        super().__init__(
            why
            or f"Salesforce's answer is larger than {limit:,} bytes (SFWORKER_MAX_RESPONSE_BYTES)"
        )
        self.limit = limit
        self.prefix = prefix


async def read_capped(
    response: aiohttp.ClientResponse, limit: int, memory: Reading | None = None
) -> bytes:
    """The body, read in chunks, or ResponseTooLarge as soon as it passes `limit` bytes (a
    Content-Length above it is refused before reading). With `memory`, each chunk is counted
    on the job's hold (worker/memory.py) before it is read, and waits for room (the caller
    bounds the wait); a job that cannot hold it at all stops the reading like the cap."""
    if response.content_length is not None and response.content_length > limit:
        response.close()
        raise ResponseTooLarge(limit)
    chunks: list[bytes] = []
    try:
        return await _read(response, limit, memory, chunks)
    finally:
        if memory is not None:
            memory.settle(sum(len(c) for c in chunks))


async def _read(
    response: aiohttp.ClientResponse, limit: int, memory: Reading | None, chunks: list[bytes]
) -> bytes:
    size = 0
    counted = ALLOWANCE // READ_FACTOR  # a small answer is within the job's allowance
    while True:
        if memory is not None and size + _CHUNK > counted:
            try:
                await memory.read(_CHUNK)
            except OverBudget as exc:
                response.close()
                raise ResponseTooLarge(limit, b"".join(chunks), str(exc)) from None
            counted += _CHUNK
        chunk = await response.content.read(_CHUNK)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            response.close()
            raise ResponseTooLarge(limit, b"".join(chunks))
        chunks.append(chunk)


_CHUNK = 256 * 1024


class SendRefused(Exception):
    """The hook said no: another delivery of the same insert is being sent."""


class SendState:
    """Per-request state for the trace: `sent` once the request headers left this process, and
    a hook awaited once the connection is ready, just before they leave (insert markers)."""

    __slots__ = ("before_send", "sent")

    def __init__(self, before_send: Callable[[], Awaitable[bool]] | None = None) -> None:
        self.sent = False
        self.before_send = before_send


async def _on_connection_ready(
    _session: aiohttp.ClientSession, ctx: SimpleNamespace, _params: object
) -> None:
    state = ctx.trace_request_ctx
    if isinstance(state, SendState) and state.before_send is not None:
        hook, state.before_send = state.before_send, None
        if not await hook():
            raise SendRefused


async def _on_headers_sent(
    _session: aiohttp.ClientSession,
    ctx: SimpleNamespace,
    _params: aiohttp.TraceRequestHeadersSentParams,
) -> None:
    state = ctx.trace_request_ctx
    if isinstance(state, SendState):
        state.sent = True


def create_session(settings: Settings, headroom: int = 0) -> aiohttp.ClientSession:
    """The session, with the hooks that tell whether a request left, and with tracing on the
    HTTP spans' hooks (the untraced twin has neither: calls of jobs that are not traced use it).
    Its pool: `http_pool_size` connections (the accounts' budgets, connections.py), and
    `headroom` more for the requests outside the budgets (tokens, /limits probes)."""
    trace = aiohttp.TraceConfig()
    trace.on_request_headers_sent.append(_on_headers_sent)
    # The connection is ready and the request is written right after: the last moment before
    # it leaves (a new connection's setup would otherwise widen the window).
    trace.on_connection_create_end.append(_on_connection_ready)
    trace.on_connection_reuseconn.append(_on_connection_ready)
    connector = aiohttp.TCPConnector(
        limit=settings.http_pool_size + headroom,
        keepalive_timeout=30.0,
        ttl_dns_cache=300,
        # Timeouts are enforced by the job deadline itself; never round them up.
        timeout_ceil_threshold=3600.0,
    )
    timeout = aiohttp.ClientTimeout(total=None, connect=settings.http_connect_timeout_seconds)
    tracing.active.add_http_hooks(trace)
    return _session(connector, timeout, [trace], owner=True)


def untraced(session: aiohttp.ClientSession) -> aiohttp.ClientSession:
    """A twin of `session` on the same connection pool, without the trace: for the calls where
    whether a request left does not change what a lost answer means (every idempotent call),
    the trace's per-request cost is saved. Close it before the session."""
    return _session(session.connector, session.timeout, [], owner=False)


def _session(
    connector: aiohttp.BaseConnector | None,
    timeout: aiohttp.ClientTimeout,
    traces: list[aiohttp.TraceConfig],
    *,
    owner: bool,
) -> aiohttp.ClientSession:
    session = aiohttp.ClientSession(
        connector=connector,
        connector_owner=owner,
        trace_configs=traces,
        json_serialize=lambda obj: orjson.dumps(obj).decode(),
        timeout=timeout,
        headers={"User-Agent": "sfworker"},
        raise_for_status=False,
    )
    # aiohttp silently re-sends an idempotent request once when a kept-alive connection drops.
    # Our own retry loop does that with backoff, within the deadline, counted in `attempts` and
    # the retry metrics; two layers would hide calls from both.
    if hasattr(session, "_retry_connection"):
        session._retry_connection = False
    return session
