"""Hypothesis strategies for whole AMQP messages a hostile or broken publisher could send: bodies
(random bytes, deep or huge JSON, wrong types, unicode edge cases, injection strings in every
field, near-valid jobs with one thing wrong) and properties (reply_to, correlation_id,
message_id, timestamp, headers)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import orjson
from hypothesis import strategies as st

from tests.support.raw_amqp import RawStr, RawTimestamp
from worker.contract import SALESFORCE_ID_PATTERN

# The reply_to kinds: the test's reply queue, none at all, or a name that routes nowhere.
OURS, NONE, ODD = "ours", "none", "odd"

NASTY = [
    "' OR '1'='1",
    "x' OR Name != '",
    "\\'",
    "\\",
    "%_",
    "'; DELETE FROM Case; --",
    "{!$Api.Session_ID}",
    "FIND {x} RETURNING Account",
    "a) OR (b",
    ":other",
    "${jndi:ldap://127.0.0.1/x}",
    "{{7*7}}",
    "<script>alert(1)</script>",
    "../../../../etc/passwd",
    "%s%s%n%x",
    '\r\n{"level": "ERROR", "message": "forged"}',
    "\x00",
    "\u0000\u0001\u001f",
    "\u2028\u2029",
    "\ufeff",
    "\u202eevil",
    "e\u0301\u0301\u0301",
    "\U0001f600\U0001f3f3\ufe0f\u200d\U0001f308",
    "\U0001d54f",
    "\u4e2d\u6587",
    "\uffff\ufffe",
    "",
    " ",
    "x" * 300,
]

_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
texts = st.one_of(st.sampled_from(NASTY), _text)
short_texts = st.text(st.characters(exclude_categories=("Cs",)), max_size=30)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    texts,
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(short_texts, inner, max_size=4)
    ),
    max_leaves=12,
)

salesforce_ids = st.from_regex(SALESFORCE_ID_PATTERN, fullmatch=True)
objects = st.sampled_from(["Case", "Account", "Contact", "Lead", "Nope__c"])


def _common() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"v": st.just(1), "job_id": st.one_of(st.uuids().map(str), texts)},
        optional={
            "account": st.one_of(st.just("main"), texts),
            "tenant": st.one_of(st.just("acme"), texts),
            "timeout_ms": st.integers(0, 70000),
            "sent_at": st.one_of(st.floats(-10, 2e10), st.just(1e300)),
        },
    )


_operation_parts: list[st.SearchStrategy[dict[str, Any]]] = [
    st.fixed_dictionaries(
        {
            "operation": st.just("search"),
            "soql": st.sampled_from(
                [
                    "SELECT Id FROM Case WHERE Subject = :s",
                    "SELECT Id, Name FROM Account WHERE Name LIKE :s LIMIT 5",
                    "SELECT Id FROM Contact WHERE LastName IN (:s, :t)",
                ]
            ),
            "params": st.fixed_dictionaries({"s": texts}, optional={"t": json_scalars}),
        }
    ),
    st.fixed_dictionaries(
        {
            "operation": st.just("search"),
            "sosl": st.just("FIND {:s} IN ALL FIELDS RETURNING Account(Id), Contact(Id)"),
            "params": st.fixed_dictionaries({"s": texts}),
        }
    ),
    st.fixed_dictionaries(
        {"operation": st.just("get"), "object": objects, "id": salesforce_ids},
        optional={"fields": st.lists(st.sampled_from(["Id", "Name", "Subject"]), max_size=3)},
    ),
    st.fixed_dictionaries(
        {
            "operation": st.just("insert"),
            "object": st.just("Case"),
            "fields": st.fixed_dictionaries({"Subject": texts}),
        }
    ),
    st.fixed_dictionaries(
        {
            "operation": st.just("update"),
            "object": objects,
            "id": salesforce_ids,
            "fields": st.fixed_dictionaries({"Subject": texts}),
        }
    ),
    st.fixed_dictionaries(
        {
            "operation": st.just("upsert"),
            "object": st.just("Account"),
            "external_id_field": st.just("External_Id__c"),
            "external_id": texts,
            "fields": st.fixed_dictionaries({"Name": texts}),
        }
    ),
    st.fixed_dictionaries(
        {"operation": st.just("delete"), "object": objects, "id": salesforce_ids}
    ),
]


@st.composite
def jobs(draw: st.DrawFn) -> dict[str, Any]:
    """A job close to valid, often with one thing wrong (a value of the wrong type or shape, a
    key removed, a key added)."""
    job = {**draw(_common()), **draw(st.one_of(_operation_parts))}
    mutation = draw(st.sampled_from(["none", "none", "replace", "drop", "add"]))
    keys = sorted(job)
    if mutation == "replace":
        job[draw(st.sampled_from(keys))] = draw(json_values)
    elif mutation == "drop":
        del job[draw(st.sampled_from(keys))]
    elif mutation == "add":
        job[draw(st.one_of(short_texts, st.sampled_from(keys)))] = draw(json_values)
    return job


def _deep(depth: int, kind: str) -> bytes:
    if kind == "array":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


ODD_JSON = [
    b"",
    b" ",
    b"null",
    b"1",
    b'"a string"',
    b"{}",
    b"[]",
    b'{"v": 1}',
    b"NaN",
    b"Infinity",
    b'{"v": 1e400}',
    b'{"v": 123456789012345678901234567890}',
    b'\xef\xbb\xbf{"v": 1}',
    b'{"v": 1, "v": 2}',
    b'{"v": 1, "job_id": "\\u0000", "operation": "search", "soql": "SELECT Id FROM Case"}',
    b'{"v": 1, "job_id": "a\\ud800", "operation": "get"}',
    b'{"v": 1, "job_id": "a", "operation": []}',
    b'{"v": 1, "job_id": "a", "operation": {"search": true}}',
    b'{"v": true, "job_id": "a", "operation": "search", "soql": "SELECT Id FROM Case"}',
    b"\x00\x00\x00",
    b"\xff\xfe\xfd",
]
HUGE = b'{"v": 1, "job_id": "huge", "operation": "search", "soql": "' + b"x" * 1_100_000 + b'"}'

bodies = st.one_of(
    jobs().map(orjson.dumps),
    jobs().map(orjson.dumps),
    jobs().map(orjson.dumps),
    json_values.map(orjson.dumps),
    st.binary(max_size=300),
    st.sampled_from(ODD_JSON),
    st.builds(_deep, st.integers(1, 3000), st.sampled_from(["array", "object"])),
    st.just(HUGE),
)

# Short strings as other clients may send them: any bytes, UTF-8 or not.
raw_texts = st.binary(max_size=40).map(RawStr)
raw_timestamps = st.integers(0, 2**64 - 1).map(RawTimestamp)

header_values = st.recursive(
    st.one_of(
        st.none(),
        raw_timestamps,
        st.booleans(),
        st.integers(-(2**62), 2**62),
        st.floats(allow_nan=False, allow_infinity=False, width=32),
        texts,
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(short_texts, inner, max_size=3)
    ),
    max_leaves=8,
)
# "CC" and "BCC" select extra routing keys (sender-selected distribution): RabbitMQ refuses a
# message whose CC/BCC header is not an array of strings at publish, closing the publisher's
# channel, so such a message never reaches a worker: they are not names to fuzz here.
_ROUTING_HEADERS = {"CC", "BCC"}
headers = st.one_of(
    st.none(),
    st.dictionaries(
        st.one_of(
            st.sampled_from(["x-death", "x-delivery-count", "x-first-death-reason"]),
            st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=20).filter(
                lambda name: name not in _ROUTING_HEADERS
            ),
            st.binary(min_size=1, max_size=20)
            .filter(lambda name: name not in {b"CC", b"BCC"})
            .map(RawStr),
        ),
        header_values,
        max_size=4,
    ),
)
timestamps = st.one_of(
    st.none(),
    raw_timestamps,
    st.datetimes(
        min_value=dt.datetime(1970, 1, 2),
        max_value=dt.datetime(9999, 12, 30),
        timezones=st.just(dt.UTC),
    ),
)
odd_reply_to = st.one_of(
    st.text(st.characters(codec="ascii", exclude_categories=("Cc",)), min_size=1, max_size=60),
    st.sampled_from(["amq.gen-caller-gone", "nowhere", "sfworker.results.x", " ", "\u00e9t\u00e9"]),
)


@dataclass(frozen=True)
class Fuzzed:
    body: bytes
    reply: str  # OURS, NONE or ODD
    odd_reply_to: str
    correlation_id: str | None
    message_id: str | None
    timestamp: dt.datetime | None
    headers: dict[str, Any] | None
    content_type: str | None
    app_id: str | None

    def __repr__(self) -> str:  # what hypothesis prints for a failing example: kept short
        body = self.body if len(self.body) <= 300 else self.body[:300] + b"..."
        return (
            f"Fuzzed(body={body!r} ({len(self.body)} bytes), reply={self.reply!r}, "
            f"odd_reply_to={self.odd_reply_to!r}, correlation_id={self.correlation_id!r}, "
            f"message_id={self.message_id!r}, timestamp={self.timestamp!r}, "
            f"headers={self.headers!r}, content_type={self.content_type!r}, "
            f"app_id={self.app_id!r})"
        )

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # hypothesis's printer
        printer.text(repr(self))


messages = st.builds(
    Fuzzed,
    body=bodies,
    reply=st.sampled_from([OURS, OURS, OURS, OURS, NONE, ODD]),
    odd_reply_to=odd_reply_to,
    correlation_id=st.one_of(st.none(), st.just(""), short_texts, raw_texts),
    message_id=st.one_of(st.none(), short_texts, raw_texts),
    app_id=st.one_of(st.none(), raw_texts),
    timestamp=timestamps,
    headers=headers,
    content_type=st.one_of(st.none(), st.just("application/json"), short_texts),
)
