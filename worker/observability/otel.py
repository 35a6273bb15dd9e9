"""The tracing hooks (tracing.py) as OpenTelemetry spans: the `sfworker[otel]` extra.

Imported only when an OTLP endpoint is configured. The SDK is configured by the standard
variables alone: the exporter by `OTEL_EXPORTER_OTLP_*` (HTTP/protobuf), the sampler by
`OTEL_TRACES_SAMPLER[_ARG]` (parent-based by default: a job's sampled flag decides), the resource
by `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`, the batching by `OTEL_BSP_*`.

The provider is this worker's own (not the global one): several workers in one process (the
tests) each export their own spans. Attributes never hold a parameter value, a record field, a
token or an exception's message: traces leave the cluster.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, contextmanager
from contextvars import Token
from types import SimpleNamespace, TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanContext, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.trace.status import Status, StatusCode

import worker
from worker.observability.tracing import (
    _HEADERS,
    NOTHING,
    TRACEPARENT,
    TRACESTATE,
    JobTrace,
    Tracer,
    _job,
    _text,
    route_template,
)

if TYPE_CHECKING:
    from worker.contract import AnyJob, BlockResult

log = logging.getLogger(__name__)

T = TypeVar("T")
A = TypeVar("A")
P = TypeVar("P")
R = TypeVar("R")

_PROPAGATOR = TraceContextTextMapPropagator()
SHORTEST_WAIT_NS = 1_000_000  # a wait shorter than 1 ms is no wait: no span
_SHUTDOWN_SECONDS = 10.0


def _job_trace(span: Span) -> JobTrace:
    ctx = span.get_span_context()
    trace_id, span_id = f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"
    flags = "01" if ctx.trace_flags.sampled else "00"
    state = ctx.trace_state.to_header() if ctx.trace_state else None
    return JobTrace(
        trace_id, span_id, ctx.trace_flags.sampled, f"00-{trace_id}-{span_id}-{flags}", state
    )


def _fail(span: Span, exc: BaseException) -> None:
    """An exception's type, never its message (it may quote Salesforce or a caller)."""
    name = type(exc).__name__
    span.set_attribute("error.type", name)
    span.set_status(Status(StatusCode.ERROR, name))


@contextmanager
def _current(span: Span) -> Iterator[Span]:
    """`span` current for the block, ended after it; an exception marks it failed."""
    token = otel_context.attach(trace.set_span_in_context(span))
    try:
        yield span
    except BaseException as exc:
        _fail(span, exc)
        raise
    finally:
        otel_context.detach(token)
        span.end()


class _Consume:
    """The job's CONSUMER span, current while the delivery is handled."""

    __slots__ = ("_parent", "_span", "_tokens")

    def __init__(self, span: Span, parent: Context) -> None:
        self._span = span
        self._parent = parent
        self._tokens: tuple[Token[Context], Token[JobTrace | None]] | None = None

    def __enter__(self) -> Span:
        self._tokens = (
            otel_context.attach(trace.set_span_in_context(self._span, self._parent)),
            _job.set(_job_trace(self._span)),
        )
        return self._span

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            _fail(self._span, exc)
        if self._tokens is not None:
            _job.reset(self._tokens[1])
            otel_context.detach(self._tokens[0])
        self._span.end()


class _Waited(AbstractAsyncContextManager[T]):
    """An async context manager whose entry (the wait for it) is a span, when it was a wait:
    at least SHORTEST_WAIT_NS, or failed."""

    def __init__(self, tracer: trace.Tracer, cm: AbstractAsyncContextManager[T], name: str):
        self._tracer = tracer
        self._cm = cm
        self._name = name

    async def __aenter__(self) -> T:
        started = time.time_ns()
        try:
            value = await self._cm.__aenter__()
        except BaseException as exc:
            span = self._tracer.start_span(self._name, start_time=started)
            _fail(span, exc)
            span.end()
            raise
        ended = time.time_ns()
        if ended - started >= SHORTEST_WAIT_NS:
            self._tracer.start_span(self._name, start_time=started).end(end_time=ended)
        return value

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        return await self._cm.__aexit__(kind, exc, tb)


