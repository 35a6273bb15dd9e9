"""Control API under /_sim/: reset, schema, seeding, clients, latency, limits, faults, counters.

No auth, never counted as API usage, never delayed or faulted.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .auth import DEFAULT_APP_NAME, DEFAULT_USERNAME, Client
from .errors import SfError, json_response
from .faults import FaultRule
from .routing import Handler, add_route, state_of
from .schema import ObjectDef, SchemaError
from .state import SimulatorState
from .users import SYSTEM_ADMINISTRATOR


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SchemaBody(_Body):
    object: str
    prefix: str | None = None
    fields: dict[str, str] = Field(default_factory=dict)
    required: list[str] = Field(default_factory=list)
    external_ids: list[str] = Field(default_factory=list)
    unique: list[str] = Field(default_factory=list)


class RecordsBody(_Body):
    object: str
    records: list[dict[str, Any]]


class ClientBody(_Body):
    client_id: str
    client_secret: str
    app_name: str = DEFAULT_APP_NAME
    run_as: bool = True
    rotation: bool = False
    refresh_tokens: list[str] = Field(default_factory=list)
    usernames: list[str] = Field(default_factory=list)
    jwt_public_key_pem: str | None = None
    callback_urls: list[str] | None = None
    require_pkce: bool = False


class UserBody(_Body):
    username: str
    profile: str = SYSTEM_ADMINISTRATOR
    objects: dict[str, dict[str, bool]] = Field(default_factory=dict)


class ConsentBody(_Body):
    approve: bool = True
    username: str | None = None


class LatencyBody(_Body):
    ms: int = Field(0, ge=0)
    jitter_ms: int = Field(0, ge=0)
    token_ms: int | None = Field(None, ge=0)


class TimeoutBody(_Body):
    seconds: float = Field(gt=0)


class ClockBody(_Body):
    advance_seconds: float = Field(gt=0)


class LimitsBody(_Body):
    daily_max: int | None = Field(None, ge=0)
    used: int | None = Field(None, ge=0)
    login_rate_per_hour: int | None = Field(None, ge=0)
    query_batch_max: int | None = Field(None, ge=1, le=2000)


class FaultBody(_Body):
    count: int = Field(1, ge=1)
    status: int = Field(500, ge=100, le=599)
    body: Any = None
    headers: dict[str, str] = Field(default_factory=dict)
    action: Literal["respond", "drop_after", "drop_before", "delay", "hold"] = "respond"
    method: str | None = None
    route: str | None = None
    path_contains: str | None = None
    grant_type: str | None = None
    body_contains: str | None = None
    delay_ms: int = Field(0, ge=0)
    hold: str = Field("default", min_length=1)


class ControlError(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


M = TypeVar("M", bound=BaseModel)


async def _parse(request: web.Request, model: type[M]) -> M:
    raw = await request.read()
    try:
        return model.model_validate(orjson.loads(raw or b"{}"))
    except (orjson.JSONDecodeError, ValidationError) as err:
        raise ControlError(f"bad {model.__name__}: {err}") from None


def _object(state: SimulatorState, name: str) -> ObjectDef:
    obj = state.schema.get(name)
    if obj is None:
        raise ControlError(f"unknown object {name!r}", status=404)
    return obj


OK = {"ok": True}


async def reset(request: web.Request) -> web.StreamResponse:
    state_of(request).reset()
    return json_response(OK)


async def schema(request: web.Request) -> web.StreamResponse:
    body = await _parse(request, SchemaBody)
    state = state_of(request)
    try:
        obj = state.schema.define(
            body.object, body.prefix, body.fields, body.required, body.external_ids, body.unique
        )
    except SchemaError as err:
        raise ControlError(str(err)) from None
    state.records.backfill(obj)
    return json_response({"object": obj.name, "prefix": obj.prefix})


async def seed(request: web.Request) -> web.StreamResponse:
    body = await _parse(request, RecordsBody)
    state = state_of(request)
    obj = _object(state, body.object)
    try:
        ids = state.records.insert_many(obj, body.records, seeding=True)
    except SfError as err:
        return json_response({"error": err.message, "errors": err.body()}, status=400)
    return json_response({"ids": ids})


async def records(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    obj = _object(state, request.match_info["object"])
    return json_response({"records": state.records.all(obj, include_deleted=True)})


async def clients(request: web.Request) -> web.StreamResponse:
    body = await _parse(request, ClientBody)
    client = Client(
        client_id=body.client_id,
        client_secret=body.client_secret,
        app_name=body.app_name,
        run_as=body.run_as,
        rotation=body.rotation,
        usernames=body.usernames or [DEFAULT_USERNAME],
        jwt_public_key_pem=body.jwt_public_key_pem,
        callback_urls=body.callback_urls,
        require_pkce=body.require_pkce,
    )
    state_of(request).auth.set_client(client, body.refresh_tokens)
    return json_response(OK)


async def users(request: web.Request) -> web.StreamResponse:
    body = await _parse(request, UserBody)
    try:
        state_of(request).users.set(body.username, body.profile, body.objects)
    except ValueError as err:
        raise ControlError(str(err)) from None
    return json_response(OK)


async def consent(request: web.Request) -> web.StreamResponse:
    body = await _parse(request, ConsentBody)
    auth = state_of(request).auth
    auth.consent_approve = body.approve
    auth.consent_username = body.username
    return json_response(OK)


async def refresh_tokens(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    client_id = request.match_info["client_id"]
    if client_id not in state.auth.clients:
        raise ControlError(f"unknown client {client_id!r}", status=404)
    return json_response({"refresh_tokens": state.auth.valid_refresh_tokens(client_id)})


async def latency(request: web.Request) -> web.StreamResponse:
    body = await _parse(request, LatencyBody)
    lat = state_of(request).latency
    lat.ms, lat.jitter_ms = body.ms, body.jitter_ms
    if body.token_ms is not None:
        lat.token_ms = body.token_ms
    return json_response(OK)


async def expire_sessions(request: web.Request) -> web.StreamResponse:
    state_of(request).auth.expire_all_sessions()
    return json_response(OK)


async def session_timeout(request: web.Request) -> web.StreamResponse:
    body = await _parse(request, TimeoutBody)
    state_of(request).session_timeout_seconds = body.seconds
    return json_response(OK)


async def clock(request: web.Request) -> web.StreamResponse:
    body = await _parse(request, ClockBody)
    auth = state_of(request).auth
    auth.skew += body.advance_seconds
    return json_response({"skew_seconds": auth.skew})


async def limits(request: web.Request) -> web.StreamResponse:
    body = await _parse(request, LimitsBody)
    lim = state_of(request).limits
    if body.daily_max is not None:
        lim.daily_max = body.daily_max
    if body.used is not None:
        lim.used = body.used
    if body.login_rate_per_hour is not None:
        lim.login_rate_per_hour = body.login_rate_per_hour
    if body.query_batch_max is not None:
        lim.query_batch_max = body.query_batch_max
    return json_response({"daily_max": lim.daily_max, "used": lim.used})


async def add_fault(request: web.Request) -> web.StreamResponse:
    body = await _parse(request, FaultBody)
    state_of(request).faults.add(FaultRule(**body.model_dump()))
    return json_response(OK)


async def list_faults(request: web.Request) -> web.StreamResponse:
    rules = state_of(request).faults.rules
    return json_response({"faults": [vars(rule) for rule in rules]})


async def clear_faults(request: web.Request) -> web.StreamResponse:
    state_of(request).faults.clear()
    return json_response(OK)


async def holds(request: web.Request) -> web.StreamResponse:
    book = state_of(request).faults
    return json_response({"holds": {name: h.snapshot() for name, h in book.holds.items()}})


async def release_hold(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if not state_of(request).faults.release(name):
        raise ControlError(f"unknown hold {name!r}", status=404)
    return json_response(OK)


async def counters(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    return json_response(state.counters.snapshot(state.limits))


async def reset_counters(request: web.Request) -> web.StreamResponse:
    state_of(request).reset_counters()
    return json_response(OK)


@web.middleware
async def control_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
    except ControlError as err:
        return json_response({"error": str(err)}, status=err.status)
    return response


def register(app: web.Application) -> None:
    routes = [
        ("POST", "/_sim/reset", reset, "control_reset"),
        ("POST", "/_sim/schema", schema, "control_schema"),
        ("POST", "/_sim/records", seed, "control_seed"),
        ("GET", "/_sim/records/{object}", records, "control_records"),
        ("POST", "/_sim/clients", clients, "control_clients"),
        ("GET", "/_sim/clients/{client_id}/refresh_tokens", refresh_tokens, "control_tokens"),
        ("POST", "/_sim/users", users, "control_users"),
        ("POST", "/_sim/consent", consent, "control_consent"),
        ("POST", "/_sim/latency", latency, "control_latency"),
        ("POST", "/_sim/sessions/expire", expire_sessions, "control_expire"),
        ("POST", "/_sim/session_timeout", session_timeout, "control_timeout"),
        ("POST", "/_sim/limits", limits, "control_limits"),
        ("POST", "/_sim/clock", clock, "control_clock"),
        ("POST", "/_sim/faults", add_fault, "control_add_fault"),
        ("GET", "/_sim/faults", list_faults, "control_faults"),
        ("DELETE", "/_sim/faults", clear_faults, "control_clear_faults"),
        ("GET", "/_sim/holds", holds, "control_holds"),
        ("POST", "/_sim/holds/{name}/release", release_hold, "control_release_hold"),
        ("GET", "/_sim/counters", counters, "control_counters"),
        ("POST", "/_sim/counters/reset", reset_counters, "control_reset_counters"),
    ]
    for method, path, handler, name in routes:
        add_route(app, method, path, handler, name)
