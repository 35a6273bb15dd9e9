"""The bookkeeping of Salesforce calls: what an operation produced, one call's state and
answer, and what a lost or refused answer means for a job (client.py and the Composite path
share them)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from worker.accounts import Account
from worker.contract import ErrorCode, Operation, ResultError, Status
from worker.deadline import Deadline
from worker.salesforce import composite
from worker.salesforce.errors import Classified
from worker.salesforce.http import SendState
from worker.salesforce.oauth import AuthError
from worker.salesforce.tokens import AccessToken


@dataclass
class Outcome:
    """What an operation produced; jobs.py adds the job's identity and timing."""

    status: Status
    records: list[dict[str, Any]] | None = None
    count: int | None = None
    id: str | None = None
    created: bool | None = None
    http_status: int | None = None
    error: ResultError | None = None
    attempts: int = 0


class CallFailed(Exception):
    """The operation ends failed (the error is final for this job)."""

    def __init__(self, error: ResultError, http_status: int | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.http_status = http_status


BeforeSend = Callable[[], Awaitable[bool]]


@dataclass
class Response:
    status: int
    body: Any
    classified: Classified
    token: AccessToken


@dataclass
class Call:
    """Bookkeeping of one operation: the calls it made and the last HTTP status seen."""

    account: Account
    operation: Operation
    deadline: Deadline
    attempts: int = 0
    retries: int = 0
    http_status: int | None = None
    idempotent: bool = True
    extra_headers: dict[str, str] = field(default_factory=dict)
    before_send: BeforeSend | None = None


@dataclass(eq=False)
class Pending:
    """One attempt of a call waiting to travel inside a Composite request (coalesce.py)."""

    call: Call
    sub: composite.Subrequest
    abandoned: bool = False  # its job stopped waiting (deadline, cancel): leave it out
    committed: bool = False  # its request is on its way: the job cannot take it back
    unsent: Exception | None = None  # why it was left out of the request, as its job sees it
    trace: object = None  # its job's wait, as tracing sees it (observability/tracing.py)


Answer = Response | Exception  # what a coalesced call gets: its answer, or what to raise


def error(code: ErrorCode, message: str, retryable: bool = False) -> ResultError:
    return ResultError(code=code, message=message, retryable=retryable)


def timeout_error(call: Call) -> CallFailed:
    return CallFailed(
        error(ErrorCode.TIMEOUT, "the job's deadline passed before Salesforce answered", True),
        call.http_status,
    )


class Retryable(Exception):
    def __init__(self, reason: str, error: ResultError) -> None:
        super().__init__(error.message)
        self.reason = reason
        self.error = error


def lost(call: Call, state: SendState | None, what: str, timeout: bool = False) -> Exception:
    """A request whose answer did not come: an insert that left is OUTCOME_UNKNOWN (never
    resent); otherwise TIMEOUT at the deadline, or a retry."""
    sent = state is not None and state.sent
    if sent and not call.idempotent:
        return CallFailed(outcome_unknown(what), call.http_status)
    if timeout:
        return timeout_error(call)
    return Retryable(
        "connection_lost" if sent else "connection_failed",
        error(ErrorCode.SALESFORCE_UNAVAILABLE, f"Salesforce: {what}", True),
    )


TOO_LARGE_HINT = "ask for fewer records (max_records) or fewer fields"


def too_large(call: Call, state: SendState | None, exc: Exception) -> CallFailed:
    """A response too large to read: an insert that was sent is OUTCOME_UNKNOWN (its answer is
    unread); any other call RESULT_TOO_LARGE, final (the same call would be as large again)."""
    if state is not None and state.sent and not call.idempotent:
        return CallFailed(outcome_unknown(f"{exc} (not read)"), call.http_status)
    return CallFailed(
        error(ErrorCode.RESULT_TOO_LARGE, f"{exc} (SFWORKER_MAX_RESPONSE_BYTES); {TOO_LARGE_HINT}"),
        call.http_status,
    )


def auth_failed(call: Call, exc: AuthError) -> CallFailed:
    return CallFailed(
        ResultError(
            code=exc.code,
            message=exc.message,
            retryable=exc.retryable,
            salesforce_errors=exc.salesforce_errors(),
        ),
        exc.http_status or call.http_status,
    )


def outcome_unknown(what: str) -> ResultError:
    return error(
        ErrorCode.OUTCOME_UNKNOWN,
        f"{what} after the insert was sent; Salesforce may or may not have created the record, "
        "so it is not sent again",
        False,
    )


def decode(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw[:2000].decode("utf-8", errors="replace")
