"""Layers around every handler: counting, latency and faults, the REST gate, error shaping.

Order (outermost first): instrument -> faults -> rest_gate -> errors -> handler.
Control routes (/_sim/) pass straight through all of them.
"""

from __future__ import annotations

import asyncio
import random

from aiohttp import web

from .errors import (
    OAuthError,
    SfError,
    json_response,
    not_found,
    oauth_error_response,
    sf_error_response,
)
from .routing import (
    Handler,
    SfRequest,
    api_version,
    drop_connection,
    is_control,
    is_rest,
    route_name,
    state_of,
    supported_version,
)
from .state import SimulatorState

LIMIT_HEADER = "Sforce-Limit-Info"
QUERY_ROUTES = frozenset({"query", "query_all", "search"})


def bearer_token(request: SfRequest) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() not in ("bearer", "oauth") or not token.strip():
        return None
    return token.strip()


def limit_info(state: SimulatorState, request: web.Request) -> str:
    limits = state.limits
    text = f"api-usage={limits.used}/{limits.daily_max}"
    token = bearer_token(request)
    at = state.auth.access.get(token) if token else None
    client = state.auth.clients.get(at.client_id) if at is not None else None
    if client is not None:
        app_used = limits.per_app_used[client.app_name]
        text += f"; per-app-api-usage={app_used}/{limits.daily_max}(appName={client.app_name})"
    return text


@web.middleware
async def instrument(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count requests, grant types and queries; track concurrency; stamp Sforce-Limit-Info."""
    if is_control(request):
        return await handler(request)
    state = state_of(request)
    name = route_name(request)
    state.counters.requests[name or "unmatched"] += 1
    if name == "token":
        form = await request.post()
        state.counters.token_requests[str(form.get("grant_type", ""))] += 1
    if name in QUERY_ROUTES and "q" in request.query:
        state.counters.queries.append(request.query["q"])
    if not is_rest(request):
        return await handler(request)
    state.counters.enter()
    try:
        response = await handler(request)
    finally:
        state.counters.leave()  # a counters reset meanwhile carried in_flight over
    state.counters.responses[str(response.status)] += 1
    if LIMIT_HEADER not in response.headers:
        response.headers[LIMIT_HEADER] = limit_info(state, request)
    return response


@web.middleware
async def faults(request: web.Request, handler: Handler) -> web.StreamResponse:
    """REST latency, then the first matching fault rule (respond / drop_before / drop_after /
    delay / hold)."""
    if is_control(request):
        return await handler(request)
    state = state_of(request)
    if is_rest(request):
        if request.can_read_body:
            # Like Salesforce, a request that arrived whole is processed even if its client
            # goes away meanwhile: take the body in before the simulated latency.
            await request.read()
        delay = state.latency.ms + random.uniform(0, state.latency.jitter_ms)
        if delay > 0:
            await asyncio.sleep(delay / 1000)
    name = route_name(request)
    grant = ""
    if name == "token" and state.faults.wants_grant_type():
        grant = str((await request.post()).get("grant_type", ""))
    paths = (request.path_qs, request.raw_path)
    body = ""
    if state.faults.wants_body() and request.body_exists:
        body = (await request.read()).decode("utf-8", "replace")  # cached for the handler
    rule = state.faults.take(request.method, name, paths, grant, body)
    if rule is None:
        return await handler(request)
    if rule.action == "delay":
        await asyncio.sleep(rule.delay_ms / 1000)
        return await handler(request)
    if rule.action == "hold":
        await state.faults.wait_for_release(rule.hold)
        return await handler(request)
    if rule.action == "drop_before":
        drop_connection(request)
        return web.Response(status=500)
    if rule.action == "drop_after":
        response = await handler(request)
        drop_connection(request)
        return response
    return rule.response(name)


@web.middleware
async def rest_gate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Versioned REST paths: known version, valid session, daily limit, then count the call."""
    version = api_version(request)
    if version is None or is_control(request):
        return await handler(request)
    if not supported_version(version[0]):
        return sf_error_response(not_found())
    state = state_of(request)
    session = state.auth.session(bearer_token(request), state.session_timeout_seconds, touch=True)
    if session is None:
        response = sf_error_response(
            SfError(401, "INVALID_SESSION_ID", "Session expired or invalid")
        )
        response.headers["WWW-Authenticate"] = "Token"
        return response
    limits = state.limits
    if limits.used >= limits.daily_max:
        return sf_error_response(
            SfError(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")
        )
    limits.used += 1
    client = state.auth.clients.get(session.client_id)
    if client is not None:
        limits.per_app_used[client.app_name] += 1
    return await handler(request)


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """SfError / OAuthError / aiohttp 404 and 405 -> Salesforce-shaped bodies."""
    try:
        return await handler(request)
    except SfError as err:
        return sf_error_response(err)
    except OAuthError as err:
        return oauth_error_response(err)
    except web.HTTPMethodNotAllowed as exc:
        if not request.path.startswith("/services/"):
            raise
        allowed = ",".join(sorted(exc.allowed_methods))
        return json_response(
            [
                {
                    "errorCode": "METHOD_NOT_ALLOWED",
                    "message": f"HTTP Method '{request.method}' not allowed. Allowed are {allowed}",
                }
            ],
            status=405,
            headers={"Allow": allowed},
        )
    except web.HTTPNotFound:
        if not request.path.startswith("/services/"):
            raise
        return sf_error_response(not_found())


MIDDLEWARES = [instrument, faults, rest_gate, errors]
