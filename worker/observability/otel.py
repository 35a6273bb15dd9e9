"""The tracing hooks (tracing.py) as OpenTelemetry spans: the `sfworker[otel]` extra.

Imported only when an OTLP endpoint is configured, and configured by the standard variables
alone: the sampler by `OTEL_TRACES_SAMPLER[_ARG]` (the SDK's own sampler, parent-based by
default: a job's sampled flag decides), the resource by `OTEL_SERVICE_NAME` and
`OTEL_RESOURCE_ATTRIBUTES` (the SDK's `Resource`), the export by `OTEL_EXPORTER_OTLP_*`
(HTTP/protobuf) and the batching by `OTEL_BSP_*` (export.py).

The spans are the worker's own (spans.py), not the SDK's: the same names, kinds, parents,
attributes, events, links and status, at a fraction of the CPU (docs/benchmarks.md §8). Only
the span that decides a job's trace asks the sampler; the spans under it follow its decision
(what every built-in sampler decides for them too). A job that is not sampled gets ids for its
logs and result and nothing else. Each worker has its own exporter: several workers in one
process (the tests) each export their own spans. Attributes never hold a parameter value, a
record field, a token or an exception's message: traces leave the cluster.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, contextmanager
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, TypeVar, cast

import aiohttp
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import Decision, Sampler
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.span import TraceState

import worker
from worker.observability import otlp
from worker.observability.export import ExportConfig, SpanExporter
from worker.observability.otel_scopes import (
    Consume,
    Current,
    Waited,
    Waiting,
    fail,
    headers_of,
    job_trace,
    sampled,
)
from worker.observability.spans import (
    CLIENT,
    CONSUMER,
    INTERNAL,
    PRODUCER,
    AttributeValue,
    Span,
    SpanRef,
    current_span,
    new_span_id,
    new_trace_id,
)
from worker.observability.tracing import (
    _HEADERS,
    NOTHING,
    TRACEPARENT,
    Tracer,
    _job,
    parse_traceparent,
    route_template,
)

if TYPE_CHECKING:
    from worker.contract import AnyJob, BlockResult

log = logging.getLogger(__name__)

T = TypeVar("T")
A = TypeVar("A")
P = TypeVar("P")
R = TypeVar("R")

_SHUTDOWN_SECONDS = 10.0
_KINDS = {INTERNAL: SpanKind.INTERNAL, CONSUMER: SpanKind.CONSUMER, CLIENT: SpanKind.CLIENT}


class OtelTracer(Tracer):
    enabled = True

    def __init__(self, sampler: Sampler, exporter: SpanExporter) -> None:
        self._sampler = sampler
        self._exporter = exporter
        self._sink = exporter.add

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
        resource = Resource.create(attributes)
        # The SDK's sampler as OTEL_TRACES_SAMPLER[_ARG] choose it (the provider only reads it).
        sampler = TracerProvider(shutdown_on_exit=False).sampler
        scalars = cast(dict[str, AttributeValue], dict(resource.attributes))
        envelope = otlp.envelope(scalars, "sfworker", worker.__version__)
        exporter = SpanExporter(ExportConfig.from_environment(env), *envelope)
        log.info("tracing on: spans are exported over OTLP/HTTP")
        return cls(sampler, exporter)

    # --- spans --------------------------------------------------------------------------------

    def root(
        self,
        name: str,
        kind: int,
        attributes: dict[str, AttributeValue],
        parent: SpanRef | None = None,
    ) -> Span:
        """A span that starts or continues a trace: the sampler decides whether it is recorded
        (the SDK's decision, from the same inputs)."""
        trace_id = parent.trace_id if parent is not None else new_trace_id()
        context = Context()
        if parent is not None:
            parent_context = SpanContext(
                parent.trace_id,
                parent.span_id,
                is_remote=parent.remote,
                trace_flags=TraceFlags(TraceFlags.SAMPLED if parent.sampled else 0),
                trace_state=TraceState.from_header([parent.trace_state])
                if parent.trace_state
                else None,
            )
            context = trace.set_span_in_context(NonRecordingSpan(parent_context), context)
        result = self._sampler.should_sample(
            context, trace_id, name, _KINDS.get(kind, SpanKind.INTERNAL), attributes
        )
        sampled = result.decision is Decision.RECORD_AND_SAMPLE  # as the SDK exports
        state = result.trace_state.to_header() if result.trace_state else None
        ref = SpanRef(trace_id, new_span_id(), sampled, state or None)
        if not sampled:
            return Span(None, name, ref, parent, kind)
        recorded = cast(dict[str, AttributeValue], dict(result.attributes or attributes))
        return Span(self._sink, name, ref, parent, kind, recorded)

    def child(
        self,
        name: str,
        kind: int = INTERNAL,
        attributes: dict[str, AttributeValue] | None = None,
        start_ns: int | None = None,
    ) -> Span:
        """A span under the current one, recorded when it is."""
        parent = current_span.get()
        if parent is None:
            return self.root(name, kind, attributes or {})
        ref = parent.ref
        own = SpanRef(ref.trace_id, new_span_id(), ref.sampled, ref.trace_state)
        sink = self._sink if parent.recording else None
        return Span(sink, name, own, ref, kind, attributes, start_ns)

    # --- the job ------------------------------------------------------------------------------

    def consume(
        self,
        headers: Mapping[str, Any] | None,
        destination: str,
        message_id: str | None,
        routing_key: str | None,
    ) -> Any:
        parent: SpanRef | None = None
        if headers and TRACEPARENT in headers:
            job = parse_traceparent(headers)
            if job is not None:
                parent = SpanRef(
                    int(job.trace_id, 16),
                    int(job.span_id, 16),
                    job.sampled,
                    job.tracestate,
                    remote=True,
                )
        attributes: dict[str, AttributeValue] = {
            "messaging.system": "rabbitmq",
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": destination,
        }
        if message_id:
            attributes["messaging.message.id"] = message_id
        if routing_key:
            attributes["messaging.rabbitmq.destination.routing_key"] = routing_key
        return Consume(self.root(f"process {destination}", CONSUMER, attributes, parent))

    def job_started(self, job: AnyJob) -> None:
        span = current_span.get()
        if span is None or not sampled():
            return
        span.set_attribute("sfworker.job.id", job.job_id)
        span.set_attribute("sfworker.operation", getattr(job.operation, "value", job.operation))
        if job.account:
            span.set_attribute("sfworker.account", job.account)
        if job.tenant:
            span.set_attribute("sfworker.tenant", job.tenant)

    def account(self, name: str, tenant: str | None) -> None:
        span = current_span.get()
        if span is None or not sampled():
            return
        span.set_attribute("sfworker.account", name)
        if tenant:
            span.set_attribute("sfworker.tenant", tenant)

    def queue_wait(self, seconds: float) -> None:
        span = current_span.get()
        if span is not None and sampled():
            span.set_attribute("sfworker.queue.wait_ms", round(seconds * 1000, 3))

    def job_done(self, result: BlockResult) -> None:
        span = current_span.get()
        if span is None or not sampled():
            return
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
            span.fail(code)

    # --- inside the job -----------------------------------------------------------------------

    def span(self, name: str) -> Any:
        if not sampled():
            return NOTHING
        return Current(self.child(name))

    def event(self, name: str, attributes: Mapping[str, str | int | float] | None = None) -> None:
        span = current_span.get()
        if span is not None and sampled():
            span.add_event(name, dict(attributes or {}))

    def waiting(
        self, cm: AbstractAsyncContextManager[T], name: str
    ) -> AbstractAsyncContextManager[T]:
        return Waited(self.child, cm, name) if sampled() else cm

    @contextmanager
    def _coalescing(self, job_span: Span) -> Iterator[Waiting]:
        waiting = Waiting(self.child, job_span)
        try:
            yield waiting
        except BaseException as exc:
            waiting.end(exc)
            raise
        waiting.end(None)

    def coalescing(self) -> Any:
        span = current_span.get()
        return self._coalescing(span) if span is not None and sampled() else NOTHING

    async def in_composite(
        self, together: Callable[[A, list[P]], Awaitable[list[R]]], account: A, group: list[P]
    ) -> list[R]:
        handles = [h for h in (getattr(p, "trace", None) for p in group) if isinstance(h, Waiting)]
        refs = [h.job_ref for h in handles]
        parent = next((r for r in refs if r.sampled), None)
        if parent is None:  # none of its jobs is recorded
            return await together(account, group)
        span = Span(
            self._sink,
            "salesforce composite",
            SpanRef(parent.trace_id, new_span_id(), True, parent.trace_state),
            parent,
            CLIENT,
            {
                "sfworker.account": str(getattr(account, "name", "")),
                "sfworker.composite.calls": len(group),
            },
        )
        for ref in refs:
            span.add_link(ref, {"sfworker.link": "carries"})
        for handle in handles:
            handle.carried_by(span.ref)
        token = _job.set(job_trace(span))
        try:
            with Current(span):
                return await together(account, group)
        finally:
            _job.reset(token)

    def publish(self, destination: str, routing_key: str) -> Any:
        if not sampled():
            return _HEADERS  # the job's own context (its span, not recorded) goes back
        return self._publish(destination, routing_key)

    @contextmanager
    def _publish(self, destination: str, routing_key: str) -> Iterator[dict[str, str]]:
        span = self.child(
            f"publish {destination}",
            PRODUCER,
            {
                "messaging.system": "rabbitmq",
                "messaging.operation.type": "send",
                "messaging.operation.name": "publish",
                "messaging.destination.name": destination,
                "messaging.rabbitmq.destination.routing_key": routing_key,
            },
        )
        with Current(span):
            yield headers_of(span.ref)

    @contextmanager
    def _root(self, name: str) -> Iterator[Span]:
        span = self.root(name, INTERNAL, {})
        ref = span.ref
        # Current for OpenTelemetry too: BlockClient injects the caller's context from there.
        context = SpanContext(
            ref.trace_id,
            ref.span_id,
            is_remote=False,
            trace_flags=TraceFlags(TraceFlags.SAMPLED if ref.sampled else 0),
        )
        token = otel_context.attach(trace.set_span_in_context(NonRecordingSpan(context)))
        try:
            with Current(span):
                yield span
        finally:
            otel_context.detach(token)

    def start_root(self, name: str) -> Any:
        return self._root(name)

    # --- HTTP ---------------------------------------------------------------------------------

    def http_trace_configs(self) -> list[aiohttp.TraceConfig]:
        config = aiohttp.TraceConfig()
        self.add_http_hooks(config)
        return [config]

    def add_http_hooks(self, config: aiohttp.TraceConfig) -> None:
        child = self.child

        async def start(
            _session: aiohttp.ClientSession,
            ctx: SimpleNamespace,
            params: aiohttp.TraceRequestStartParams,
        ) -> None:
            if not sampled():
                return
            url = params.url
            template = route_template(url.path)
            attributes: dict[str, AttributeValue] = {
                "http.request.method": params.method,
                "url.template": template,
                "server.address": url.host or "",
            }
            if url.port is not None:
                attributes["server.port"] = url.port
            ctx.sfworker_span = child(f"{params.method} {template}", CLIENT, attributes)

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
                span.fail(str(status))
            span.end()

        async def failed(
            _session: aiohttp.ClientSession,
            ctx: SimpleNamespace,
            params: aiohttp.TraceRequestExceptionParams,
        ) -> None:
            span: Span | None = getattr(ctx, "sfworker_span", None)
            if span is not None:
                fail(span, params.exception)
                span.end()

        config.on_request_start.append(start)
        config.on_request_end.append(end)
        config.on_request_exception.append(failed)

    async def shutdown(self) -> None:
        """Export what is queued (bounded)."""
        await self._exporter.shutdown(within=_SHUTDOWN_SECONDS)