class Waiting:
    """A call waiting for company (coalescing): the handle a Composite request reports to. Its
    span is recorded when the call waited at least SHORTEST_WAIT_NS or travelled in a
    Composite request (a quiet account's call goes at once)."""

    __slots__ = ("_carried", "_started", "_tracer", "job_context", "job_span")

    def __init__(self, tracer: trace.Tracer, job_span: Span) -> None:
        self._tracer = tracer
        self._started = time.time_ns()
        self._carried: dict[str, str] | None = None
        self.job_span = job_span
        self.job_context = job_span.get_span_context()

    def carried_by(self, composite: SpanContext) -> None:
        ids = {
            "sfworker.composite.trace_id": f"{composite.trace_id:032x}",
            "sfworker.composite.span_id": f"{composite.span_id:016x}",
        }
        self._carried = ids
        self.job_span.set_attributes(ids)
        self.job_span.add_link(composite, {"sfworker.link": "carried by"})

    def end(self, exc: BaseException | None) -> None:
        ended = time.time_ns()
        if exc is None and self._carried is None and ended - self._started < SHORTEST_WAIT_NS:
            return
        span = self._tracer.start_span("coalesce wait", start_time=self._started)
        if self._carried is not None:
            span.set_attributes(self._carried)
        if exc is not None:
            _fail(span, exc)
        span.end(end_time=ended)


def _sampled() -> bool:
    """Is the job this task works for recorded? (Not: its spans would be dropped anyway, so
    none is made; its trace context still travels.)"""
    job = _job.get()
    return job is not None and job.sampled


