"""Tracing: small hooks the worker calls around one job, each a no-op unless tracing is on.

Tracing is on only when the standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or its `_TRACES_` form) is
set and the `sfworker[otel]` extra is installed; the OpenTelemetry SDK is then imported by
`observability/otel.py` and configured by the standard `OTEL_*` variables alone. Off, every hook
is a constant-time call that allocates nothing, and the worker runs without any OpenTelemetry
package installed.

Whether on or off, a job's W3C trace context travels on: the ids of the job's trace go into its
log lines and the exemplars of the latency histograms, and the result message carries a
`traceparent` (the worker's publish span when on; the job's own, passed through, when off).

The hooks, in the order one job meets them:
- `active.consume(...)`: the job's CONSUMER span `process <queue>` (context manager);
- `active.job_started(job)`, `active.queue_wait(seconds)`, `active.job_done(result)`: its
  attributes;
- `active.coalescing()`: the wait for company in a Composite request; `composite(together)`
  wraps the function that sends one, into a span linked to every job it carries;
- `active.waiting(cm, name)`: the wait to enter an async context manager (a concurrency slot);
- `active.span(name)`: a child span (the token wait); `active.event(name, ...)`: a retry;
- `active.add_http_hooks(config)`: aiohttp hooks giving every HTTP call its CLIENT span, added to
  the session's own trace config (`http_trace_configs()`: the same as a config of their own);
- `active.publish(destination, key)`: the result's PRODUCER span; yields the headers to send.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import aiohttp

    from worker.contract import AnyJob, BlockResult

log = logging.getLogger(__name__)

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

_TRACEPARENT_RE = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")

T = TypeVar("T")
A = TypeVar("A")
P = TypeVar("P")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class JobTrace:
    """The trace a job belongs to, as its log lines, exemplars and result message show it."""

    trace_id: str
    span_id: str
    sampled: bool
    traceparent: str
    tracestate: str | None = None

    def headers(self) -> dict[str, str]:
        headers = {TRACEPARENT: self.traceparent}
        if self.tracestate:
            headers[TRACESTATE] = self.tracestate
        return headers


_job: ContextVar[JobTrace | None] = ContextVar("sfworker_job_trace", default=None)


def current_job() -> JobTrace | None:
    """The trace of the job this task is working for, if any."""
    return _job.get()


def traced_job() -> bool:
    """Is the job this task works for traced (tracing on, the job sampled)? Only then do its
    HTTP calls go through the session with the span hooks."""
    if not active.enabled:
        return False
    job = _job.get()
    return job is not None and job.sampled


def log_ids() -> tuple[str, str] | None:
    """(trace_id, span_id) for a log line written while handling a job."""
    job = _job.get()
    return (job.trace_id, job.span_id) if job is not None else None


def exemplar() -> dict[str, str] | None:
    """A Prometheus exemplar pointing at the current job's trace (None outside a sampled one)."""
    job = _job.get()
    if job is None or not job.sampled:
        return None
    return {"trace_id": job.trace_id, "span_id": job.span_id}


def _text(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return None


def parse_traceparent(
    headers: Mapping[str, Any] | None,
) -> JobTrace | None:
    """The W3C trace context carried by AMQP headers, or None when absent or malformed."""
    if not headers:
        return None
    parent = _text(headers.get(TRACEPARENT))
    if parent is None:
        return None
    parent = parent.strip().lower()
    match = _TRACEPARENT_RE.match(parent)
    if match is None or match.group(1) == "0" * 32 or match.group(2) == "0" * 16:
        return None
    if parent.startswith("ff"):
        return None  # version ff is invalid
    state = _text(headers.get(TRACESTATE))
    return JobTrace(
        match.group(1),
        match.group(2),
        bool(int(match.group(3), 16) & 1),
        parent,
        state[:512] if state else None,
    )


# --- route templates: an HTTP span names the resource, never the values in its path ----------

_API = re.compile(r"^/services/data/v\d+\.\d+")


def route_template(path: str) -> str:
    """The path of a Salesforce REST call with the values taken out: record ids, external-id
    values and query cursors become `{id}`, `{value}`, `{cursor}`; object and field names stay
    (they come from the accounts file and the contract, never from a caller)."""
    match = _API.match(path)
    if match is None:
        return path if path.startswith("/services/oauth2/") else "/{path}"
    prefix, rest = match.group(0), path[match.end() :]
    parts = rest.split("/")  # ['', 'sobjects', 'Contact', '003...']
    if len(parts) >= 3 and parts[1] == "sobjects":
        if len(parts) == 4:
            parts[3] = "{id}"
        elif len(parts) >= 5:
            parts[4:] = ["{value}"]
    elif len(parts) >= 3 and parts[1] in ("query", "queryAll"):
        parts[2:] = ["{cursor}"]
    return prefix + "/".join(parts)


# --- the hooks --------------------------------------------------------------------------------


class _Nothing:
    """A context manager doing nothing, entered as None (shared: allocation-free)."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *_exc: object) -> None:
        return None


NOTHING = _Nothing()


class _PassThrough:
    """Off, a job that came with a trace context: its ids for logs, exemplars and the result."""

    __slots__ = ("_job", "_token")

    def __init__(self, job: JobTrace) -> None:
        self._job = job
        self._token: Any = None

    def __enter__(self) -> None:
        self._token = _job.set(self._job)

    def __exit__(self, *_exc: object) -> None:
        _job.reset(self._token)


class _Headers:
    """Off, the publish hook: the job's own trace context goes back with its result."""

    __slots__ = ()

    def __enter__(self) -> dict[str, str] | None:
        job = _job.get()
        return job.headers() if job is not None else None

    def __exit__(self, *_exc: object) -> None:
        return None


_HEADERS = _Headers()


class Tracer:
    """Tracing off: every hook does nothing (except pass the job's trace context through).
    `otel.OtelTracer` overrides each hook with an OpenTelemetry span."""

    enabled = False

    def consume(
        self,
        headers: Mapping[str, Any] | None,
        destination: str,
        message_id: str | None,
        routing_key: str | None,
    ) -> Any:
        """Around the handling of one delivery (a context manager)."""
        if not headers or TRACEPARENT not in headers:
            return NOTHING
        job = parse_traceparent(headers)
        return _PassThrough(job) if job is not None else NOTHING

    def job_started(self, job: AnyJob) -> None:
        return None

    def queue_wait(self, seconds: float) -> None:
        return None

    def account(self, name: str, tenant: str | None) -> None:
        return None

    def job_done(self, result: BlockResult) -> None:
        return None

    def span(self, name: str) -> Any:
        """A child span of the current one, current while the block runs."""
        return NOTHING

    def event(self, name: str, attributes: Mapping[str, str | int | float] | None = None) -> None:
        return None

    def waiting(
        self, cm: AbstractAsyncContextManager[T], name: str
    ) -> AbstractAsyncContextManager[T]:
        """`cm`, with a span over the time it takes to enter it."""
        return cm

    def coalescing(self) -> Any:
        """Around a call's wait for company; enters as the handle `composite` reports to."""
        return NOTHING

    async def in_composite(
        self, together: Callable[[A, list[P]], Awaitable[list[R]]], account: A, group: list[P]
    ) -> list[R]:
        return await together(account, group)

    def publish(self, destination: str, routing_key: str) -> Any:
        """Around the result's publish and confirm; enters as the headers to send (or None)."""
        return _HEADERS

    def add_http_hooks(self, config: aiohttp.TraceConfig) -> None:
        """Add the HTTP spans' hooks to `config` (one trace config per session: aiohttp makes
        the parameters of every signal once per config and request)."""

    def http_trace_configs(self) -> list[aiohttp.TraceConfig]:
        return []

    def start_root(self, name: str) -> Any:
        """A root span for a command (`sfworker submit`), current while the block runs."""
        return NOTHING

    async def shutdown(self) -> None:
        return None


OFF = Tracer()
active: Tracer = OFF


def install(tracer: Tracer) -> None:
    global active
    active = tracer


def composite(
    together: Callable[[A, list[P]], Awaitable[list[R]]],
) -> Callable[[A, list[P]], Awaitable[list[R]]]:
    """Wrap the function that sends one Composite request: on, each request is a span linked
    to the span of every job it carries (`P.trace`, the handle `coalescing()` entered as)."""

    async def traced(account: A, group: list[P]) -> list[R]:
        if not active.enabled:
            return await together(account, group)
        return await active.in_composite(together, account, group)

    return traced


def configured(env: Mapping[str, str] | None = None) -> bool:
    """Do the standard variables ask for traces to be exported?"""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def from_environment(env: Mapping[str, str] | None = None, *, service: str = "sfworker") -> Tracer:
    """The tracer the standard `OTEL_*` variables ask for: OFF unless an OTLP endpoint is set."""
    if not configured(env):
        return OFF
    try:
        from worker.observability import otel
    except ImportError:
        log.warning(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but the OpenTelemetry SDK is not installed "
            "(pip install 'sfworker[otel]'); tracing stays off"
        )
        return OFF
    return otel.OtelTracer.from_environment(os.environ if env is None else env, service)


@contextmanager
def installed(tracer: Tracer) -> Iterator[Tracer]:
    """`tracer` active for the block (commands and tests)."""
    previous = active
    install(tracer)
    try:
        yield tracer
    finally:
        install(previous)


def outgoing_headers() -> dict[str, str]:
    """The W3C trace context of the caller's current OpenTelemetry span, as AMQP headers for
    a job (BlockClient): empty when opentelemetry-api is not installed or no span is current."""
    if _inject is None:
        return {}
    carrier: dict[str, str] = {}
    _inject(carrier)
    return carrier


def _injector() -> Callable[[dict[str, str]], None] | None:
    try:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError:
        return None
    return TraceContextTextMapPropagator().inject


_inject = _injector()
