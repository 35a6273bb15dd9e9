"""Issue 16.1: what binds a job id to its job (worker/contract/fingerprint.py)."""

from __future__ import annotations

from typing import Any

import pytest

from worker.contract import parse_job
from worker.contract.fingerprint import differences, fingerprint

UPSERT: dict[str, Any] = {
    "v": 1,
    "job_id": "call-1",
    "operation": "upsert",
    "object": "Contact",
    "external_id_field": "Ext_Id__c",
    "external_id": "E-1",
    "fields": {"LastName": "Lovelace", "Phone": "555"},
}


def print_of(job: dict[str, Any], account: str | None = "main") -> bytes:
    return fingerprint(parse_job(job), account)


def test_what_differs_between_a_redelivery_and_a_resend_is_not_part_of_it() -> None:
    resent = {**UPSERT, "timeout_ms": 9000, "sent_at": 1_700_000_000.25}
    reordered = {**UPSERT, "fields": {"Phone": "555", "LastName": "Lovelace"}}
    assert print_of(UPSERT) == print_of(resent) == print_of(reordered)


@pytest.mark.parametrize(
    ("change", "part"),
    [
        ({"object": "Lead"}, "object"),
        ({"external_id_field": "Other__c"}, "external_id_field"),
        ({"external_id": "E-2"}, "external_id"),
        ({"fields": {"LastName": "Byron", "Phone": "555"}}, "fields"),
        ({"tenant": "globex"}, "tenant"),
    ],
)
def test_every_field_that_changes_the_request_is_named_when_it_differs(
    change: dict[str, Any], part: str
) -> None:
    first, second = print_of(UPSERT), print_of({**UPSERT, **change})
    assert differences(first, second) == [part]
    assert b"Byron" not in second  # digests, never values
    assert b"E-2" not in second


def test_another_account_or_operation_is_named() -> None:
    assert differences(print_of(UPSERT), print_of(UPSERT, "other")) == ["account"]
    delete = {
        "v": 1,
        "job_id": "call-1",
        "operation": "delete",
        "object": "Contact",
        "id": "003000000000001AAA",
    }
    assert differences(print_of(UPSERT), print_of(delete, "other")) == ["operation", "account"]
