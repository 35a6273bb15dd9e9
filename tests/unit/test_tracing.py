"""Tracing without a broker: what an HTTP span may name, the W3C header, and the off switch."""

from __future__ import annotations

import sys

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import use_span

from worker import observability
from worker.observability import tracing


@pytest.mark.parametrize(
    ("path", "template"),
    [
        ("/services/data/v62.0/query", "/services/data/v62.0/query"),
        (
            "/services/data/v62.0/query/01gD0000002HU6KIAW-2000",
            "/services/data/v62.0/query/{cursor}",
        ),
        ("/services/data/v62.0/search", "/services/data/v62.0/search"),
        ("/services/data/v62.0/sobjects/Contact", "/services/data/v62.0/sobjects/Contact"),
        (
            "/services/data/v62.0/sobjects/Contact/003D000000QxYz1IAF",
            "/services/data/v62.0/sobjects/Contact/{id}",
        ),
        (
            "/services/data/v62.0/sobjects/Contact/Phone_Key__c/%2B1%20415",
            "/services/data/v62.0/sobjects/Contact/Phone_Key__c/{value}",
        ),
        ("/services/data/v62.0/composite", "/services/data/v62.0/composite"),
        ("/services/oauth2/token", "/services/oauth2/token"),
        ("/elsewhere/with/a/value", "/{path}"),
    ],
)
def test_an_http_span_names_the_route_without_its_values(path: str, template: str) -> None:
    assert tracing.route_template(path) == template


def test_the_w3c_header_is_read_strictly() -> None:
    good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    job = tracing.parse_traceparent({"traceparent": good.encode(), "tracestate": "a=b"})
    assert job is not None
    assert (job.trace_id, job.span_id, job.sampled) == (
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "00f067aa0ba902b7",
        True,
    )
    assert job.headers() == {"traceparent": good, "tracestate": "a=b"}
    for bad in (
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # all-zero span id
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # invalid version
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        "not a traceparent",
    ):
        assert tracing.parse_traceparent({"traceparent": bad}) is None
    assert tracing.parse_traceparent({"traceparent": 7}) is None
    assert tracing.parse_traceparent(None) is None


def test_without_an_endpoint_tracing_is_off() -> None:
    assert tracing.from_environment({}) is tracing.OFF
    assert tracing.from_environment({"OTEL_SERVICE_NAME": "x"}) is tracing.OFF
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}
    assert tracing.from_environment({**endpoint, "OTEL_SDK_DISABLED": "true"}) is tracing.OFF
    assert tracing.from_environment({**endpoint, "OTEL_TRACES_EXPORTER": "none"}) is tracing.OFF
    assert tracing.configured(endpoint)


def test_without_the_otel_extra_an_endpoint_leaves_tracing_off(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The worker runs without the OpenTelemetry SDK installed: it says so and traces nothing."""
    monkeypatch.setitem(sys.modules, "worker.observability.otel", None)  # import fails
    monkeypatch.delattr(observability, "otel", raising=False)  # even if imported before
    tracer = tracing.from_environment({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert tracer is tracing.OFF
    assert "sfworker[otel]" in caplog.text


def test_off_hooks_allocate_nothing_and_pass_the_context_through() -> None:
    off = tracing.OFF
    assert off.consume(None, "q", None, None) is tracing.NOTHING
    assert off.consume({"x-delivery-count": 1}, "q", None, None) is tracing.NOTHING
    assert off.span("token wait") is tracing.NOTHING
    assert off.http_trace_configs() == []
    header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
    with off.consume({"traceparent": header}, "q", None, None):
        assert tracing.log_ids() == ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")
        assert tracing.exemplar() is None  # not sampled: no trace to point at
        with off.publish("reply", "reply") as headers:
            assert headers == {"traceparent": header}
    assert tracing.log_ids() is None
    with off.publish("reply", "reply") as headers:
        assert headers is None


def test_the_client_injects_the_callers_current_span() -> None:
    """BlockClient sends the trace context of the caller's current OpenTelemetry span."""
    assert tracing.outgoing_headers() == {}
    span = TracerProvider().get_tracer("runtime").start_span("ivr step")
    with use_span(span, end_on_exit=True):
        headers = tracing.outgoing_headers()
    context = span.get_span_context()
    assert headers["traceparent"].split("-")[1:3] == [
        f"{context.trace_id:032x}",
        f"{context.span_id:016x}",
    ]
