"""`POST /services/data/vNN.N/composite`: up to 25 subrequests, at most 5 of them queries, in one
API call.

The request as a whole passes the middlewares once: one API call counted in Sforce-Limit-Info,
one latency, a 401 or the daily limit fail it whole, and fault rules for route `composite` hit it
whole. Its body is checked before anything runs (a bad body, more than 25 subrequests, more than 5
queries, an inherited header or an unsupported resource such as SOSL search: HTTP 400, nothing
executed). Then each subrequest, in order: references resolved (composite_refs), fault rules
matched on the subrequest's own method, route name and url (`respond` answers it; `delay` and
`hold` hold it, and the whole answer with it; `drop_before` stops there and closes the
connection; `drop_after` runs everything and then closes it), and the same handler a plain
call reaches. The answer is 200 with one result per subrequest, in order. `allOrNone: true`
rolls every change back at the first failure; the others then answer PROCESSING_HALTED. Before
API v38.0 the resource does not exist: 404 NOT_FOUND.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import orjson
from aiohttp import web
from multidict import CIMultiDict, MultiDict

from . import rest_describe, rest_query, rest_sobjects
from .composite_refs import REFERENCE_ID_RE, References, Unresolved
from .errors import SfError, json_response, not_found
from .routing import Handler, Route, SfHandler, api_version, drop_connection, state_of

MAX_SUBREQUESTS = 25
COMPOSITE_SINCE = 38  # the resource exists from v38.0 on (404 NOT_FOUND before)
MAX_QUERIES = 5
QUERY_ROUTES = frozenset({"query", "query_all", "query_more"})
# The resources a subrequest may reach (sObject rows, rows by external id and describe, query,
# queryAll, query more); everything else (search, limits, versions, composite itself) is refused.
HANDLERS: dict[str, SfHandler] = {
    "query": rest_query.query,
    "query_all": rest_query.query_all,
    "query_more": rest_query.query_more,
    "sobject_create": rest_sobjects.create,
    "sobject_get": rest_sobjects.get,
    "sobject_update": rest_sobjects.update,
    "sobject_delete": rest_sobjects.delete,
    "sobject_get_by_external_id": rest_sobjects.get_by_external_id,
    "sobject_upsert": rest_sobjects.upsert,
    "sobject_describe": rest_describe.describe,
}
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})
_INHERITED_HEADERS = frozenset({"accept", "authorization", "content-type"})
_DROPPED_HEADERS = frozenset({"content-type", "content-length"})
ROLLED_BACK = (
    "The transaction was rolled back since another operation in the same transaction failed."
)


def _bad_input(message: str) -> SfError:
    return SfError(400, "INVALID_API_INPUT", message)


def _required(name: str) -> SfError:
    return SfError(400, "JSON_PARSER_ERROR", f"'{name}' is a required field.")


# --- routing a subrequest's url to a handler --------------------------------------------------


@dataclass(frozen=True)
class _Pattern:
    method: str
    regex: re.Pattern[str]
    name: str


def _compile(route: Route) -> _Pattern:
    """An aiohttp path template (`/x/{name}`, `/x/{name:regex}`) as a regex on the raw path."""
    out = []
    for part in re.split(r"(\{[^{}]*\})", route.path):
        if part.startswith("{") and part.endswith("}"):
            name, _, pattern = part[1:-1].partition(":")
            out.append(f"(?P<{name}>{pattern or '[^/]+'})")
        else:
            out.append(re.escape(part))
    return _Pattern(route.method, re.compile("".join(out)), route.name)


@dataclass(frozen=True)
class _Match:
    name: str
    params: dict[str, str]


class _Router:
    def __init__(self, table: Sequence[Route]) -> None:
        self._patterns = [_compile(route) for route in table]

    def route_of(self, path: str) -> str | None:
        """The route name of a path, whatever the method."""
        return next((p.name for p in self._patterns if p.regex.fullmatch(path)), None)

    def match(self, method: str, path: str) -> _Match | None:
        for pattern in self._patterns:
            found = pattern.regex.fullmatch(path)
            if found is not None and pattern.method == method:
                params = {k: unquote(v) for k, v in found.groupdict().items()}
                return _Match(pattern.name, params)
        return None


# --- the request body ---------------------------------------------------------------------------


@dataclass
class _Sub:
    method: str
    url: str
    reference_id: str
    body: Any
    has_body: bool
    headers: dict[str, str]


def _parse_sub(item: Any, seen: set[str]) -> _Sub:
    if not isinstance(item, dict):
        raise SfError(400, "JSON_PARSER_ERROR", "Each subrequest must be a JSON object.")
    for key in ("method", "url", "referenceId"):
        if not isinstance(item.get(key), str) or not item[key]:
            raise _required(key)
    method, url, ref = item["method"], item["url"], item["referenceId"]
    if method not in _METHODS:
        raise SfError(400, "JSON_PARSER_ERROR", f"Invalid HTTP method: {method}")
    if not REFERENCE_ID_RE.fullmatch(ref):
        raise _bad_input(
            f"Invalid referenceId ('{ref}'): it must start with a letter or a digit and contain "
            "only letters, digits and underscores."
        )
    if ref in seen:
        raise _bad_input(f"Duplicate referenceId provided in the request: {ref}")
    seen.add(ref)
    raw_headers = item.get("httpHeaders") or {}
    if not isinstance(raw_headers, dict) or not all(
        isinstance(v, str) for v in raw_headers.values()
    ):
        raise SfError(400, "JSON_PARSER_ERROR", "'httpHeaders' must map names to strings.")
    inherited = sorted(k for k in raw_headers if str(k).lower() in _INHERITED_HEADERS)
    if inherited:
        raise _bad_input(
            f"Subrequest {ref} sets {inherited[0]}: subrequests inherit Accept, Authorization "
            "and Content-Type from the composite request."
        )
    return _Sub(method, url, ref, item.get("body"), "body" in item, dict(raw_headers))


def parse(raw: bytes, router: _Router) -> tuple[bool, list[_Sub]]:
    """(allOrNone, subrequests), or SfError 400 for a body Salesforce refuses as a whole."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise SfError(400, "JSON_PARSER_ERROR", "The composite request body is not JSON.") from None
    if not isinstance(data, dict):
        raise SfError(400, "JSON_PARSER_ERROR", "The composite request body must be an object.")
    all_or_none = data.get("allOrNone", False)
    if not isinstance(all_or_none, bool):
        raise SfError(400, "JSON_PARSER_ERROR", "'allOrNone' must be true or false.")
    items = data.get("compositeRequest")
    if not isinstance(items, list) or not items:
        raise _required("compositeRequest")
    if len(items) > MAX_SUBREQUESTS:
        raise SfError(
            400,
            "LIMIT_EXCEEDED",
            f"A composite request can have at most {MAX_SUBREQUESTS} subrequests; "
            f"this one has {len(items)}.",
        )
    seen: set[str] = set()
    subs = [_parse_sub(item, seen) for item in items]
    queries = 0
    for sub in subs:
        name = router.route_of(urlsplit(sub.url).path)
        if name is not None and name not in HANDLERS:
            raise _bad_input(
                f"Subrequest {sub.reference_id}: the composite resource does not support "
                f"{urlsplit(sub.url).path}"
            )
        queries += name in QUERY_ROUTES
    if queries > MAX_QUERIES:
        raise SfError(
            400,
            "LIMIT_EXCEEDED",
            f"A composite request can have at most {MAX_QUERIES} query subrequests; "
            f"this one has {queries}.",
        )
    return all_or_none, subs


