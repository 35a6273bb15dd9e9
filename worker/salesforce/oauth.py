"""Calls to the OAuth token endpoint for the three flows an account may use.

Salesforce answers errors as HTTP 400 `{"error": ..., "error_description": ...}`. Those become an
AuthError carrying Salesforce's error and description; a secret is never part of the message.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt
import orjson
from pydantic import SecretStr

from worker.accounts import Account, Flow
from worker.contract import ErrorCode, SalesforceErrorItem

JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
_JWT_LIFETIME_SECONDS = 180


class AuthError(Exception):
    """The token endpoint refused or could not be reached."""

    def __init__(
        self,
        message: str,
        *,
        code: ErrorCode = ErrorCode.AUTH_FAILED,
        retryable: bool = False,
        error: str = "",
        description: str = "",
        http_status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.retryable = retryable
        self.error = error
        self.description = description
        self.http_status = http_status

    def salesforce_errors(self) -> list[SalesforceErrorItem]:
        if not self.error:
            return []
        return [SalesforceErrorItem(errorCode=self.error, message=self.description)]


@dataclass(frozen=True)
class Grant:
    """What a successful token request gives: a bearer token, and maybe a rotated refresh token."""

    access_token: SecretStr = field(repr=False)
    issued_at: float
    refresh_token: SecretStr | None = field(default=None, repr=False)
    identity_url: str | None = None  # the response's `id`: who the token belongs to
    instance_url: str | None = None


def _jwt_assertion(account: Account) -> str:
    assert account.private_key is not None
    now = int(time.time())
    claims = {
        "iss": account.client_id,
        "sub": account.username,
        "aud": account.audience,
        "exp": now + _JWT_LIFETIME_SECONDS,
    }
    return jwt.encode(claims, account.private_key.get_secret_value(), algorithm="RS256")


async def _form(account: Account, refresh_token: SecretStr | None) -> dict[str, str]:
    if account.flow is Flow.JWT_BEARER:
        try:
            # RSA signing takes a millisecond or two of CPU: keep it off the event loop.
            assertion = await asyncio.to_thread(_jwt_assertion, account)
        except (ValueError, TypeError, jwt.PyJWTError) as exc:
            raise AuthError(
                f"account {account.name!r}: cannot sign the JWT assertion with private_key "
                f"({type(exc).__name__})"
            ) from None
        return {"grant_type": JWT_BEARER_GRANT, "assertion": assertion}
    assert account.client_secret is not None
    form = {
        "client_id": account.client_id,
        "client_secret": account.client_secret.get_secret_value(),
    }
    if account.flow is Flow.CLIENT_CREDENTIALS:
        form["grant_type"] = "client_credentials"
    else:
        assert refresh_token is not None
        form["grant_type"] = "refresh_token"
        form["refresh_token"] = refresh_token.get_secret_value()
    return form


def _error_fields(body: Any) -> tuple[str, str]:
    if isinstance(body, dict):
        return str(body.get("error", "")), str(body.get("error_description", ""))[:300]
    return "", ""


async def request_token(
    session: aiohttp.ClientSession,
    account: Account,
    *,
    refresh_token: SecretStr | None,
) -> Grant:
    """One call to the account's token endpoint; AuthError on any failure.

    The caller bounds it with a timeout (a TimeoutError then passes through)."""
    form = await _form(account, refresh_token)
    return await post_token_form(session, account.token_url, form, account.flow.value)


async def post_token_form(
    session: aiohttp.ClientSession, token_url: str, form: dict[str, str], flow: str
) -> Grant:
    """POST `form` to the token endpoint; the Grant, or AuthError naming Salesforce's error."""
    try:
        async with session.post(
            token_url,
            data=form,
            headers={"Accept": "application/json"},
            allow_redirects=False,
        ) as response:
            raw = await response.read()
            status = response.status
    except aiohttp.ClientError as exc:
        raise AuthError(
            f"token endpoint unreachable: {type(exc).__name__}",
            code=ErrorCode.SALESFORCE_UNAVAILABLE,
            retryable=True,
        ) from None
    try:
        body: Any = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        body = None
    if status != 200:
        error, description = _error_fields(body)
        if status >= 500 or status == 429:
            raise AuthError(
                f"token endpoint answered HTTP {status}",
                code=ErrorCode.SALESFORCE_UNAVAILABLE,
                retryable=True,
                error=error,
                description=description,
                http_status=status,
            )
        detail = f"{error}: {description}" if description else error or f"HTTP {status}"
        raise AuthError(
            f"token request refused ({flow}): {detail}",
            error=error or f"HTTP_{status}",
            description=description,
            http_status=status,
        )
    if not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
        raise AuthError("token endpoint answered 200 without an access_token", http_status=status)
    issued_ms = body.get("issued_at")
    try:
        issued_at = int(issued_ms) / 1000 if issued_ms is not None else time.time()
    except (TypeError, ValueError):
        issued_at = time.time()
    rotated = body.get("refresh_token")
    identity = body.get("id")
    instance = body.get("instance_url")
    return Grant(
        access_token=SecretStr(body["access_token"]),
        issued_at=issued_at,
        refresh_token=SecretStr(rotated) if isinstance(rotated, str) and rotated else None,
        identity_url=identity if isinstance(identity, str) else None,
        instance_url=instance if isinstance(instance, str) else None,
    )
