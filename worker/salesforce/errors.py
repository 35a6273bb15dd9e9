"""Salesforce answer -> what the job does next: succeed, no data, retry, refresh, or fail.

One table, from ../shared/reference/salesforce.md (answer -> verdict -> code when final):
- 2xx -> success
- 401 INVALID_SESSION_ID -> refresh the token and retry once -> AUTH_FAILED
- 401 with another errorCode -> fail (not a token problem) -> SALESFORCE_ERROR
- 403 REQUEST_LIMIT_EXCEEDED "TotalRequests" (the daily limit) -> fail at once -> RATE_LIMITED
- 403 REQUEST_LIMIT_EXCEEDED "ConcurrentPerOrgLongTxn" -> retry with backoff -> RATE_LIMITED
- UNABLE_TO_LOCK_ROW (also nested in another code's message), QUERY_TIMEOUT -> retry
  -> SALESFORCE_ERROR
- 500, 502, 503, 504 -> retry with backoff -> SALESFORCE_UNAVAILABLE
- 404 NOT_FOUND / ENTITY_IS_DELETED on get, update, delete -> no_data
- 300 (upsert matched several records), other 4xx -> fail -> SALESFORCE_ERROR
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from worker.contract import ErrorCode, Operation, ResultError, SalesforceErrorItem


class Verdict(Enum):
    SUCCESS = "success"
    NO_DATA = "no_data"
    RETRY = "retry"
    REFRESH = "refresh"
    FAIL = "fail"


@dataclass(frozen=True)
class Classified:
    verdict: Verdict
    code: ErrorCode | None = None
    message: str = ""
    retryable: bool = False
    errors: list[SalesforceErrorItem] = field(default_factory=list)
    retry_reason: str = ""

    def to_error(self) -> ResultError:
        return ResultError(
            code=self.code or ErrorCode.SALESFORCE_ERROR,
            message=self.message,
            retryable=self.retryable,
            salesforce_errors=self.errors,
        )


_NO_DATA_CODES = {"NOT_FOUND", "ENTITY_IS_DELETED"}
_NO_DATA_OPERATIONS = {Operation.GET, Operation.UPDATE, Operation.DELETE}
_SERVER_STATUSES = {500, 502, 503, 504}
_MAX_TEXT = 500


def salesforce_errors(body: Any, status: int) -> list[SalesforceErrorItem]:
    """Salesforce's error array (or anything else it sent) as contract error items."""
    items: list[SalesforceErrorItem] = []
    if isinstance(body, dict):
        body = [body]
    if isinstance(body, list):
        for entry in body:
            if not isinstance(entry, dict):
                continue
            code = entry.get("errorCode") or entry.get("error") or f"HTTP_{status}"
            message = entry.get("message") or entry.get("error_description") or ""
            fields = entry.get("fields") or []
            items.append(
                SalesforceErrorItem(
                    errorCode=str(code),
                    message=str(message)[:_MAX_TEXT],
                    fields=[str(f) for f in fields] if isinstance(fields, list) else [],
                )
            )
    elif isinstance(body, str) and body.strip():
        items.append(SalesforceErrorItem(errorCode=f"HTTP_{status}", message=body[:_MAX_TEXT]))
    return items


def _summary(items: list[SalesforceErrorItem], status: int) -> str:
    if not items:
        return f"Salesforce answered HTTP {status}"
    first = items[0]
    text = f"{first.errorCode}: {first.message}" if first.message else first.errorCode
    return text if len(items) == 1 else f"{text} (+{len(items) - 1} more)"


def _has(items: list[SalesforceErrorItem], needle: str) -> bool:
    return any(needle in i.errorCode or needle in i.message for i in items)


def classify(status: int, body: Any, operation: Operation) -> Classified:
    """Decide what a Salesforce answer means for the job (see the module table)."""
    if 200 <= status < 300:
        return Classified(Verdict.SUCCESS)
    items = salesforce_errors(body, status)
    codes = {i.errorCode for i in items}
    message = _summary(items, status)

    if status == 401:
        if "INVALID_SESSION_ID" in codes:
            return Classified(Verdict.REFRESH, ErrorCode.AUTH_FAILED, message, False, items)
        return Classified(Verdict.FAIL, ErrorCode.SALESFORCE_ERROR, message, False, items)

    if "REQUEST_LIMIT_EXCEEDED" in codes:
        if _has(items, "ConcurrentPerOrgLongTxn") or _has(items, "Concurrent"):
            return Classified(
                Verdict.RETRY, ErrorCode.RATE_LIMITED, message, True, items, "concurrent_limit"
            )
        # TotalRequests (the rolling 24 h org limit) and anything unknown: never retried.
        return Classified(Verdict.FAIL, ErrorCode.RATE_LIMITED, message, False, items, "daily")

    if _has(items, "UNABLE_TO_LOCK_ROW"):
        return Classified(
            Verdict.RETRY, ErrorCode.SALESFORCE_ERROR, message, True, items, "unable_to_lock_row"
        )
    if "QUERY_TIMEOUT" in codes:
        return Classified(
            Verdict.RETRY, ErrorCode.SALESFORCE_ERROR, message, True, items, "query_timeout"
        )
    if status in _SERVER_STATUSES:
        reason = "server_unavailable" if status == 503 else f"http_{status}"
        return Classified(
            Verdict.RETRY, ErrorCode.SALESFORCE_UNAVAILABLE, message, True, items, reason
        )
    if status == 404 and operation in _NO_DATA_OPERATIONS and codes & _NO_DATA_CODES:
        return Classified(Verdict.NO_DATA, None, message, False, items)
    if status == 300:
        count = len(body) if isinstance(body, list) else 0
        return Classified(
            Verdict.FAIL,
            ErrorCode.SALESFORCE_ERROR,
            f"the external id matches {count or 'several'} records; nothing was written",
            False,
            [
                SalesforceErrorItem(
                    errorCode="MULTIPLE_CHOICES",
                    message=str(url)[:_MAX_TEXT],
                )
                for url in (body if isinstance(body, list) else [])
            ][:20],
        )
    if status >= 500:
        return Classified(Verdict.FAIL, ErrorCode.SALESFORCE_UNAVAILABLE, message, True, items)
    return Classified(Verdict.FAIL, ErrorCode.SALESFORCE_ERROR, message, False, items)


def session_died(status: int, parsed: Any, answers: Sequence[Any] | None) -> bool:
    """Salesforce said INVALID_SESSION_ID (to the request, or to one of its subrequests): the
    token must be dropped before the slot is freed, or a call granted that slot next would
    start with it."""
    if status == 401:
        return classify(status, parsed, Operation.SEARCH).verdict is Verdict.REFRESH
    return any(
        a.status == 401 and classify(a.status, a.body, Operation.SEARCH).verdict is Verdict.REFRESH
        for a in answers or ()
    )
