"""`sfworker accounts authorize NAME --port PORT --out FILE`: the OAuth web-server flow (with
PKCE) that gives a `refresh_token` account its refresh token.

The admin opens the printed URL, logs in as the integration user and allows access; Salesforce
redirects the browser to http://localhost:PORT/callback, where this command listens (on
127.0.0.1). It checks the state, exchanges the code with the client secret and the PKCE
verifier, writes the refresh token to FILE with mode 0600 (never printing it) and says who
authorized. The callback URL must be one of the External Client App's Callback URLs.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import secrets
import sys
import tomllib
import webbrowser
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
from aiohttp import web

from worker.accounts import Account, ConfigError, Flow, parse_accounts
from worker.commands.accounts.hints import auth_hint
from worker.commands.accounts.org import OrgError, identity
from worker.salesforce.http import create_session
from worker.salesforce.oauth import AuthError, Grant, post_token_form
from worker.settings import Settings

SCOPES = "api refresh_token"
CALLBACK_PATH = "/callback"
_PENDING = "pending-authorization"


class AuthorizeFailed(Exception):
    """The flow ended without a refresh token; the message is Salesforce's error and a hint."""


@dataclass(frozen=True)
class Pkce:
    verifier: str
    challenge: str

    @classmethod
    def new(cls) -> Pkce:
        verifier = secrets.token_urlsafe(64)  # 86 characters of [A-Za-z0-9_-]
        digest = hashlib.sha256(verifier.encode("ascii")).digest()
        return cls(verifier, base64.urlsafe_b64encode(digest).decode("ascii").rstrip("="))


def load_account(settings: Settings, name: str) -> Account:
    """The account `name`, read without its refresh token (the one this command obtains)."""
    path = settings.accounts_file
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"accounts file {path}: cannot read: {exc.strerror or 'error'}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"accounts file {path}: not valid TOML: {exc}") from None
    tables = data.get("accounts")
    table = tables.get(name) if isinstance(tables, dict) else None
    if not isinstance(table, dict):
        raise ConfigError(f"no account named {name!r} in {path}")
    if table.get("flow") != Flow.REFRESH_TOKEN.value:
        raise ConfigError(
            f"account {name!r} uses flow {table.get('flow')!r}: authorize is for refresh_token "
            "accounts (client_credentials and jwt_bearer need no browser)"
        )
    table = {k: v for k, v in table.items() if not k.startswith("refresh_token")}
    table["refresh_token"] = _PENDING
    accounts = parse_accounts(
        {"accounts": {name: table}},
        path.parent,
        allow_insecure_localhost=settings.allow_insecure_localhost,
    )
    return accounts.by_name[name]


def authorize_url(account: Account, redirect_uri: str, state: str, pkce: Pkce) -> str:
    query = {
        "response_type": "code",
        "client_id": account.client_id,
        "redirect_uri": redirect_uri,
        "scope": SCOPES,
        "state": state,
        "code_challenge": pkce.challenge,
        "code_challenge_method": "S256",
    }
    return f"{account.instance_url}/services/oauth2/authorize?{urlencode(query, quote_via=quote)}"


_PAGE = "<!doctype html><title>sfworker</title><p>{}</p>"


class CallbackServer:
    """Listens on 127.0.0.1:PORT for the one redirect of the browser."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.received: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()
        self._runner: web.AppRunner | None = None

    async def _callback(self, request: web.Request) -> web.Response:
        params = dict(request.query)
        if not self.received.done():
            self.received.set_result(params)
        text = (
            "Authorization refused; see the terminal."
            if "error" in params
            else "sfworker received the authorization; you can close this tab."
        )
        return web.Response(text=_PAGE.format(text), content_type="text/html")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get(CALLBACK_PATH, self._callback)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        except OSError as exc:
            await self._runner.cleanup()
            raise ConfigError(
                f"cannot listen on 127.0.0.1:{self.port} ({exc.strerror or exc}): choose another "
                "--port, and add its callback URL to the External Client App"
            ) from None

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def write_secret(path: Path, value: str) -> None:
    """Write `value` to `path` with mode 0600, atomically (a temporary file, then rename)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, value.encode("utf-8") + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _can_open_browser() -> bool:
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


