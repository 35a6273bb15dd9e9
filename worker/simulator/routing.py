"""Route registration with the simulator's route names, and small request helpers."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.web_urldispatcher import AbstractRoute

from .state import SimulatorState

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

STATE_KEY = web.AppKey("sfsim_state", SimulatorState)
ROUTE_NAMES_KEY = web.AppKey[dict[AbstractRoute, str]]("sfsim_route_names")

VERSION_RE = re.compile(r"^/services/data/v(\d+)\.(\d+)(?:/|$)")
MIN_VERSION, MAX_VERSION = 20, 66
CONTROL_PREFIX = "/_sim/"
REST_PREFIX = "/services/data"


def add_route(app: web.Application, method: str, path: str, handler: Handler, name: str) -> None:
    route = app.router.add_route(method, path, handler)
    app[ROUTE_NAMES_KEY][route] = name


def route_name(request: web.Request) -> str | None:
    route = request.match_info.route
    return request.app[ROUTE_NAMES_KEY].get(route)


def state_of(request: web.Request) -> SimulatorState:
    return request.app[STATE_KEY]


def base_url(request: web.Request) -> str:
    """The simulator's own base URL as the caller reached it (instance_url)."""
    return f"{request.scheme}://{request.host}"


def is_control(request: web.Request) -> bool:
    return request.path.startswith(CONTROL_PREFIX)


def is_rest(request: web.Request) -> bool:
    return request.path == REST_PREFIX or request.path.startswith(REST_PREFIX + "/")


def api_version(request: web.Request) -> tuple[str, int] | None:
    """("62.0", 62) for /services/data/v62.0/..., None outside versioned REST paths."""
    match = VERSION_RE.match(request.path)
    if match is None:
        return None
    return f"{match.group(1)}.{match.group(2)}", int(match.group(1))


def supported_version(version: str) -> bool:
    major, _, minor = version.partition(".")
    return minor == "0" and MIN_VERSION <= int(major) <= MAX_VERSION
