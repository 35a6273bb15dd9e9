"""Building the aiohttp application and serving it."""

from __future__ import annotations

import asyncio
import signal
import sys

from aiohttp import web

from . import control, identity, oauth, rest
from .middleware import MIDDLEWARES
from .routing import ROUTE_NAMES_KEY, STATE_KEY
from .state import SimulatorState


def create_app(state: SimulatorState | None = None) -> web.Application:
    app = web.Application(middlewares=[control.control_errors, *MIDDLEWARES])
    app[STATE_KEY] = state if state is not None else SimulatorState()
    app[ROUTE_NAMES_KEY] = {}
    oauth.register(app)
    identity.register(app)
    rest.register(app)
    control.register(app)
    return app


async def start_site(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start serving `app`; returns the runner and the port actually bound (port 0 = any)."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = int(runner.addresses[0][1])
    return runner, bound


async def _serve(host: str, port: int) -> None:
    runner, bound = await start_site(create_app(), host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"simulator listening on http://{host}:{bound}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def run_simulator(host: str, port: int) -> None:
    """Serve the simulator until SIGINT/SIGTERM (blocking)."""
    try:
        asyncio.run(_serve(host, port))
    except KeyboardInterrupt:  # pragma: no cover - signal arrived before handlers were set
        sys.exit(130)


def main() -> None:
    """`sfsim [--host H] [--port P]`: the simulator alone (as `sfworker simulator`)."""
    import argparse

    parser = argparse.ArgumentParser(prog="sfsim", description=main.__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8900)
    args = parser.parse_args()
    run_simulator(args.host, args.port)