class OtelTracer(Tracer):
    enabled = True

    def __init__(self, provider: TracerProvider) -> None:
        self._provider = provider
        self._tracer = provider.get_tracer("sfworker", worker.__version__)

    @classmethod
    def from_environment(cls, env: Mapping[str, str], service: str) -> OtelTracer:
        for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
            protocol = env.get(name)
            if protocol and protocol != "http/protobuf":
                log.warning(
                    "only OTLP over HTTP/protobuf is exported; ignoring the protocol asked for",
                    extra={"variable": name, "protocol": protocol},
                )
                break
        attributes: dict[str, str] = {"service.version": worker.__version__}
        named = env.get("OTEL_SERVICE_NAME") or "service.name=" in env.get(
            "OTEL_RESOURCE_ATTRIBUTES", ""
        )
        if not named:
            attributes["service.name"] = service
        provider = TracerProvider(resource=Resource.create(attributes))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        log.info("tracing on: spans are exported over OTLP/HTTP")
        return cls(provider)

    # --- the job ------------------------------------------------------------------------------

    def consume(
        self,
        headers: Mapping[str, Any] | None,
        destination: str,
        message_id: str | None,
        routing_key: str | None,
    ) -> Any:
        carrier: dict[str, str] = {}
        if headers:
            for name in (TRACEPARENT, TRACESTATE):
                value = _text(headers.get(name))
                if value is not None:
                    carrier[name] = value
        parent = _PROPAGATOR.extract(carrier, context=Context()) if carrier else Context()
        attributes: dict[str, str] = {
            "messaging.system": "rabbitmq",
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": destination,
        }
        if message_id:
            attributes["messaging.message.id"] = message_id
        if routing_key:
            attributes["messaging.rabbitmq.destination.routing_key"] = routing_key
        span = self._tracer.start_span(
            f"process {destination}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
        )
        return _Consume(span, parent)

    def job_started(self, job: AnyJob) -> None:
        if not _sampled():
            return
        span = trace.get_current_span()
        span.set_attribute("sfworker.job.id", job.job_id)
        span.set_attribute("sfworker.operation", getattr(job.operation, "value", job.operation))
        if job.account:
            span.set_attribute("sfworker.account", job.account)
        if job.tenant:
            span.set_attribute("sfworker.tenant", job.tenant)

    def account(self, name: str, tenant: str | None) -> None:
        if not _sampled():
            return
        span = trace.get_current_span()
        span.set_attribute("sfworker.account", name)
        if tenant:
            span.set_attribute("sfworker.tenant", tenant)

    def queue_wait(self, seconds: float) -> None:
        if _sampled():
            span = trace.get_current_span()
            span.set_attribute("sfworker.queue.wait_ms", round(seconds * 1000, 3))

    def job_done(self, result: BlockResult) -> None:
        if not _sampled():
            return
        span = trace.get_current_span()
        span.set_attribute("sfworker.job.id", result.job_id)
        span.set_attribute("sfworker.status", result.status.value)
        span.set_attribute("sfworker.attempts", result.attempts)
        if result.operation is not None:
            span.set_attribute("sfworker.operation", result.operation.value)
        if result.account:
            span.set_attribute("sfworker.account", result.account)
        if result.http_status is not None:
            span.set_attribute("sfworker.http_status", result.http_status)
        if result.error is not None:
            code = result.error.code.value
            span.set_attribute("sfworker.error.code", code)
            span.set_attribute("error.type", code)
            span.set_status(Status(StatusCode.ERROR, code))

    # --- inside the job -----------------------------------------------------------------------

    def span(self, name: str) -> Any:
        if not _sampled():
            return NOTHING
        return _current(self._tracer.start_span(name))

    def event(self, name: str, attributes: Mapping[str, str | int | float] | None = None) -> None:
        if _sampled():
            trace.get_current_span().add_event(name, dict(attributes or {}))

    def waiting(
        self, cm: AbstractAsyncContextManager[T], name: str
    ) -> AbstractAsyncContextManager[T]:
        return _Waited(self._tracer, cm, name) if _sampled() else cm

    @contextmanager
    def _coalescing(self) -> Iterator[Waiting]:
        waiting = Waiting(self._tracer, trace.get_current_span())
        try:
            yield waiting
        except BaseException as exc:
            waiting.end(exc)
            raise
        waiting.end(None)

    def coalescing(self) -> Any:
        return self._coalescing() if _sampled() else NOTHING

    async def in_composite(
        self, together: Callable[[A, list[P]], Awaitable[list[R]]], account: A, group: list[P]
    ) -> list[R]:
        handles = [h for h in (getattr(p, "trace", None) for p in group) if isinstance(h, Waiting)]
        contexts = [h.job_context for h in handles]
        parent = next((c for c in contexts if c.trace_flags.sampled), None)
        if parent is None:  # none of its jobs is recorded
            return await together(account, group)
        context = trace.set_span_in_context(NonRecordingSpan(parent), Context())
        span = self._tracer.start_span(
            "salesforce composite",
            context=context,
            kind=SpanKind.CLIENT,
            links=[Link(c, {"sfworker.link": "carries"}) for c in contexts],
            attributes={
                "sfworker.account": str(getattr(account, "name", "")),
                "sfworker.composite.calls": len(group),
            },
        )
        for handle in handles:
            handle.carried_by(span.get_span_context())
        token = _job.set(_job_trace(span))
        try:
            with _current(span):
                return await together(account, group)
        finally:
            _job.reset(token)

    def publish(self, destination: str, routing_key: str) -> Any:
        if not _sampled():
            return _HEADERS  # the job's own context (its span, not recorded) goes back
        return self._publish(destination, routing_key)

    @contextmanager
    def _publish(self, destination: str, routing_key: str) -> Iterator[dict[str, str]]:
        span = self._tracer.start_span(
            f"publish {destination}",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "rabbitmq",
                "messaging.operation.type": "send",
                "messaging.operation.name": "publish",
                "messaging.destination.name": destination,
                "messaging.rabbitmq.destination.routing_key": routing_key,
            },
        )
        with _current(span):
            headers: dict[str, str] = {}
            _PROPAGATOR.inject(headers)
            yield headers

    def start_root(self, name: str) -> Any:
        return _current(self._tracer.start_span(name, context=Context()))

    # --- HTTP ---------------------------------------------------------------------------------

    def http_trace_configs(self) -> list[aiohttp.TraceConfig]:
        tracer = self._tracer

        async def start(
            _session: aiohttp.ClientSession,
            ctx: SimpleNamespace,
            params: aiohttp.TraceRequestStartParams,
        ) -> None:
            if not _sampled():
                return
            url = params.url
            template = route_template(url.path)
            attributes: dict[str, str | int] = {
                "http.request.method": params.method,
                "url.template": template,
                "server.address": url.host or "",
            }
            if url.port is not None:
                attributes["server.port"] = url.port
            ctx.sfworker_span = tracer.start_span(
                f"{params.method} {template}", kind=SpanKind.CLIENT, attributes=attributes
            )

        async def end(
            _session: aiohttp.ClientSession,
            ctx: SimpleNamespace,
            params: aiohttp.TraceRequestEndParams,
        ) -> None:
            span: Span | None = getattr(ctx, "sfworker_span", None)
            if span is None:
                return
            status = params.response.status
            span.set_attribute("http.response.status_code", status)
            if status >= 400:
                span.set_attribute("error.type", str(status))
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR, str(status)))
            span.end()

        async def failed(
            _session: aiohttp.ClientSession,
            ctx: SimpleNamespace,
            params: aiohttp.TraceRequestExceptionParams,
        ) -> None:
            span: Span | None = getattr(ctx, "sfworker_span", None)
            if span is not None:
                _fail(span, params.exception)
                span.end()

        config = aiohttp.TraceConfig()
        config.on_request_start.append(start)
        config.on_request_end.append(end)
        config.on_request_exception.append(failed)
        return [config]

    async def shutdown(self) -> None:
        """Export what is buffered (bounded), in a thread: the exporter's HTTP is blocking."""
        try:
            await asyncio.wait_for(asyncio.to_thread(self._provider.shutdown), _SHUTDOWN_SECONDS)
        except TimeoutError:
            log.warning("spans not exported within the shutdown time; dropped")
