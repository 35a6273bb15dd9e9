"""Issue 29, point 4: the span exporter reads the standard variables as the SDK does, posts a
batch as soon as one is full, the rest at shutdown, compressed when asked, and retries what a
collector asks to be retried."""

from __future__ import annotations

import asyncio

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.support.otlp_receiver import OtlpReceiver, otlp_receiver
from worker.observability import otlp
from worker.observability.export import ExportConfig, SpanExporter
from worker.observability.spans import INTERNAL, Span, SpanRef


def test_the_standard_variables_configure_the_export() -> None:
    config = ExportConfig.from_environment(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/",
            "OTEL_EXPORTER_OTLP_HEADERS": "api-key=s%3Dcret, x-team = ivr",
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "3",
            "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
            "OTEL_BSP_SCHEDULE_DELAY": "250",
            "OTEL_BSP_MAX_QUEUE_SIZE": "100",
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "500",
        }
    )
    assert config.endpoint == "http://collector:4318/v1/traces"
    assert dict(config.headers) == {"api-key": "s=cret", "x-team": "ivr"}
    assert (config.timeout, config.compression) == (3.0, "gzip")
    assert (config.schedule_delay, config.max_queue, config.batch) == (0.25, 100, 100)
    signal = ExportConfig.from_environment(
        {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://x/custom", "OTEL_BSP_SCHEDULE_DELAY": "x"}
    )
    assert (signal.endpoint, signal.schedule_delay, signal.timeout) == ("https://x/custom", 5, 10)


def _span(exporter: SpanExporter, n: int) -> Span:
    return Span(exporter.add, f"span {n}", SpanRef(n + 1, n + 1, True), None, INTERNAL, {"n": n})


def _exporter(receiver: OtlpReceiver, **config: object) -> SpanExporter:
    resource, scope = otlp.envelope({"service.name": "t"}, "sfworker", "1")
    settings = ExportConfig(endpoint=f"{receiver.url}/v1/traces", **config)  # type: ignore[arg-type]
    return SpanExporter(settings, resource, scope)


async def test_a_full_batch_goes_at_once_and_the_rest_at_shutdown() -> None:
    async with otlp_receiver() as receiver:
        exporter = _exporter(receiver, batch=2, schedule_delay=60.0)
        for n in range(3):
            _span(exporter, n).end()
        async with asyncio.timeout(5):
            while len(receiver.spans) < 2:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert [s.name for s in receiver.spans] == ["span 0", "span 1"]
        await exporter.shutdown(within=5)
        assert [s.name for s in receiver.spans] == ["span 0", "span 1", "span 2"]
        assert receiver.spans[2].resource == {"service.name": "t"}
        assert receiver.spans[2].attributes == {"n": 2}


async def test_a_busy_collector_is_asked_again_compressed() -> None:
    answers = [503]
    bodies: list[bytes] = []
    encodings: list[str | None] = []

    async def traces(request: web.Request) -> web.Response:
        encodings.append(request.headers.get("Content-Encoding"))
        bodies.append(await request.read())  # aiohttp undoes the gzip
        status = answers.pop(0) if answers else 200
        return web.Response(status=status, content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        resource, scope = otlp.envelope({}, "sfworker", "1")
        config = ExportConfig(
            endpoint=f"http://127.0.0.1:{port}/v1/traces", timeout=5.0, compression="gzip"
        )
        exporter = SpanExporter(config, resource, scope)
        _span(exporter, 0).end()
        await exporter.shutdown(within=5)
    finally:
        await runner.cleanup()
    assert len(bodies) == 2  # the 503, then the same batch again
    assert bodies[0] == bodies[1]
    assert encodings == ["gzip", "gzip"]
    [resource_spans] = ExportTraceServiceRequest.FromString(bodies[1]).resource_spans
    assert [s.name for s in resource_spans.scope_spans[0].spans] == ["span 0"]
