"""Route registration with the simulator's route names, and small request helpers."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web
from aiohttp.web_urldispatcher import AbstractRoute

from .state import SimulatorState

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class SfRequest(Protocol):
    """What a REST handler reads from its request: an aiohttp request, or one subrequest of a
    composite request (composite.py)."""

    @property
    def match_info(self) -> Mapping[str, str]: ...

    @property
    def query(self) -> Mapping[str, str]: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def path(self) -> str: ...

    @property
    def app(self) -> web.Application: ...

    async def read(self) -> bytes: ...


STATE_KEY = web.AppKey("sfsim_state", SimulatorState)
ROUTE_NAMES_KEY = web.AppKey[dict[AbstractRoute, str]]("sfsim_route_names")

VERSION_RE = re.compile(r"^/services/data/v(\d+)\.(\d+)(?:/|$)")
MIN_VERSION, MAX_VERSION = 20, 66
CONTROL_PREFIX = "/_sim/"
V = r"/services/data/{version:v\d+\.\d+}"  # the versioned REST prefix of route paths
REST_PREFIX = "/services/data"


SfHandler = Callable[[SfRequest], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Route:
    """One REST route: method, aiohttp path template, handler and the simulator's route name."""

    method: str
    path: str
    handler: Handler
    name: str


def add_route(app: web.Application, method: str, path: str, handler: Handler, name: str) -> None:
    route = app.router.add_route(method, path, handler)
    app[ROUTE_NAMES_KEY][route] = name


def route_name(request: web.Request) -> str | None:
    route = request.match_info.route
    return request.app[ROUTE_NAMES_KEY].get(route)


def state_of(request: SfRequest) -> SimulatorState:
    return request.app[STATE_KEY]


def base_url(request: web.Request) -> str:
    """The simulator's own base URL as the caller reached it (instance_url)."""
    return f"{request.scheme}://{request.host}"


def drop_connection(request: web.Request) -> None:
    """Close the client's connection without an answer (a lost response, a network fault)."""
    transport = request.transport
    if transport is not None:
        transport.abort()


def is_control(request: web.Request) -> bool:
    return request.path.startswith(CONTROL_PREFIX)


def is_rest(request: web.Request) -> bool:
    return request.path == REST_PREFIX or request.path.startswith(REST_PREFIX + "/")


def api_version(request: SfRequest) -> tuple[str, int] | None:
    """("62.0", 62) for /services/data/v62.0/..., None outside versioned REST paths."""
    match = VERSION_RE.match(request.path)
    if match is None:
        return None
    return f"{match.group(1)}.{match.group(2)}", int(match.group(1))


def supported_version(version: str) -> bool:
    major, _, minor = version.partition(".")
    return minor == "0" and MIN_VERSION <= int(major) <= MAX_VERSION
