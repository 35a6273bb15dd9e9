"""OAuth endpoints: /services/oauth2/token, authorize, introspect and revoke."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlencode

import jwt
from aiohttp import web

from .auth import CODE_LIFETIME_SECONDS, AccessToken, Client, RefreshToken
from .errors import NO_CACHE, OAuthError, json_response
from .routing import add_route, base_url, state_of
from .state import SimulatorState

Form = Mapping[str, object]
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
LOGIN_AUDIENCES = ("https://login.salesforce.com", "https://test.salesforce.com")
LOGIN_HOSTS = frozenset({"login.salesforce.com", "test.salesforce.com"})
JWT_MAX_AHEAD_SECONDS = 300
# An authorization code brings a refresh token only when one of these scopes was granted.
REFRESH_SCOPES = frozenset({"refresh_token", "offline_access"})

EXPIRED_TOKEN = "expired access/refresh token"  # noqa: S105 - an error text


def _field(form: Form, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


async def _form(request: web.Request) -> Form:
    return await request.post()


def client_credentials_of(request: web.Request, form: Form) -> tuple[str, str]:
    """client_id / client_secret from HTTP Basic, else from the form."""
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("basic "):
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise OAuthError("invalid_client", "invalid client credentials") from None
        client_id, _, secret = decoded.partition(":")
        return client_id, secret
    return _field(form, "client_id"), _field(form, "client_secret")


def _known_client(state: SimulatorState, client_id: str) -> Client:
    client = state.auth.clients.get(client_id)
    if client is None:
        raise OAuthError("invalid_client_id", "client identifier invalid")
    return client


def _authenticated_client(state: SimulatorState, client_id: str, secret: str) -> Client:
    client = _known_client(state, client_id)
    if not hmac.compare_digest(secret.encode(), client.client_secret.encode()):
        raise OAuthError("invalid_client", "invalid client credentials")
    return client


def identity_url(state: SimulatorState, request: web.Request, username: str) -> str:
    return f"{base_url(request)}/id/{state.org_id}/{state.auth.user_id(username)}"


def token_body(
    state: SimulatorState,
    request: web.Request,
    client: Client,
    at: AccessToken,
    refresh_token: str | None = None,
) -> dict[str, Any]:
    identity = identity_url(state, request, at.username)
    issued_at = str(int(at.issued_at * 1000))
    digest = hmac.new(
        client.client_secret.encode(), (identity + issued_at).encode(), hashlib.sha256
    ).digest()
    body: dict[str, Any] = {"access_token": at.token}
    if refresh_token is not None:
        body["refresh_token"] = refresh_token
    body.update(
        {
            "signature": base64.b64encode(digest).decode(),
            "scope": at.scope,
            "instance_url": base_url(request),
            "id": identity,
            "token_type": "Bearer",
            "issued_at": issued_at,
        }
    )
    return body


# ---- grants --------------------------------------------------------------------------------
Grant = Callable[[SimulatorState, web.Request, Form], Awaitable[dict[str, Any]]]


async def _pause(state: SimulatorState) -> None:
    if state.latency.token_ms > 0:
        await asyncio.sleep(state.latency.token_ms / 1000)


async def _client_credentials(
    state: SimulatorState, request: web.Request, form: Form
) -> dict[str, Any]:
    await _pause(state)
    if request.host.split(":")[0].lower() in LOGIN_HOSTS:
        raise OAuthError("invalid_grant", "request not supported on this domain")
    client = _authenticated_client(state, *client_credentials_of(request, form))
    if not client.run_as:
        raise OAuthError("invalid_grant", "no client credentials user enabled")
    at = state.auth.new_access(client, client.run_as_user, "api")
    return token_body(state, request, client, at)


async def _refresh_token(state: SimulatorState, request: web.Request, form: Form) -> dict[str, Any]:
    client = _authenticated_client(state, *client_credentials_of(request, form))
    auth = state.auth
    token = _field(form, "refresh_token")
    rt = auth.refresh.get(token)
    if rt is None or rt.client_id != client.client_id:
        await _pause(state)
        raise OAuthError("invalid_grant", EXPIRED_TOKEN)
    if not rt.active:
        if rt.rotated_out:
            auth.revoke_chain(rt.chain_id)
            state.counters.oauth_events["replay_revoked_chain"] += 1
        await _pause(state)
        raise OAuthError("invalid_grant", EXPIRED_TOKEN)
    if token in auth.processing:
        # Today's wording; Salesforce announced "token request is already being processed".
        state.counters.oauth_events["concurrent_refresh_rejected"] += 1
        raise OAuthError("invalid_grant", "expired authorization code")
    auth.processing.add(token)
    try:
        await _pause(state)
        if not rt.active or auth.refresh.get(token) is not rt:
            raise OAuthError("invalid_grant", EXPIRED_TOKEN)
        new_refresh = None
        if client.rotation:
            rt.active = False
            rt.rotated_out = True
            new_refresh = auth.new_refresh(client, rt.username, rt.scope, chain_id=rt.chain_id)
        at = auth.new_access(client, rt.username, rt.scope, chain_id=rt.chain_id)
    finally:
        auth.processing.discard(token)
    return token_body(state, request, client, at, new_refresh.token if new_refresh else None)


def _pkce_ok(verifier: str, challenge: str, method: str) -> bool:
    if method.upper() == "S256":
        digest = hashlib.sha256(verifier.encode()).digest()
        computed = base64.urlsafe_b64encode(digest).decode().rstrip("=")
    else:
        computed = verifier
    return hmac.compare_digest(computed.encode(), challenge.encode())


async def _authorization_code(
    state: SimulatorState, request: web.Request, form: Form
) -> dict[str, Any]:
    await _pause(state)
    client_id, secret = client_credentials_of(request, form)
    client = _known_client(state, client_id)
    code = state.auth.codes.get(_field(form, "code"))
    if (
        code is None
        or code.used
        or state.auth.now() - code.created > CODE_LIFETIME_SECONDS
        or code.client_id != client.client_id
    ):
        raise OAuthError("invalid_grant", "expired authorization code")
    code.used = True
    if secret or code.code_challenge is None:
        _authenticated_client(state, client_id, secret)
    if _field(form, "redirect_uri") != code.redirect_uri:
        raise OAuthError("invalid_grant", "redirect_uri must match configuration")
    if code.code_challenge is not None:
        verifier = _field(form, "code_verifier")
        if not verifier or not _pkce_ok(verifier, code.code_challenge, code.code_challenge_method):
            raise OAuthError("invalid_grant", "invalid code verifier")
        state.counters.pkce_verified += 1
    if REFRESH_SCOPES.isdisjoint(code.scope.split()):
        at = state.auth.new_access(client, code.username, code.scope)
        return token_body(state, request, client, at)
    rt = state.auth.new_refresh(client, code.username, code.scope)
    state.auth.enforce_approval_limit(client.client_id, code.username)
    at = state.auth.new_access(client, code.username, code.scope, chain_id=rt.chain_id)
    return token_body(state, request, client, at, rt.token)


async def _jwt_bearer(state: SimulatorState, request: web.Request, form: Form) -> dict[str, Any]:
    await _pause(state)
    assertion = _field(form, "assertion")
    try:
        header = jwt.get_unverified_header(assertion)
        claims = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise OAuthError("invalid_grant", "invalid assertion") from None
    if header.get("alg") != "RS256":
        raise OAuthError("invalid_grant", "invalid assertion")
    client = _known_client(state, str(claims.get("iss", "")))
    if client.jwt_public_key_pem:
        try:
            jwt.decode(
                assertion,
                client.jwt_public_key_pem,
                algorithms=["RS256"],
                options={
                    "verify_exp": False,
                    "verify_aud": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except (jwt.PyJWTError, ValueError):
            raise OAuthError("invalid_grant", "invalid assertion") from None
    audiences = claims.get("aud")
    auds = audiences if isinstance(audiences, list) else [audiences]
    allowed = {*LOGIN_AUDIENCES, base_url(request)}
    if not any(isinstance(a, str) and a.rstrip("/") in allowed for a in auds):
        raise OAuthError("invalid_grant", "audience is invalid")
    exp = claims.get("exp")
    now = time.time()
    if not isinstance(exp, int | float) or isinstance(exp, bool) or exp <= now:
        raise OAuthError("invalid_grant", "expired authorization code")
    if exp > now + JWT_MAX_AHEAD_SECONDS + 5:
        raise OAuthError("invalid_grant", "invalid assertion")
    username = str(claims.get("sub", ""))
    if username not in client.usernames:
        raise OAuthError("invalid_grant", "user hasn't approved this consumer")
    at = state.auth.new_access(client, username, "api")
    return token_body(state, request, client, at)


GRANTS: dict[str, Grant] = {
    "client_credentials": _client_credentials,
    "refresh_token": _refresh_token,
    "authorization_code": _authorization_code,
    JWT_GRANT: _jwt_bearer,
}


def _login_user(state: SimulatorState, request: web.Request, form: Form, grant: str) -> str:
    """Whose login this is, for the per-user hourly login rate."""
    auth = state.auth
    client_id, _ = client_credentials_of(request, form)
    if grant == "refresh_token" and (rt := auth.refresh.get(_field(form, "refresh_token"))):
        return rt.username
    if grant == "authorization_code" and (code := auth.codes.get(_field(form, "code"))):
        return code.username
    if grant == JWT_GRANT:
        try:
            claims = jwt.decode(_field(form, "assertion"), options={"verify_signature": False})
            return str(claims.get("sub", ""))
        except jwt.PyJWTError:
            return ""
    client = auth.clients.get(client_id)
    return client.run_as_user if client is not None else f"client:{client_id}"


async def token(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    form = await _form(request)
    grant = _field(form, "grant_type")
    user = _login_user(state, request, form, grant)
    if not state.auth.login_allowed(user, state.limits.login_rate_per_hour):
        raise OAuthError("rate_limit_exceeded", "Login Rate Exceeded")
    handler = GRANTS.get(grant)
    if handler is None:
        raise OAuthError("unsupported_grant_type", "grant type not supported")
    body = await handler(state, request, form)
    return json_response(body, headers=NO_CACHE)


# ---- authorize / introspect / revoke -------------------------------------------------------
def _redirect(redirect_uri: str, params: dict[str, str]) -> web.HTTPFound:
    separator = "&" if "?" in redirect_uri else "?"
    return web.HTTPFound(f"{redirect_uri}{separator}{urlencode(params)}")


async def authorize(request: web.Request) -> web.StreamResponse:
    """The authorize page: the admin logs in and approves (or denies, see the control API's
    consent switch); then 302 to redirect_uri?code=...&state=... (or ?error=access_denied).

    An unknown client or a redirect_uri that is not one of the app's Callback URLs is shown on
    the page itself (400) and never redirected."""
    state = state_of(request)
    query = request.query
    client = state.auth.clients.get(query.get("client_id", ""))
    redirect_uri = query.get("redirect_uri", "")
    if client is None:
        raise OAuthError("invalid_client_id", "client identifier invalid")
    if not redirect_uri or (
        client.callback_urls is not None and redirect_uri not in client.callback_urls
    ):
        raise OAuthError("redirect_uri_mismatch", "redirect_uri must match configuration")
    params: dict[str, str]
    challenge = query.get("code_challenge") or None
    if query.get("response_type") != "code":
        params = {
            "error": "unsupported_response_type",
            "error_description": "response type not supported",
        }
    elif client.require_pkce and challenge is None:
        params = {
            "error": "invalid_request",
            "error_description": "missing required code challenge",
        }
    elif not state.auth.consent_approve:
        params = {"error": "access_denied", "error_description": "end-user denied authorization"}
    else:
        method = query.get("code_challenge_method", "S256")
        code = state.auth.new_code(
            client, redirect_uri, query.get("scope", "api refresh_token"), challenge, method
        )
        params = {"code": code.code}
    if "state" in query:
        params["state"] = query["state"]
    raise _redirect(redirect_uri, params)


def _introspection(
    state: SimulatorState,
    request: web.Request,
    token: AccessToken | RefreshToken,
    token_type: str,
    **extra: int,
) -> dict[str, Any]:
    return {
        "active": True,
        "scope": token.scope,
        "client_id": token.client_id,
        "username": token.username,
        "sub": identity_url(state, request, token.username),
        "token_type": token_type,
        **extra,
        "iat": int(token.issued_at),
        "nbf": int(token.issued_at),
    }


async def introspect(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    form = await _form(request)
    client = _authenticated_client(state, *client_credentials_of(request, form))
    token_value = _field(form, "token")
    auth = state.auth
    at = auth.session(token_value, state.session_timeout_seconds, touch=False)
    if at is not None and at.client_id == client.client_id:
        idle = auth.now() - at.last_used
        expires = int(time.time() + state.session_timeout_seconds - idle)
        return json_response(_introspection(state, request, at, "access_token", exp=expires))
    rt = auth.refresh.get(token_value)
    if rt is not None and rt.active and rt.client_id == client.client_id:
        return json_response(_introspection(state, request, rt, "refresh_token"))
    return json_response({"active": False})


async def revoke(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    form = await _form(request)
    token_value = _field(form, "token") or request.query.get("token", "")
    auth = state.auth
    if token_value in auth.access:
        del auth.access[token_value]
        return web.Response(status=200)
    rt = auth.refresh.get(token_value)
    if rt is not None and rt.active:
        auth.revoke_chain(rt.chain_id)
        return web.Response(status=200)
    raise OAuthError("unsupported_token_type", "this token type is not supported")


def register(app: web.Application) -> None:
    add_route(app, "POST", "/services/oauth2/token", token, "token")
    add_route(app, "GET", "/services/oauth2/authorize", authorize, "authorize")
    add_route(app, "POST", "/services/oauth2/introspect", introspect, "introspect")
    add_route(app, "POST", "/services/oauth2/revoke", revoke, "revoke")
    add_route(app, "GET", "/services/oauth2/revoke", revoke, "revoke")
