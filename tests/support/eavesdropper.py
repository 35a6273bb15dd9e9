"""A foreign host on 127.0.0.1: answers every request with 200 `{}` and remembers what came,
so a test can tell whether a bearer token ever reached it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class Eavesdropper:
    base_url: str = ""
    seen: list[tuple[str, str]] = field(default_factory=list)  # (path, Authorization)


@asynccontextmanager
async def eavesdropper() -> AsyncIterator[Eavesdropper]:
    spy = Eavesdropper()

    async def any_request(request: web.Request) -> web.Response:
        spy.seen.append((request.path_qs, request.headers.get("Authorization", "")))
        return web.json_response({"records": [], "done": True, "totalSize": 0})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", any_request)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    spy.base_url = f"http://127.0.0.1:{port}"
    try:
        yield spy
    finally:
        await runner.cleanup()