async def _wait_for_callback(server: CallbackServer, state: str, wait: float) -> str:
    try:
        async with asyncio.timeout(wait):
            params = await server.received
    except TimeoutError:
        raise AuthorizeFailed(
            f"no callback within {wait:g} s: was the URL opened, and is "
            f"http://localhost:{server.port}{CALLBACK_PATH} a Callback URL of the app?"
        ) from None
    if "error" in params:
        detail = params["error"]
        if params.get("error_description"):
            detail += f": {params['error_description']}"
        raise AuthorizeFailed(f"authorization refused: {detail}")
    if not secrets.compare_digest(params.get("state", ""), state):
        raise AuthorizeFailed("the callback's state does not match this request: not using it")
    code = params.get("code", "")
    if not code:
        raise AuthorizeFailed("the callback carries no code")
    return code


async def _exchange(
    session: aiohttp.ClientSession,
    account: Account,
    code: str,
    redirect_uri: str,
    pkce: Pkce,
    settings: Settings,
) -> Grant:
    assert account.client_secret is not None
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "client_id": account.client_id,
        "client_secret": account.client_secret.get_secret_value(),
        "redirect_uri": redirect_uri,
        "code_verifier": pkce.verifier,
    }
    try:
        async with asyncio.timeout(settings.token_timeout_seconds):
            return await post_token_form(session, account.token_url, form, "authorization_code")
    except TimeoutError:
        raise AuthorizeFailed("the token endpoint did not answer the code exchange") from None
    except AuthError as exc:
        detail = f"{exc.error}: {exc.description}" if exc.description else exc.message
        raise AuthorizeFailed(
            f"the code exchange was refused: {detail} (hint: "
            f"{auth_hint(account, exc.error, exc.description)})"
        ) from None


async def run_authorize(
    settings: Settings, name: str, port: int, out: Path, *, open_browser: bool, wait: float
) -> int:
    account = load_account(settings, name)
    redirect_uri = f"http://localhost:{port}{CALLBACK_PATH}"
    pkce, state = Pkce.new(), secrets.token_urlsafe(24)
    server = CallbackServer(port)
    await server.start()
    session = create_session(settings)
    try:
        url = authorize_url(account, redirect_uri, state, pkce)
        print(
            f"Open this URL in a browser, log in as the integration user of {name!r} and allow "
            f"access (the app's Callback URLs must include {redirect_uri}):",
            flush=True,
        )
        print(url, flush=True)
        if open_browser and _can_open_browser():
            await asyncio.to_thread(webbrowser.open, url)
        code = await _wait_for_callback(server, state, wait)
        grant = await _exchange(session, account, code, redirect_uri, pkce, settings)
        if grant.refresh_token is None:
            raise AuthorizeFailed(
                "Salesforce issued no refresh token: give the app the refresh_token "
                "(offline_access) OAuth scope"
            )
        write_secret(out, grant.refresh_token.get_secret_value())
        try:
            who = await identity(session, account, grant, settings.token_timeout_seconds)
            by = f"{who.username} (user {who.user_id}, org {who.org_id})"
        except OrgError as exc:
            by = f"an unknown user ({exc})"
        print(f"Authorized by {by}.")
        print(f"Refresh token written to {out} (mode 0600). Point the account at it:")
        print(f'  refresh_token_file = "{out}"')
        return 0
    finally:
        await session.close()
        await server.close()


def run(
    settings: Settings, name: str, port: int, out: Path, *, open_browser: bool, wait: float
) -> int:
    try:
        return asyncio.run(
            run_authorize(settings, name, port, out, open_browser=open_browser, wait=wait)
        )
    except AuthorizeFailed as exc:
        print(f"sfworker: {exc}", file=sys.stderr)
        return 1
    except aiohttp.ClientError as exc:  # pragma: no cover - post_token_form wraps these
        print(f"sfworker: {type(exc).__name__}", file=sys.stderr)
        return 1
