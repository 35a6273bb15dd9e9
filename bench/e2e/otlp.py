"""A sink for OTLP/HTTP traces during the tracing trials: it answers every export at once and
counts requests and bytes, without decoding them (decoding would take CPU from the machine the
systems under test share)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web

_EMPTY_RESPONSE = b""  # an empty ExportTraceServiceResponse (all fields default)


@dataclass
class Sink:
    url: str = ""
    requests: int = 0
    bytes: int = 0


@asynccontextmanager
async def otlp_sink() -> AsyncIterator[Sink]:
    sink = Sink()

    async def traces(request: web.Request) -> web.Response:
        body = await request.read()
        sink.requests += 1
        sink.bytes += len(body)
        return web.Response(body=_EMPTY_RESPONSE, content_type="application/x-protobuf")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    sink.url = f"http://127.0.0.1:{port}"
    try:
        yield sink
    finally:
        await runner.cleanup()
