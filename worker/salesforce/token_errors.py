"""What the token state machine (tokens.py) raises when it has no token to give, and the
refusals of the token endpoint as a board keeps them (plain values, stores/token_board.py)."""

from __future__ import annotations

from worker.contract import ErrorCode
from worker.salesforce.oauth import AuthError
from worker.stores.token_board import Refusal


class SealedRefreshToken(AuthError):
    """The fleet's refresh token is in Redis but does not open with this worker's keys."""

    def __init__(self) -> None:
        super().__init__(
            "the fleet's refresh token in Redis is sealed with a key this worker does not hold "
            "(SFWORKER_REDIS_ENCRYPTION_KEY differs from the fleet's); refreshing with the "
            "accounts file's one could revoke the fleet's, so this worker does not",
            code=ErrorCode.AUTH_FAILED,
            retryable=False,
        )


def refusal_of(exc: AuthError) -> Refusal:
    """The refusal as a board keeps it for the backoff."""
    return Refusal(
        message=exc.message,
        code=exc.code.value,
        retryable=exc.retryable,
        error=exc.error,
        description=exc.description,
        http_status=exc.http_status,
    )


def paused(refusal: Refusal) -> AuthError:
    """The error of every token request the refusal's pause answers without asking."""
    where = ", fleet-wide" if refusal.fleet_wide else ""
    return AuthError(
        f"{refusal.message} (token requests paused for {refusal.wait:.1f} s after "
        f"{refusal.failures} failure(s){where})",
        code=ErrorCode(refusal.code),
        retryable=refusal.retryable,
        error=refusal.error,
        description=refusal.description,
        http_status=refusal.http_status,
    )


def unavailable(message: str) -> AuthError:
    return AuthError(message, code=ErrorCode.SALESFORCE_UNAVAILABLE, retryable=True)
