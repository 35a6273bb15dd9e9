"""What an org tells about an integration account once it has a token: who the token belongs to
(identity URL), the daily API usage (/limits) and what the user may do with an object
(describe). Every call is bounded by `within` seconds; failures raise OrgError."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from worker.accounts import Account
from worker.runtime.reach import endpoint
from worker.salesforce.oauth import Grant


class OrgError(Exception):
    """A call to the org failed; the message names Salesforce's error (never a token)."""


@dataclass(frozen=True)
class Identity:
    username: str
    user_id: str
    org_id: str
    display_name: str


@dataclass(frozen=True)
class ApiUsage:
    used: int
    limit: int

    @property
    def percent(self) -> int:
        return round(100 * self.used / self.limit) if self.limit else 0

    def __str__(self) -> str:
        return f"{self.used:,} of {self.limit:,} ({self.percent}%)"


@dataclass(frozen=True)
class ObjectAccess:
    """One object as the integration user sees it (describe), or `visible=False`."""

    name: str
    visible: bool
    queryable: bool = False
    createable: bool = False
    updateable: bool = False
    deletable: bool = False


def _error_text(status: int, raw: bytes) -> str:
    try:
        body: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        text = raw.decode(errors="replace").strip()[:120]
        return f"HTTP {status}" + (f": {text}" if text else "")
    if isinstance(body, list) and body and isinstance(body[0], dict):
        return f"{body[0].get('errorCode', f'HTTP {status}')}: {body[0].get('message', '')}"
    return f"HTTP {status}"


async def _get(
    session: aiohttp.ClientSession, url: str, grant: Grant, within: float
) -> tuple[int, bytes]:
    headers = {
        "Authorization": f"Bearer {grant.access_token.get_secret_value()}",
        "Accept": "application/json",
    }
    try:
        async with (
            asyncio.timeout(within),
            session.get(url, headers=headers, allow_redirects=False) as response,
        ):
            return response.status, await response.read()
    except TimeoutError:
        raise OrgError(f"no answer from {endpoint(url)} within {within:g} s") from None
    except aiohttp.ClientError as exc:
        raise OrgError(f"cannot reach {endpoint(url)} ({type(exc).__name__})") from None


# Salesforce's identity URLs live on the login hosts or the org's own domains.
_SALESFORCE_DOMAINS = (".salesforce.com", ".force.com", ".salesforce.mil", ".sfcrmproducts.cn")


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    default = {"https": 443, "http": 80}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


def identity_url_refusal(account: Account, url: str) -> str | None:
    """Why the token response's identity URL must not receive the token, or None when it may:
    https on a Salesforce domain, or the very origin (scheme, host, port) of the account's
    instance or token URL (plain http only then: the loopback simulator the accounts file
    names)."""
    parts = urlsplit(url)
    try:
        scheme, host, port = _origin(url)
    except ValueError:
        return "the identity URL has no valid port"
    if parts.username is not None or parts.password is not None or not host:
        return "the identity URL has no plain host"
    if (scheme, host, port) in {_origin(account.instance_url), _origin(account.token_url)}:
        return None
    if scheme != "https":
        return f"the identity URL's scheme {scheme or '(none)'}:// is not https://"
    if host.endswith(_SALESFORCE_DOMAINS) and port == 443:
        return None
    return "the identity URL is not on Salesforce's nor the account's host"


async def identity(
    session: aiohttp.ClientSession, account: Account, grant: Grant, within: float
) -> Identity:
    if not grant.identity_url:
        raise OrgError("the token response has no identity URL (id)")
    refusal = identity_url_refusal(account, grant.identity_url)
    if refusal is not None:
        raise OrgError(f"{refusal}; the token was not sent to it")
    status, raw = await _get(session, grant.identity_url, grant, within)
    if status != 200:
        raise OrgError(f"identity URL: {_error_text(status, raw)}")
    body = orjson.loads(raw)
    return Identity(
        username=str(body.get("username", "")),
        user_id=str(body.get("user_id", "")),
        org_id=str(body.get("organization_id", "")),
        display_name=str(body.get("display_name", "")),
    )


async def api_usage(
    session: aiohttp.ClientSession, account: Account, grant: Grant, within: float
) -> ApiUsage:
    status, raw = await _get(session, f"{account.api_base}/limits", grant, within)
    if status != 200:
        raise OrgError(f"/limits: {_error_text(status, raw)}")
    daily = orjson.loads(raw).get("DailyApiRequests") or {}
    limit, remaining = int(daily.get("Max", 0)), int(daily.get("Remaining", 0))
    # The /limits call counts itself (every REST call but the versions list does): report the
    # org's usage as it stood before this check, i.e. what the org's own traffic used.
    return ApiUsage(used=max(0, limit - remaining - 1), limit=limit)


async def object_access(
    session: aiohttp.ClientSession, account: Account, grant: Grant, name: str, within: float
) -> ObjectAccess:
    url = f"{account.api_base}/sobjects/{name}/describe"
    status, raw = await _get(session, url, grant, within)
    if status == 404:
        return ObjectAccess(name, visible=False)
    if status != 200:
        raise OrgError(f"describe {name}: {_error_text(status, raw)}")
    body = orjson.loads(raw)
    return ObjectAccess(
        name=str(body.get("name", name)),
        visible=True,
        queryable=bool(body.get("queryable")),
        createable=bool(body.get("createable")),
        updateable=bool(body.get("updateable")),
        deletable=bool(body.get("deletable")),
    )
