"""HTTP endpoints for Kubernetes and Prometheus: /metrics, /livez, /readyz."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from worker.observability.metrics import Metrics


def create_app(metrics: Metrics, readiness: Callable[[], dict[str, bool]]) -> web.Application:
    """`readiness` returns named checks; /readyz is 200 only when all of them hold."""

    async def livez(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_request: web.Request) -> web.Response:
        checks = readiness()
        ready = all(checks.values())
        return web.json_response(
            {"status": "ready" if ready else "not ready", "checks": checks},
            status=200 if ready else 503,
        )

    app = web.Application()
    app.router.add_get("/metrics", make_aiohttp_handler(metrics.registry))
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    return app


async def start(app: web.Application, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner
