"""Every Salesforce answer maps to the verdict and contract code of the reference table."""

from __future__ import annotations

import pytest

from worker.contract import ErrorCode, Operation
from worker.salesforce.errors import Verdict, classify
from worker.salesforce.usage import parse_limit_info


def sf(code: str, message: str = "m") -> list[dict[str, str]]:
    return [{"errorCode": code, "message": message}]


@pytest.mark.parametrize(
    ("status", "body", "operation", "verdict", "code"),
    [
        (200, {}, Operation.GET, Verdict.SUCCESS, None),
        (204, None, Operation.UPDATE, Verdict.SUCCESS, None),
        (
            401,
            sf("INVALID_SESSION_ID", "Session expired or invalid"),
            Operation.GET,
            Verdict.REFRESH,
            ErrorCode.AUTH_FAILED,
        ),
        (401, sf("INVALID_AUTH_HEADER"), Operation.GET, Verdict.FAIL, ErrorCode.SALESFORCE_ERROR),
        (
            403,
            sf("REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded."),
            Operation.SEARCH,
            Verdict.FAIL,
            ErrorCode.RATE_LIMITED,
        ),
        (
            403,
            sf("REQUEST_LIMIT_EXCEEDED", "ConcurrentPerOrgLongTxn Limit exceeded"),
            Operation.SEARCH,
            Verdict.RETRY,
            ErrorCode.RATE_LIMITED,
        ),
        (
            400,
            sf("UNABLE_TO_LOCK_ROW", "unable to obtain exclusive access"),
            Operation.UPDATE,
            Verdict.RETRY,
            ErrorCode.SALESFORCE_ERROR,
        ),
        (
            400,
            sf("CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY", "UNABLE_TO_LOCK_ROW, unable to obtain"),
            Operation.INSERT,
            Verdict.RETRY,
            ErrorCode.SALESFORCE_ERROR,
        ),
        (
            500,
            sf("UNABLE_TO_LOCK_ROW"),
            Operation.UPDATE,
            Verdict.RETRY,
            ErrorCode.SALESFORCE_ERROR,
        ),
        (400, sf("QUERY_TIMEOUT"), Operation.SEARCH, Verdict.RETRY, ErrorCode.SALESFORCE_ERROR),
        (
            503,
            sf("SERVER_UNAVAILABLE", "server too busy"),
            Operation.GET,
            Verdict.RETRY,
            ErrorCode.SALESFORCE_UNAVAILABLE,
        ),
        (500, "<html>oops</html>", Operation.GET, Verdict.RETRY, ErrorCode.SALESFORCE_UNAVAILABLE),
        (404, sf("NOT_FOUND"), Operation.GET, Verdict.NO_DATA, None),
        (404, sf("ENTITY_IS_DELETED"), Operation.DELETE, Verdict.NO_DATA, None),
        (404, sf("NOT_FOUND"), Operation.UPDATE, Verdict.NO_DATA, None),
        (404, sf("NOT_FOUND"), Operation.UPSERT, Verdict.FAIL, ErrorCode.SALESFORCE_ERROR),
        (404, sf("NOT_FOUND"), Operation.INSERT, Verdict.FAIL, ErrorCode.SALESFORCE_ERROR),
        (400, sf("MALFORMED_QUERY"), Operation.SEARCH, Verdict.FAIL, ErrorCode.SALESFORCE_ERROR),
        (
            400,
            sf("REQUIRED_FIELD_MISSING"),
            Operation.INSERT,
            Verdict.FAIL,
            ErrorCode.SALESFORCE_ERROR,
        ),
        (
            300,
            ["/services/data/v62.0/sobjects/Contact/003A", "/x/003B"],
            Operation.UPSERT,
            Verdict.FAIL,
            ErrorCode.SALESFORCE_ERROR,
        ),
    ],
)
def test_classification(
    status: int, body: object, operation: Operation, verdict: Verdict, code: ErrorCode | None
) -> None:
    result = classify(status, body, operation)
    assert result.verdict is verdict
    assert result.code is code


def test_salesforce_errors_are_carried_with_their_fields() -> None:
    body = [
        {
            "errorCode": "REQUIRED_FIELD_MISSING",
            "message": "Required fields are missing: [Name]",
            "fields": ["Name"],
        }
    ]
    error = classify(400, body, Operation.INSERT).to_error()
    assert error.salesforce_errors[0].errorCode == "REQUIRED_FIELD_MISSING"
    assert error.salesforce_errors[0].fields == ["Name"]
    assert "Required fields are missing" in error.message


def test_limit_info_header() -> None:
    reading = parse_limit_info("api-usage=25/15000; per-app-api-usage=17/250(appName=sfworker)")
    assert reading is not None
    assert (reading.used, reading.limit, reading.remaining) == (25, 15000, 14975)
    assert (reading.app_used, reading.app_limit, reading.app_name) == (17, 250, "sfworker")
    only_org = parse_limit_info("api-usage=3/100")
    assert only_org is not None
    assert only_org.app_used is None
    assert parse_limit_info(None) is None
    assert parse_limit_info("garbage") is None
