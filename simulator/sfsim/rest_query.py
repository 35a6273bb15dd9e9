"""SOQL and SOSL routes: /query, /queryAll, /query/{locator}, /search."""

from __future__ import annotations

import re

from aiohttp import web

from .cursors import clamp_batch
from .errors import SfError, json_response
from .rest_describe import session_username
from .routing import Handler, SfRequest, api_version, state_of
from .schema import ObjectDef, Record
from .search import run_sosl
from .soql import parse_soql
from .soql_eval import UrlFor, run_soql
from .sosl import parse_sosl
from .state import SimulatorState
from .users import invalid_type

SEARCH_WRAPPED_SINCE = 37  # SOSL answers {"searchRecords": [...]} from v37.0 on

__all__ = ["Handler", "query", "query_all", "query_more", "search", "url_for"]

_BATCH_RE = re.compile(r"batchSize\s*=\s*(\d+)", re.IGNORECASE)


def url_for(version: str) -> UrlFor:
    def build(obj: ObjectDef, record_id: str) -> str:
        return f"/services/data/{version}/sobjects/{obj.name}/{record_id}"

    return build


def _batch_size(request: SfRequest) -> int | None:
    match = _BATCH_RE.search(request.headers.get("Sforce-Query-Options", ""))
    return clamp_batch(int(match.group(1))) if match else None


def _page(
    state: SimulatorState,
    version: str,
    records: list[Record],
    start: int,
    batch: int,
    locator: str | None,
    total: int,
) -> web.Response:
    chunk = records[start : start + batch]
    end = start + len(chunk)
    done = end >= len(records)
    body: dict[str, object] = {"totalSize": total, "done": done}
    if not done:
        locator = locator or state.cursors.open(records, batch)
        body["nextRecordsUrl"] = f"/services/data/{version}/query/{locator}-{end}"
    body["records"] = chunk
    return json_response(body)


def _statement(request: SfRequest, error_code: str, kind: str) -> str:
    """The statement in `q`, or a 400 `error_code` when it is missing or blank."""
    text = request.query.get("q")
    if text is None or not text.strip():
        raise SfError(400, error_code, f"A {kind} string has to be specified")
    return text


async def _run_query(request: SfRequest, include_deleted: bool) -> web.StreamResponse:
    state = state_of(request)
    version = request.match_info["version"]
    parsed = parse_soql(_statement(request, "MALFORMED_QUERY", "query"))
    if not state.users.permissions(session_username(request), parsed.sobject).read:
        raise invalid_type(parsed.sobject)
    result = run_soql(
        state.schema,
        state.records,
        parsed,
        include_deleted=include_deleted,
        url_for=url_for(version),
    )
    batch = min(_batch_size(request) or clamp_batch(None), state.limits.query_batch_max)
    return _page(state, version, result.records, 0, batch, None, result.total)


async def query(request: SfRequest) -> web.StreamResponse:
    return await _run_query(request, include_deleted=False)


async def query_all(request: SfRequest) -> web.StreamResponse:
    return await _run_query(request, include_deleted=True)


async def query_more(request: SfRequest) -> web.StreamResponse:
    state = state_of(request)
    locator, _, offset = request.match_info["cursor"].rpartition("-")
    cursor = state.cursors.get(locator) if locator else None
    if cursor is None or not offset.isdigit() or not 0 < int(offset) < len(cursor.records):
        raise SfError(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
    batch = min(_batch_size(request) or cursor.batch_size, state.limits.query_batch_max)
    version = request.match_info["version"]
    records = cursor.records
    return _page(state, version, records, int(offset), batch, locator, len(records))


async def search(request: SfRequest) -> web.StreamResponse:
    state = state_of(request)
    found = run_sosl(
        state.schema,
        state.records,
        parse_sosl(_statement(request, "MALFORMED_SEARCH", "search")),
        url_for=url_for(request.match_info["version"]),
    )
    version = api_version(request)
    if version is not None and version[1] < SEARCH_WRAPPED_SINCE:
        return json_response(found)  # up to v36.0: the records as a bare array
    return json_response({"searchRecords": found})
