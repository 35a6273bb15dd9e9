"""The Composite resource, from the client's side: which calls may travel inside one, the request
body for a group of them, and each call's own answer out of the response.

`POST {api_base}/composite` runs up to 25 subrequests (at most 5 query-type ones) and counts as one
API call. Only sObject rows (create, read, update, upsert, delete) and the first page of a SOQL
query travel this way: SOSL search is not supported by the resource, and the next pages of a
query (nextRecordsUrl) continue as single calls. Each call is its own subrequest
(`allOrNone: false`, `referenceId` `c0`..`c24`) and never refers to another; a call whose body
holds the text `@{` goes alone, since Salesforce would read it as a reference to another
subrequest's answer. Below API v38.0 (no Composite resource) every call goes alone.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlencode

import orjson

from worker.accounts import Account

MAX_SUBREQUESTS = 25
# The Composite resource (`/composite` with `compositeRequest`) from this API version on
# (Winter '17); an account on an older version sends every call alone.
COMPOSITE_SINCE = 38.0
MAX_QUERIES = 5
_QUERY_RESOURCES = ("/query", "/queryAll")
_REFERENCE_START = b"@{"


@dataclass(frozen=True)
class Subrequest:
    """One call as the client would send it alone."""

    method: str
    url: str  # absolute, as for a single call
    params: Mapping[str, str] | None = None
    body: bytes | None = None  # JSON
    headers: Mapping[str, str] = field(default_factory=dict)


def _resource(account: Account, sub: Subrequest) -> str | None:
    """The part of the url after `/services/data/vNN.N`, or None for a url elsewhere."""
    base = account.api_base
    if not sub.url.startswith(base + "/"):
        return None
    return sub.url[len(base) :]


def is_query(account: Account, sub: Subrequest) -> bool:
    return _resource(account, sub) in _QUERY_RESOURCES


def supports(account: Account, sub: Subrequest) -> bool:
    """May this call travel inside a composite request?"""
    if float(account.api_version) < COMPOSITE_SINCE:
        return False
    resource = _resource(account, sub)
    if resource is None:
        return False
    if resource in _QUERY_RESOURCES:
        allowed = sub.method == "GET"
    else:
        allowed = resource.startswith("/sobjects/") and sub.method in (
            "GET",
            "POST",
            "PATCH",
            "DELETE",
        )
    return allowed and not _holds_reference(sub)


def _holds_reference(sub: Subrequest) -> bool:
    """Would Salesforce read `@{` in this call as a reference to another subrequest? Checked on
    the decoded text (the path, each parameter, the JSON body with its escapes undone), since
    `%40%7B` in a URL or `\\u0040{` in JSON is `@{` to Salesforce."""
    if "@{" in unquote(sub.url):
        return True
    if sub.params and any("@{" in k or "@{" in v for k, v in sub.params.items()):
        return True
    if sub.body is None:
        return False
    if _REFERENCE_START in sub.body:
        return True
    return b"\\u" in sub.body and "@{" in _decoded_text(sub.body)


def _decoded_text(body: bytes) -> str:
    """Every string of a JSON body, decoded, joined (keys too)."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode(errors="replace")
    parts: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            parts.append(item)
        elif isinstance(item, dict):
            parts.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return "\n".join(parts)


def _relative_url(account: Account, sub: Subrequest) -> str:
    url = sub.url[len(account.instance_url) :]
    if sub.params:
        url += "?" + urlencode(dict(sub.params), quote_via=quote)
    return url


def reference_id(index: int) -> str:
    return f"c{index}"


def request_body(account: Account, subs: Sequence[Subrequest]) -> bytes:
    """The JSON body of one composite request carrying `subs` (at most 25, 5 of them queries).
    Writes go first (the subrequests are independent, so their order changes no answer): their
    answers, small, come first in the response, and are read even when the reads' answers
    after them are too large to read (`leading_answers`)."""
    items: list[dict[str, Any]] = []
    for index in sorted(range(len(subs)), key=lambda i: subs[i].method == "GET"):
        sub = subs[index]
        item: dict[str, Any] = {
            "method": sub.method,
            "url": _relative_url(account, sub),
            "referenceId": reference_id(index),
        }
        if sub.body is not None:
            item["body"] = orjson.Fragment(sub.body)
        if sub.headers:
            item["httpHeaders"] = dict(sub.headers)
        items.append(item)
    return orjson.dumps({"allOrNone": False, "compositeRequest": items})


@dataclass(frozen=True)
class SubAnswer:
    status: int
    body: Any


def answers(body: Any, count: int) -> list[SubAnswer] | None:
    """Each subrequest's answer, in the order sent; None when the body is not a complete
    compositeResponse for `count` subrequests."""
    results = body.get("compositeResponse") if isinstance(body, dict) else None
    if not isinstance(results, list):
        return None
    by_ref: dict[str, SubAnswer] = {}
    for result in results:
        if not isinstance(result, dict):
            return None
        status = result.get("httpStatusCode")
        ref = result.get("referenceId")
        if not isinstance(status, int) or not isinstance(ref, str):
            return None
        by_ref[ref] = SubAnswer(status, result.get("body"))
    found = [by_ref.get(reference_id(index)) for index in range(count)]
    if any(answer is None for answer in found):
        return None
    return [answer for answer in found if answer is not None]


def leading_answers(prefix: bytes, count: int) -> dict[int, SubAnswer]:
    """The answers complete within the first bytes of a Composite response whose reading was
    stopped (too large): by subrequest index. What is cut off is not there."""
    text = prefix.decode("utf-8", errors="ignore")
    key = text.find('"compositeResponse"')
    at = text.find("[", key) + 1 if key >= 0 else 0
    found: dict[int, SubAnswer] = {}
    decoder = json.JSONDecoder()
    while at > 0:
        while at < len(text) and text[at] in " \t\r\n,":
            at += 1
        try:
            item, at = decoder.raw_decode(text, at)
        except json.JSONDecodeError:
            break
        if not isinstance(item, dict):
            break
        status, ref = item.get("httpStatusCode"), item.get("referenceId")
        if isinstance(status, int) and isinstance(ref, str) and ref[1:].isdigit():
            index = int(ref[1:])
            if ref == reference_id(index) and index < count:
                found[index] = SubAnswer(status, item.get("body"))
    return found