# --- running the subrequests --------------------------------------------------------------------


@dataclass
class _Answer:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)

    def entry(self, reference_id: str) -> dict[str, Any]:
        return {
            "body": self.body,
            "httpHeaders": self.headers,
            "httpStatusCode": self.status,
            "referenceId": reference_id,
        }


def _halted(message: str) -> _Answer:
    return _Answer(400, [{"errorCode": "PROCESSING_HALTED", "message": message}])


def _answer_of(response: web.StreamResponse) -> _Answer:
    raw = response.body if isinstance(response, web.Response) else None
    body: Any = None
    if isinstance(raw, bytes) and raw:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = raw.decode(errors="replace")
    headers = {k: v for k, v in response.headers.items() if k.lower() not in _DROPPED_HEADERS}
    return _Answer(response.status, body, headers)


@dataclass
class _SubRequest:
    """One subrequest as the REST handlers read it (routing.SfRequest)."""

    app: web.Application
    path: str
    match_info: Mapping[str, str]
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes

    async def read(self) -> bytes:
        return self.body


class _Dropped(Exception):
    """A drop_before fault on a subrequest: nothing more runs and the connection is closed."""


class _Run:
    """One composite request's subrequests, run in order against the simulator state."""

    def __init__(self, request: web.Request, router: _Router) -> None:
        self._request = request
        self._router = router
        self._state = state_of(request)
        self._refs = References()
        self.drop_after = False

    async def one(self, sub: _Sub) -> _Answer:
        try:
            url = self._refs.in_text(sub.url)
            body = self._refs.in_body(sub.body) if sub.has_body else None
        except Unresolved as exc:
            return _halted(exc.message)
        parts = urlsplit(url)
        match = self._router.match(sub.method, parts.path)
        name = match.name if match is not None else self._router.route_of(parts.path)
        counters = self._state.counters
        counters.subrequests[name or "unmatched"] += 1
        rule = self._state.faults.take(sub.method, name, (url, parts.path), "")
        if rule is not None and rule.action == "drop_before":
            raise _Dropped
        if rule is not None and rule.action == "drop_after":
            self.drop_after = True  # runs, but the connection closes before the answer
        elif rule is not None and rule.action == "delay":
            # Subrequests run one after another: a slow one delays the whole answer.
            await asyncio.sleep(rule.delay_ms / 1000)
        elif rule is not None and rule.action == "hold":
            await self._state.faults.wait_for_release(rule.hold)
        elif rule is not None:
            return _answer_of(rule.response(name))
        if match is None:
            if name is not None:
                message = f"HTTP Method '{sub.method}' not allowed."
                return _Answer(405, [{"errorCode": "METHOD_NOT_ALLOWED", "message": message}])
            return _Answer(404, not_found().body())
        query = MultiDict(parse_qsl(parts.query, keep_blank_values=True))
        if match.name in QUERY_ROUTES and "q" in query:
            counters.queries.append(query["q"])
        inner = _SubRequest(
            app=self._request.app,
            path=parts.path,
            match_info=match.params,
            query=query,
            # Subrequests run as the composite request's user: its Authorization is theirs.
            headers=CIMultiDict(
                {**sub.headers, "Authorization": self._request.headers.get("Authorization", "")}
            ),
            body=orjson.dumps(body) if sub.has_body else b"",
        )
        try:
            answer = _answer_of(await HANDLERS[match.name](inner))
        except SfError as err:
            return _Answer(err.status, err.body())
        if match.name == "sobject_create" and isinstance(answer.body, dict):
            version, sobject = match.params["version"], match.params["sobject"]
            answer.headers["Location"] = (
                f"/services/data/{version}/sobjects/{sobject}/{answer.body.get('id')}"
            )
        return answer

    def record(self, sub: _Sub, answer: _Answer) -> None:
        self._refs.record(sub.reference_id, answer.status, answer.body)


