"""Test helper: run the simulator in the current event loop and drive its control API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from .app import create_app, start_site
from .auth import (
    DEFAULT_APP_NAME,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_REFRESH_TOKEN,
    DEFAULT_USERNAME,
)
from .state import SimulatorState

__all__ = [
    "DEFAULT_CLIENT_ID",
    "DEFAULT_CLIENT_SECRET",
    "DEFAULT_REFRESH_TOKEN",
    "DEFAULT_USERNAME",
    "SimulatorClient",
    "SimulatorControlError",
    "running_simulator",
]


class SimulatorControlError(RuntimeError):
    """The control API refused a request."""


class SimulatorClient:
    """Talks to a running simulator's control API (/_sim/...) over HTTP."""

    def __init__(self, base_url: str, state: SimulatorState | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        # Only set when the simulator runs in this process (running_simulator); for debugging.
        self.state = state
        self._session: aiohttp.ClientSession | None = None

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        async with self._session.request(method, self.base_url + path, json=body) as resp:
            data = await resp.json(content_type=None)
            if resp.status >= 400:
                raise SimulatorControlError(f"{method} {path} -> {resp.status}: {data}")
            return data

    async def reset(self) -> None:
        await self._call("POST", "/_sim/reset")

    async def seed(self, obj: str, records: list[dict[str, Any]]) -> list[str]:
        data = await self._call("POST", "/_sim/records", {"object": obj, "records": records})
        return list(data["ids"])

    async def records(self, obj: str) -> list[dict[str, Any]]:
        data = await self._call("GET", f"/_sim/records/{obj}")
        return list(data["records"])

    async def add_schema(
        self,
        obj: str,
        prefix: str,
        fields: dict[str, str],
        required: Sequence[str] = (),
        external_ids: Sequence[str] = (),
        unique: Sequence[str] = (),
    ) -> None:
        await self._call(
            "POST",
            "/_sim/schema",
            {
                "object": obj,
                "prefix": prefix,
                "fields": fields,
                "required": list(required),
                "external_ids": list(external_ids),
                "unique": list(unique),
            },
        )

    async def set_client(
        self,
        client_id: str,
        client_secret: str,
        *,
        run_as: bool = True,
        rotation: bool = False,
        refresh_tokens: Sequence[str] = (),
        usernames: Sequence[str] = (),
        jwt_public_key_pem: str | None = None,
        app_name: str = DEFAULT_APP_NAME,
        callback_urls: Sequence[str] | None = None,
        require_pkce: bool = False,
    ) -> None:
        await self._call(
            "POST",
            "/_sim/clients",
            {
                "client_id": client_id,
                "client_secret": client_secret,
                "app_name": app_name,
                "run_as": run_as,
                "rotation": rotation,
                "refresh_tokens": list(refresh_tokens),
                "usernames": list(usernames),
                "jwt_public_key_pem": jwt_public_key_pem,
                "callback_urls": list(callback_urls) if callback_urls is not None else None,
                "require_pkce": require_pkce,
            },
        )

    async def set_user(
        self,
        username: str,
        profile: str = "System Administrator",
        objects: dict[str, dict[str, bool]] | None = None,
    ) -> None:
        """Give `username` a profile ("System Administrator", "Standard User", "Read Only") and
        per-object overrides, e.g. {"Case": {"delete": False}}."""
        await self._call(
            "POST",
            "/_sim/users",
            {"username": username, "profile": profile, "objects": objects or {}},
        )

    async def set_consent(self, approve: bool, username: str | None = None) -> None:
        """What the admin does on the authorize page: approve (as `username`) or deny."""
        await self._call("POST", "/_sim/consent", {"approve": approve, "username": username})

    async def refresh_tokens(self, client_id: str) -> list[str]:
        data = await self._call("GET", f"/_sim/clients/{client_id}/refresh_tokens")
        return list(data["refresh_tokens"])

    async def set_latency(self, ms: int, jitter_ms: int = 0, token_ms: int | None = None) -> None:
        await self._call(
            "POST", "/_sim/latency", {"ms": ms, "jitter_ms": jitter_ms, "token_ms": token_ms}
        )

    async def expire_sessions(self) -> None:
        await self._call("POST", "/_sim/sessions/expire")

    async def set_session_timeout(self, seconds: float) -> None:
        await self._call("POST", "/_sim/session_timeout", {"seconds": seconds})

    async def advance_clock(self, seconds: float) -> None:
        """Move the clock of sessions, authorization codes and the login rate `seconds` on, as
        if that long had passed with nobody calling."""
        await self._call("POST", "/_sim/clock", {"advance_seconds": seconds})

    async def set_daily_limit(self, daily_max: int, used: int | None = None) -> None:
        await self._call("POST", "/_sim/limits", {"daily_max": daily_max, "used": used})

    async def set_login_rate(self, per_hour: int) -> None:
        await self._call("POST", "/_sim/limits", {"login_rate_per_hour": per_hour})

    async def set_query_batch_max(self, records: int) -> None:
        await self._call("POST", "/_sim/limits", {"query_batch_max": records})

    async def add_fault(
        self,
        *,
        status: int = 500,
        body: Any = None,
        count: int = 1,
        action: str = "respond",
        method: str | None = None,
        route: str | None = None,
        path_contains: str | None = None,
        grant_type: str | None = None,
        headers: dict[str, str] | None = None,
        body_contains: str | None = None,
        delay_ms: int = 0,
        hold: str = "default",
    ) -> None:
        await self._call(
            "POST",
            "/_sim/faults",
            {
                "status": status,
                "body": body,
                "count": count,
                "action": action,
                "method": method,
                "route": route,
                "path_contains": path_contains,
                "grant_type": grant_type,
                "headers": headers or {},
                "body_contains": body_contains,
                "delay_ms": delay_ms,
                "hold": hold,
            },
        )

    async def hold(
        self,
        name: str = "default",
        *,
        count: int = 1,
        method: str | None = None,
        route: str | None = None,
        path_contains: str | None = None,
        grant_type: str | None = None,
        body_contains: str | None = None,
    ) -> None:
        """The next `count` matching requests wait, once their latency is spent, until
        `release(name)` (or a reset, or clear_faults); then they are answered normally."""
        await self.add_fault(
            action="hold",
            hold=name,
            count=count,
            method=method,
            route=route,
            path_contains=path_contains,
            grant_type=grant_type,
            body_contains=body_contains,
        )

    async def holds(self) -> dict[str, dict[str, Any]]:
        """Per hold name: `arrived` (requests that reached it), `waiting`, `released`."""
        data = await self._call("GET", "/_sim/holds")
        return dict(data["holds"])

    async def wait_held(self, name: str = "default", count: int = 1, within: float = 30) -> None:
        """Return once `count` requests are waiting at hold `name`; AssertionError after
        `within` seconds with what did arrive."""
        deadline = time.monotonic() + within
        while True:
            hold = (await self.holds()).get(name, {})
            if hold.get("waiting", 0) >= count:
                return
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"{count} request(s) not held at {name!r} within {within} s: {hold}"
                )
            await asyncio.sleep(0.01)

    async def release(self, name: str = "default") -> None:
        """Let the requests held under `name` go on (and later matching ones straight through)."""
        await self._call("POST", f"/_sim/holds/{name}/release")

    async def faults(self) -> list[dict[str, Any]]:
        """The fault rules not used up yet."""
        data = await self._call("GET", "/_sim/faults")
        return list(data["faults"])

    async def clear_faults(self) -> None:
        await self._call("DELETE", "/_sim/faults")

    async def counters(self) -> dict[str, Any]:
        data: dict[str, Any] = await self._call("GET", "/_sim/counters")
        return data

    async def reset_counters(self) -> None:
        await self._call("POST", "/_sim/counters/reset")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


@asynccontextmanager
async def running_simulator(
    host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[SimulatorClient]:
    """Start the simulator in the current event loop on a free port; yield a client; stop it."""
    state = SimulatorState()
    runner, bound = await start_site(create_app(state), host, port)
    client = SimulatorClient(f"http://{host}:{bound}", state)
    try:
        yield client
    finally:
        await client.close()
        await runner.cleanup()
