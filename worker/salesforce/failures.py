"""What a call's failure means for its job: final (`CallFailed`, with the error the result
carries) or worth another try (`Retryable`); and the errors of an answer that was lost, too large
to read, refused by the token endpoint, or not awaited before the deadline."""

from __future__ import annotations

from worker.contract import ErrorCode, ResultError
from worker.salesforce.call import Call
from worker.salesforce.http import ResponseTooLarge, SendState
from worker.salesforce.oauth import AuthError

TOO_LARGE_HINT = "ask for fewer records (max_records) or fewer fields"


class CallFailed(Exception):
    """The operation ends failed (the error is final for this job)."""

    def __init__(self, error: ResultError, http_status: int | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.http_status = http_status


class Retryable(Exception):
    """The call may be tried again (after a pause, within the job's attempts and deadline)."""

    def __init__(self, reason: str, error: ResultError) -> None:
        super().__init__(error.message)
        self.reason = reason
        self.error = error


def error(code: ErrorCode, message: str, retryable: bool = False) -> ResultError:
    return ResultError(code=code, message=message, retryable=retryable)


def timeout_error(call: Call) -> CallFailed:
    return CallFailed(
        error(ErrorCode.TIMEOUT, "the job's deadline passed before Salesforce answered", True),
        call.http_status,
    )


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


def too_large(call: Call, state: SendState | None, exc: Exception) -> CallFailed:
    """A response too large to read: an insert that was sent is OUTCOME_UNKNOWN (its answer is
    unread); any other call RESULT_TOO_LARGE, final (the same call would be as large again)."""
    if state is not None and state.sent and not call.idempotent:
        return CallFailed(outcome_unknown(f"{exc} (not read)"), call.http_status)
    return CallFailed(
        error(ErrorCode.RESULT_TOO_LARGE, f"{exc}; {TOO_LARGE_HINT}"),
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


def failure_label(exc: BaseException) -> str:
    """The `http_status` label of a request that got no answer (as `_carry` counts it)."""
    if isinstance(exc, ResponseTooLarge):
        return "too_large"
    return "timeout" if isinstance(exc, TimeoutError) else "error"