async def _execute(
    request: web.Request, router: _Router, all_or_none: bool, subs: list[_Sub]
) -> tuple[list[_Answer], bool]:
    """The answers in order, and whether the connection is to be closed instead of answered."""
    run = _Run(request, router)
    records = state_of(request).records
    snapshot = records.snapshot() if all_or_none else None
    answers: list[_Answer] = []
    for sub in subs:
        try:
            answer = await run.one(sub)
        except _Dropped:
            if snapshot is not None:
                records.restore(snapshot)
            return answers, True
        answers.append(answer)
        run.record(sub, answer)
        if snapshot is not None and answer.status >= 400:
            records.restore(snapshot)
            failed = len(answers) - 1
            halted = [_halted(ROLLED_BACK) for _ in subs]
            halted[failed] = answer
            return halted, run.drop_after
    return answers, run.drop_after


def handler(table: Sequence[Route]) -> Handler:
    """The composite route's handler, routing subrequests over the REST `table`."""
    router = _Router(table)

    async def composite(request: web.Request) -> web.StreamResponse:
        version = api_version(request)
        if version is not None and version[1] < COMPOSITE_SINCE:
            raise not_found()  # no such resource before v38.0
        all_or_none, subs = parse(await request.read(), router)
        answers, drop = await _execute(request, router, all_or_none, subs)
        # After a drop_before fault there are fewer answers than subrequests; nobody sees them.
        entries = [a.entry(s.reference_id) for s, a in zip(subs, answers, strict=False)]
        response = json_response({"compositeResponse": entries})
        if drop:
            drop_connection(request)
        return response

    return composite


async def resources(request: web.Request) -> web.StreamResponse:
    version = api_version(request)
    if version is not None and version[1] < COMPOSITE_SINCE:
        raise not_found()
    base = f"/services/data/{request.match_info['version']}/composite"
    return json_response(
        {"batch": f"{base}/batch", "sobjects": f"{base}/sobjects", "tree": f"{base}/tree"}
    )
