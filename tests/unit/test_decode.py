"""Reading a request never raises: every odd body becomes an INVALID_REQUEST refusal, and what
the JSON Schema refuses the worker refuses too (no lax coercion of "5000" or true)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from worker.contract import ErrorCode, Operation
from worker.jobs import Incoming
from worker.jobs import read_request as decode

SEARCH: dict[str, Any] = {"v": 1, "job_id": "a", "operation": "search", "soql": "SELECT Id FROM X"}


def _decode(body: bytes | dict[str, Any]) -> Any:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return decode(Incoming(body=raw, message_id="m-1"), 1_048_576)


@pytest.mark.parametrize(
    ("body", "reason", "hint"),
    [
        ({"v": 1, "job_id": "a", "operation": []}, "invalid", "operation"),
        ({"v": 1, "job_id": "a", "operation": {}}, "invalid", "operation"),
        ({"v": 1, "job_id": "a", "operation": {"search": 1}}, "invalid", "operation"),
        ({"v": 1, "job_id": "a", "operation": None}, "invalid", "operation"),
        ({"v": 1, "job_id": "a", "operation": 7}, "invalid", "operation"),
        ({"v": [], "job_id": "a", "operation": []}, "bad_version", "v=[]"),
        ({**SEARCH, "v": True}, "bad_version", "v=True"),
        ({**SEARCH, "v": 1.0}, "bad_version", "v=1.0"),
        ({**SEARCH, "v": "1"}, "bad_version", "v='1'"),
        ({**SEARCH, "timeout_ms": "5000"}, "invalid", "timeout_ms: "),
        ({**SEARCH, "timeout_ms": True}, "invalid", "timeout_ms: "),
        ({**SEARCH, "max_records": 10.0}, "invalid", "max_records: "),
        ({**SEARCH, "sent_at": "1700000000"}, "invalid", "sent_at: "),
        ({**SEARCH, "account": 5}, "invalid", "account: "),
        ({**SEARCH, "params": {"a": [1]}}, "invalid", "params.a."),
        ({**SEARCH, "params": {"a": {"b": 1}}}, "invalid", "params.a."),
        ({**SEARCH, "params": "a=1"}, "invalid", "params: "),
        (b"[" * 5000 + b"]" * 5000, "not_json", "depth"),
        (b'{"v": 1, "job_id": "a\\ud800", "operation": "get"}', "not_json", "surrogate"),
        (b'{"v": 1, "sent_at": 1e400}', "not_json", "infinity"),
        (b"\xff\xfe{}", "not_json", "UTF-8"),
        (b"", "not_json", "not JSON"),
        (b"null", "not_object", "NoneType"),
    ],
)
def test_odd_bodies_are_refused_never_raised(
    body: bytes | dict[str, Any], reason: str, hint: str
) -> None:
    decoded = _decode(body)
    assert decoded.job is None
    assert decoded.reason == reason
    assert decoded.refusal is not None
    assert decoded.refusal.error is not None
    assert decoded.refusal.error.code is ErrorCode.INVALID_REQUEST
    assert hint in decoded.refusal.error.message


def test_a_refusal_names_the_job_and_its_operation_when_they_are_readable() -> None:
    decoded = _decode({"v": 1, "job_id": "job-9", "operation": "get", "object": "Case"})
    assert decoded.job_id == "job-9"
    assert decoded.refusal is not None
    assert decoded.refusal.operation is Operation.GET


def test_an_unreadable_job_id_falls_back_to_the_message_id() -> None:
    decoded = _decode({"v": 1, "job_id": ["x"], "operation": ["search"]})
    assert decoded.job_id == "m-1"
    assert decoded.refusal is not None
    assert decoded.refusal.operation is None


def test_a_valid_job_still_reads() -> None:
    decoded = _decode({**SEARCH, "timeout_ms": 5000, "sent_at": 1_700_000_000})
    assert decoded.job is not None
    assert decoded.job.timeout_ms == 5000
    assert decoded.job.sent_at == 1_700_000_000.0
