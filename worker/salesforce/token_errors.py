"""What the token state machine (tokens.py) raises when it has no token to give (and which
refresh token it may send), and the refusals of the token endpoint as a board keeps them (plain
values, stores/token_board.py)."""

from __future__ import annotations

import logging

from pydantic import SecretStr

from worker.accounts import Account
from worker.contract import ErrorCode
from worker.salesforce.oauth import AuthError
from worker.stores.token_board import (
    Refusal,
    SpentRefreshToken,
    TokenBoard,
    UnreadableRefreshToken,
)

log = logging.getLogger(__name__)


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


class SpentFileToken(AuthError):
    """Rotation spent the accounts file's refresh token and the fleet's newest is gone from
    Redis, with no live worker to put its copy back: no refresh token may be sent."""

    def __init__(self, account: str) -> None:
        super().__init__(
            "the accounts file's refresh token was spent by rotation and the fleet's newest one "
            "is missing from Redis (evicted, expired, or Redis restarted without its data), "
            "with no running worker holding it; sending the file's would make Salesforce revoke "
            f"the whole chain, so no worker does: run `sfworker accounts authorize {account}` "
            "and roll the workers out with the new accounts file",
            code=ErrorCode.AUTH_FAILED,
            retryable=False,
        )


async def refresh_token_to_send(
    board: TokenBoard, account: Account, *, quiet: bool = False
) -> SecretStr | None:
    """The board's refresh token to send, or the AuthError of why none may be sent (for a
    spent one, a warning too unless `quiet`: once per process)."""
    try:
        return await board.refresh_token()
    except UnreadableRefreshToken:
        raise SealedRefreshToken() from None
    except SpentRefreshToken:
        if not quiet:
            log.warning(
                "the fleet's refresh token is missing from Redis and rotation spent the accounts "
                "file's: waiting for a running worker to put its copy back",
                extra={"account": account.name, "flow": account.flow.value},
            )
        raise SpentFileToken(account.name) from None


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
