"""sObject routes: create, read, update, delete, upsert and read by external id."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from .errors import SfError, json_parser_error, json_response, not_found
from .ids import normalize_id
from .rest_describe import session_username
from .rest_query import url_for
from .routing import SfRequest, api_version, state_of
from .schema import FieldDef, FieldType, ObjectDef, Record
from .soql_eval import no_column
from .soql_lexer import located
from .state import SimulatorState
from .users import require

UPSERT_200_SINCE = 46  # an upsert that updates: 204 without a body before, 200 created:false


def _object(state: SimulatorState, request: SfRequest, action: str = "read") -> ObjectDef:
    """The URL's sObject, when the session's user may `action` its records."""
    obj = state.schema.get(request.match_info["sobject"])
    if obj is None:
        raise not_found()
    require(state.users, session_username(request), obj.name, action)
    return obj


def _record_id(obj: ObjectDef, raw: str) -> str:
    normal = normalize_id(raw)
    if normal is None:
        raise SfError(400, "MALFORMED_ID", f"malformed id {raw}")
    if not normal.startswith(obj.prefix):
        raise not_found()
    return normal


async def _json_body(request: SfRequest) -> Any:
    raw = await request.read()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        text = raw.decode(errors="replace").lstrip()
        if not text:
            raise json_parser_error(
                "No content to map due to end-of-input at [line:1, column:0]"
            ) from None
        char = text[0]
        raise json_parser_error(
            f"Unexpected character ('{char}' (code {ord(char)})): expected a valid value "
            "(number, String, array, object, 'true', 'false' or 'null') at [line:1, column:1]"
        ) from None


def _url(request: SfRequest, obj: ObjectDef, record_id: str) -> str:
    return url_for(request.match_info["version"])(obj, record_id)


def _selected_fields(request: SfRequest, obj: ObjectDef) -> list[FieldDef]:
    spec = request.query.get("fields")
    if spec is None:
        return obj.field_list
    selected: list[FieldDef] = []
    pos = 0
    for name in spec.split(","):
        stripped = name.strip()
        fd = obj.field(stripped) if stripped else None
        if fd is None:
            start = pos + len(name) - len(name.lstrip())
            raise SfError(400, "INVALID_FIELD", located(spec, start, no_column(stripped, obj)))
        if fd not in selected:
            selected.append(fd)
        pos += len(name) + 1
    return selected


def _render(request: SfRequest, obj: ObjectDef, record: Record) -> Record:
    out: Record = {"attributes": {"type": obj.name, "url": _url(request, obj, record["Id"])}}
    for fd in _selected_fields(request, obj):
        out[fd.name] = record.get(fd.name)
    return out


async def create(request: SfRequest) -> web.StreamResponse:
    state = state_of(request)
    obj = _object(state, request, "create")
    record_id = state.records.insert(obj, await _json_body(request))
    return json_response({"id": record_id, "success": True, "errors": []}, status=201)


async def get(request: SfRequest) -> web.StreamResponse:
    state = state_of(request)
    obj = _object(state, request)
    record = state.records.live(obj, _record_id(obj, request.match_info["id"]))
    return json_response(_render(request, obj, record))


async def update(request: SfRequest) -> web.StreamResponse:
    state = state_of(request)
    obj = _object(state, request, "edit")
    record_id = _record_id(obj, request.match_info["id"])
    body = await _json_body(request)
    state.records.update(obj, record_id, body)
    return web.Response(status=204)


async def delete(request: SfRequest) -> web.StreamResponse:
    state = state_of(request)
    obj = _object(state, request, "delete")
    state.records.delete(obj, _record_id(obj, request.match_info["id"]))
    return web.Response(status=204)


def _external_field(obj: ObjectDef, name: str) -> FieldDef:
    fd = obj.field(name)
    if fd is None or not (fd.external_id or fd.type is FieldType.ID):
        raise SfError(
            404,
            "NOT_FOUND",
            f"Provided external ID field does not exist or is not accessible: {name}",
        )
    return fd


def _matches(
    state: SimulatorState, request: SfRequest, obj: ObjectDef, fd: FieldDef
) -> list[Record]:
    value = request.match_info["value"]
    if fd.type is FieldType.ID:
        normal = normalize_id(value)
        if normal is None:
            raise SfError(400, "MALFORMED_ID", f"malformed id {value}")
        value = normal
    return state.records.find_by_external_id(obj, fd, value)


def _multiple_choices(request: SfRequest, obj: ObjectDef, found: list[Record]) -> web.Response:
    return json_response([_url(request, obj, r["Id"]) for r in found], status=300)


async def get_by_external_id(request: SfRequest) -> web.StreamResponse:
    state = state_of(request)
    obj = _object(state, request)
    fd = _external_field(obj, request.match_info["field"])
    found = _matches(state, request, obj, fd)
    if not found:
        raise not_found()
    if len(found) > 1:
        return _multiple_choices(request, obj, found)
    return json_response(_render(request, obj, found[0]))


async def upsert(request: SfRequest) -> web.StreamResponse:
    state = state_of(request)
    obj = _object(state, request)
    fd = _external_field(obj, request.match_info["field"])
    body = await _json_body(request)
    if isinstance(body, Mapping):
        for key in body:
            if str(key).lower() in ("id", fd.name.lower()):
                raise SfError(
                    400,
                    "INVALID_FIELD",
                    f"{key} can't be set in the body of an upsert by {fd.name}: "
                    "the value comes from the URL",
                    [str(key)],
                )
    found = _matches(state, request, obj, fd)
    if len(found) > 1:
        return _multiple_choices(request, obj, found)
    require(state.users, session_username(request), obj.name, "edit" if found else "create")
    if found:
        record_id = found[0]["Id"]
        state.records.update(obj, record_id, body)
        version = api_version(request)
        if version is not None and version[1] < UPSERT_200_SINCE:
            return web.Response(status=204)
        return json_response({"id": record_id, "success": True, "errors": [], "created": False})
    if fd.type is FieldType.ID:
        raise not_found()
    if not isinstance(body, Mapping):
        raise json_parser_error(f"Cannot deserialize instance of {obj.name} from request body")
    record_id = state.records.insert(obj, {**body, fd.name: request.match_info["value"]})
    answer: dict[str, object] = {"id": record_id, "success": True, "errors": []}
    version = api_version(request)
    if version is None or version[1] >= UPSERT_200_SINCE:
        answer["created"] = True  # before v46.0 a create answers without it
    return json_response(answer, status=201)
