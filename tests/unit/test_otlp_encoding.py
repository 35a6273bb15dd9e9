"""Issue 29, point 4: the worker's own spans, encoded by hand (observability/otlp.py), are the
message the OpenTelemetry SDK's exporter would send for the same span: ids, parent and its
remoteness, kind, times, attributes, events, links, status, resource and scope."""

from __future__ import annotations

from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    TraceFlags,
    set_span_in_context,
)
from opentelemetry.trace.span import TraceState
from opentelemetry.trace.status import Status, StatusCode

from worker.observability import otlp
from worker.observability.spans import CLIENT, CONSUMER, Span, SpanRef

TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
PARENT = 0x00F067AA0BA902B7
SPAN = 0x53995C3F42CD8AD8
OTHER = (0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331)
START, END = 1_700_000_000_123_456_789, 1_700_000_000_223_456_789


class _Fixed(IdGenerator):
    def generate_span_id(self) -> int:
        return SPAN

    def generate_trace_id(self) -> int:
        return TRACE


class _Keep(SpanExporter):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: object) -> SpanExportResult:
        self.spans.extend(spans)  # type: ignore[call-overload]
        return SpanExportResult.SUCCESS


RESOURCE = {"service.name": "sfworker-test", "service.version": "0.1.0", "k8s.pod.name": "w-1"}


def _sdk(remote_parent: bool, failed: bool) -> bytes:
    keep = _Keep()
    provider = TracerProvider(resource=Resource(RESOURCE), id_generator=_Fixed())
    provider.add_span_processor(SimpleSpanProcessor(keep))
    tracer = provider.get_tracer("sfworker", "0.1.0")
    parent = SpanContext(
        TRACE,
        PARENT,
        is_remote=remote_parent,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
        trace_state=TraceState([("vendor", "opaque")]),
    )
    span = tracer.start_span(
        "process sfworker.jobs",
        context=set_span_in_context(NonRecordingSpan(parent), Context()),
        kind=SpanKind.CONSUMER if remote_parent else SpanKind.CLIENT,
        attributes={"messaging.system": "rabbitmq", "sfworker.attempts": 2},
        links=[Link(SpanContext(*OTHER, is_remote=False), {"sfworker.link": "carries"})],
        start_time=START,
    )
    span.set_attribute("sfworker.queue.wait_ms", 1.25)
    span.set_attribute("sfworker.negative", -3)
    span.set_attribute("sfworker.flag", True)
    span.add_event("retry", {"reason": "server_unavailable", "delay_ms": 20.5}, START + 5)
    if failed:
        span.set_status(Status(StatusCode.ERROR, "TIMEOUT"))
    span.end(END)
    provider.shutdown()
    return encode_spans(keep.spans).SerializeToString()


def _ours(remote_parent: bool, failed: bool) -> bytes:
    kept: list[bytes] = []
    parent = SpanRef(TRACE, PARENT, True, "vendor=opaque", remote=remote_parent)
    span = Span(
        lambda s: kept.append(otlp.encode_span(s)),
        "process sfworker.jobs",
        SpanRef(TRACE, SPAN, True, "vendor=opaque"),
        parent,
        CONSUMER if remote_parent else CLIENT,
        {"messaging.system": "rabbitmq", "sfworker.attempts": 2},
        start_ns=START,
    )
    span.add_link(SpanRef(*OTHER, sampled=False), {"sfworker.link": "carries"})
    span.set_attribute("sfworker.queue.wait_ms", 1.25)
    span.set_attribute("sfworker.negative", -3)
    span.set_attribute("sfworker.flag", True)
    span.events.append(("retry", START + 5, {"reason": "server_unavailable", "delay_ms": 20.5}))
    if failed:
        span.fail("TIMEOUT")
    span.end(END)
    resource, scope = otlp.envelope(RESOURCE, "sfworker", "0.1.0")
    return otlp.request(resource, scope, kept)


def test_a_span_is_encoded_as_the_sdk_encodes_it() -> None:
    for remote_parent in (True, False):
        for failed in (True, False):
            sdk = ExportTraceServiceRequest.FromString(_sdk(remote_parent, failed))
            ours = ExportTraceServiceRequest.FromString(_ours(remote_parent, failed))
            assert ours == sdk, (remote_parent, failed)


def test_varints_and_empty_spans() -> None:
    assert otlp.varint(0) == b"\x00"
    assert otlp.varint(300) == b"\xac\x02"
    assert otlp.varint(-1) == b"\xff" * 9 + b"\x01"
    resource, scope = otlp.envelope({}, "sfworker", "1")
    request = ExportTraceServiceRequest.FromString(otlp.request(resource, scope, []))
    assert request.resource_spans[0].scope_spans[0].scope.name == "sfworker"
