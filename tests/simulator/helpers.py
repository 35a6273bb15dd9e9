"""What the simulator tests share: its REST API called as a logged-in client would, and token
requests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp
from sfsim import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET
from sfsim.testing import SimulatorClient

VERSION = "v62.0"


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str]

    @property
    def error_code(self) -> str:
        return str(self.body[0]["errorCode"])


@dataclass
class Api:
    """Calls the simulator's REST API as a logged-in client would."""

    sim: SimulatorClient
    http: aiohttp.ClientSession
    token: str

    @property
    def base(self) -> str:
        return f"{self.sim.base_url}/services/data/{VERSION}"

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        data: Any = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        token: str | None = None,
    ) -> Reply:
        url = path if path.startswith("http") else self.sim.base_url + path
        if not path.startswith(("http", "/services", "/_sim")):
            url = f"{self.base}/{path.lstrip('/')}"
        all_headers = {"Authorization": f"Bearer {token or self.token}", **(headers or {})}
        async with self.http.request(
            method, url, json=json, data=data, params=params, headers=all_headers
        ) as resp:
            raw = await resp.read()
            body = await resp.json(content_type=None) if raw else None
            return Reply(resp.status, body, dict(resp.headers))

    async def get(self, path: str, **kw: Any) -> Reply:
        return await self.call("GET", path, **kw)

    async def post(self, path: str, **kw: Any) -> Reply:
        return await self.call("POST", path, **kw)

    async def patch(self, path: str, **kw: Any) -> Reply:
        return await self.call("PATCH", path, **kw)

    async def delete(self, path: str, **kw: Any) -> Reply:
        return await self.call("DELETE", path, **kw)

    async def query(self, soql: str, **kw: Any) -> Reply:
        return await self.get("query", params={"q": soql}, **kw)


async def token_request(
    http: aiohttp.ClientSession, sim: SimulatorClient, **form: str
) -> tuple[int, dict[str, Any]]:
    async with http.post(f"{sim.base_url}/services/oauth2/token", data=form) as resp:
        return resp.status, await resp.json()


async def client_credentials_token(http: aiohttp.ClientSession, sim: SimulatorClient) -> str:
    status, body = await token_request(
        http,
        sim,
        grant_type="client_credentials",
        client_id=DEFAULT_CLIENT_ID,
        client_secret=DEFAULT_CLIENT_SECRET,
    )
    assert status == 200, body
    return str(body["access_token"])
