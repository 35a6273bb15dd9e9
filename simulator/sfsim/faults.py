"""Fault rules: the next N matching requests get a canned answer, a dropped connection, a delay
before their normal answer, or are held until the test releases them (then answered normally).
A rule may match on the method, the route, a part of the path and query, a part of the request
body, and the token grant type."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from aiohttp import web

from .errors import JSON_CONTENT_TYPE

FaultAction = Literal["respond", "drop_after", "drop_before", "delay", "hold"]
OAUTH_ROUTES = frozenset({"token", "introspect", "revoke", "authorize"})

_DEFAULT_REST_ERRORS: dict[int, tuple[str, str]] = {
    400: ("UNABLE_TO_LOCK_ROW", "unable to obtain exclusive access to this record"),
    401: ("INVALID_SESSION_ID", "Session expired or invalid"),
    403: ("REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded."),
    404: ("NOT_FOUND", "The requested resource does not exist"),
    503: ("SERVER_UNAVAILABLE", "server too busy"),
}
_UNKNOWN = (
    "UNKNOWN_EXCEPTION",
    "An unexpected error occurred. Please include this ErrorId if you contact support: "
    "1873492017-40553 (-1160231245)",
)


@dataclass
class FaultRule:
    count: int = 1
    status: int = 500
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    action: FaultAction = "respond"
    method: str | None = None
    route: str | None = None
    path_contains: str | None = None
    grant_type: str | None = None
    body_contains: str | None = None
    delay_ms: int = 0  # action "delay": answer normally after this long
    hold: str = "default"  # action "hold": the name the test releases

    def matches(
        self, method: str, route: str | None, paths: tuple[str, ...], grant: str, body: str = ""
    ) -> bool:
        if self.method is not None and self.method.upper() != method.upper():
            return False
        if self.route is not None and self.route != route:
            return False
        if self.path_contains is not None and not any(self.path_contains in p for p in paths):
            return False
        if self.body_contains is not None and self.body_contains not in body:
            return False
        return self.grant_type is None or self.grant_type == grant

    def response(self, route: str | None) -> web.Response:
        body = self.body if self.body is not None else _default_body(self.status, route)
        if isinstance(body, str):
            payload = body.encode()
            ctype = JSON_CONTENT_TYPE if _looks_like_json(body) else "text/html;charset=UTF-8"
        else:
            payload = orjson.dumps(body)
            ctype = JSON_CONTENT_TYPE
        headers = {"Content-Type": ctype, **self.headers}
        return web.Response(body=payload, status=self.status, headers=headers)


def _looks_like_json(text: str) -> bool:
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return True


def _default_body(status: int, route: str | None) -> Any:
    """A realistic body for a rule without one."""
    if route in OAUTH_ROUTES:
        return {"error": "unknown_error", "error_description": "retry your request"}
    code, message = _DEFAULT_REST_ERRORS.get(status, _UNKNOWN)
    return [{"message": message, "errorCode": code}]


@dataclass
class Hold:
    """The requests a "hold" rule stopped: they wait until the test releases the hold."""

    released: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: int = 0  # requests that reached the hold, in all
    waiting: int = 0  # of them, those still waiting

    def snapshot(self) -> dict[str, Any]:
        return {
            "arrived": self.arrived,
            "waiting": self.waiting,
            "released": self.released.is_set(),
        }


class FaultBook:
    def __init__(self) -> None:
        self.rules: list[FaultRule] = []
        self.holds: dict[str, Hold] = {}

    def add(self, rule: FaultRule) -> None:
        if rule.count <= 0:
            return
        if rule.action == "hold":
            current = self.holds.get(rule.hold)
            if current is None or current.released.is_set():
                self.holds[rule.hold] = Hold()
        self.rules.append(rule)

    def clear(self) -> None:
        """No rules left; every held request goes on."""
        self.rules.clear()
        self.release_all()

    async def wait_for_release(self, name: str) -> None:
        hold = self.holds.setdefault(name, Hold())
        hold.arrived += 1
        hold.waiting += 1
        try:
            await hold.released.wait()
        finally:
            hold.waiting -= 1

    def release(self, name: str) -> bool:
        """Let the requests held under `name` go on, and later ones through; False if unknown."""
        hold = self.holds.get(name)
        if hold is None:
            return False
        hold.released.set()
        return True

    def release_all(self) -> None:
        for hold in self.holds.values():
            hold.released.set()

    def wants_grant_type(self) -> bool:
        return any(rule.grant_type is not None for rule in self.rules)

    def wants_body(self) -> bool:
        return any(rule.body_contains is not None for rule in self.rules)

    def take(
        self, method: str, route: str | None, paths: tuple[str, ...], grant: str, body: str = ""
    ) -> FaultRule | None:
        """The first matching rule with count left; uses up one of its count."""
        for rule in self.rules:
            if rule.count > 0 and rule.matches(method, route, paths, grant, body):
                rule.count -= 1
                if rule.count == 0:
                    self.rules.remove(rule)
                return rule
        return None
