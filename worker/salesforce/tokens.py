"""Token manager: hands out access tokens per integration account, one refresh at a time.

- Lazy: the first job that needs a token fetches it; it is cached until Salesforce says otherwise
  (tokens carry no expiry; an expired one is answered 401 INVALID_SESSION_ID).
- Single-flight: any number of jobs waiting on a missing token share one token request.
- Compare-and-invalidate: a 401 drops the token only if it is still the one the failing call used,
  so a burst of 401s after one refresh does not refresh again.
- Backoff: after a failed token request, jobs fail fast with the same error until the backoff
  passes (the token endpoint allows 3,600 logins per user per hour).

`TokenManager` is the interface; `MemoryTokenManager` keeps state in this process. A shared
implementation (single-flight across the fleet) plugs in behind the same interface.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from pydantic import SecretStr

from worker.accounts import Account
from worker.contract import ErrorCode
from worker.observability.metrics import Metrics
from worker.salesforce.oauth import AuthError, Grant

log = logging.getLogger(__name__)

_generations = itertools.count(1)


def next_generation() -> int:
    """A number for a token this process obtained (local generations)."""
    return next(_generations)


@dataclass(frozen=True)
class AccessToken:
    value: SecretStr = field(repr=False)
    generation: int
    issued_at: float
    # "local" (this process numbered it) or "fleet" (Redis numbered it): generations of the two
    # are compared only within one source.
    source: str = "local"

    def same_as(self, other: AccessToken) -> bool:
        return self.generation == other.generation and self.source == other.source

    @property
    def bearer(self) -> str:
        return f"Bearer {self.value.get_secret_value()}"


class TokenFetcher(Protocol):
    """Performs one token request for an account (given the current refresh token, if any)."""

    def __call__(self, account: Account, refresh_token: SecretStr | None) -> Awaitable[Grant]: ...


class TokenManager(Protocol):
    async def get(self, account: Account) -> AccessToken:
        """A valid-looking token for the account, or AuthError (callers bound the wait)."""
        ...

    async def invalidate(self, account: Account, token: AccessToken) -> bool:
        """Drop `token` if it is still the account's current one; True when it was dropped."""
        ...

    def cached(self, account: Account) -> AccessToken | None:
        """The token held for the account right now, without waiting (None: call `get`)."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class Backoff:
    initial: float = 1.0
    maximum: float = 60.0

    def delay(self, failures: int) -> float:
        return float(min(self.maximum, self.initial * 2.0 ** max(0, failures - 1)))


class AccountTokens:
    """Token state of one account inside one process."""

    def __init__(
        self,
        account: Account,
        fetch: TokenFetcher,
        backoff: Backoff,
        metrics: Metrics,
        clock: Callable[[], float],
        request_timeout: float,
    ) -> None:
        self.account = account
        self._request_timeout = request_timeout
        self._fetch = fetch
        self._backoff = backoff
        self._metrics = metrics
        self._clock = clock
        self._token: AccessToken | None = None
        self._refresh_token = account.refresh_token
        self._inflight: asyncio.Task[AccessToken] | None = None
        self._failures = 0
        self._last_error: AuthError | None = None
        self._retry_at = 0.0

    async def get(self) -> AccessToken:
        if self._token is not None:
            return self._token
        if self._inflight is not None:
            self._metrics.token_waits.labels(self.account.name).inc()
        else:
            now = self._clock()
            if self._last_error is not None and now < self._retry_at:
                raise self._backing_off(self._retry_at - now)
            self._inflight = asyncio.create_task(
                self._refresh(), name=f"token-refresh:{self.account.name}"
            )
            self._inflight.add_done_callback(_consume_exception)
        # shield: a job that gives up (its deadline) must not cancel the shared request.
        return await asyncio.shield(self._inflight)

    @property
    def refresh_token(self) -> SecretStr | None:
        return self._refresh_token

    @property
    def token(self) -> AccessToken | None:
        """The token held now, if any (no request made)."""
        return self._token

    async def settled(self) -> None:
        """Wait for this process's token request in flight, if any, whatever its outcome."""
        task = self._inflight
        if task is not None:
            await asyncio.wait({task})

    def adopt(self, token: AccessToken | None, refresh_token: SecretStr | None) -> None:
        """Take over state obtained elsewhere (the fleet): the newest refresh token, and a
        token to use while Redis is out of reach."""
        if refresh_token is not None:
            self._refresh_token = refresh_token
        if token is not None:
            self._token = token

    def invalidate(self, token: AccessToken) -> bool:
        if self._token is not None and self._token.same_as(token):
            self._token = None
            self._metrics.token_invalidations.labels(self.account.name).inc()
            return True
        return False

    def _backing_off(self, wait: float) -> AuthError:
        last = self._last_error
        assert last is not None
        return AuthError(
            f"{last.message} (token requests paused for {wait:.1f} s after "
            f"{self._failures} failure(s))",
            code=last.code,
            retryable=last.retryable,
            error=last.error,
            description=last.description,
            http_status=last.http_status,
        )

    async def _refresh(self) -> AccessToken:
        flow = self.account.flow.value
        started = time.perf_counter()
        try:
            try:
                async with asyncio.timeout(self._request_timeout):
                    grant = await self._fetch(self.account, self._refresh_token)
            except TimeoutError:
                raise AuthError(
                    f"token endpoint did not answer within {self._request_timeout:.1f} s",
                    code=ErrorCode.SALESFORCE_UNAVAILABLE,
                    retryable=True,
                ) from None
        except AuthError as exc:
            self._failures += 1
            self._last_error = exc
            delay = self._backoff.delay(self._failures)
            self._retry_at = self._clock() + delay
            self._metrics.token_requests.labels(self.account.name, flow, "error").inc()
            log.warning(
                "token request failed",
                extra={
                    "account": self.account.name,
                    "flow": flow,
                    "error": exc.message,
                    "retry_in_s": round(delay, 2),
                },
            )
            raise
        finally:
            self._metrics.token_request_duration.labels(self.account.name).observe(
                time.perf_counter() - started
            )
            self._inflight = None
        self._failures = 0
        self._last_error = None
        if grant.refresh_token is not None:
            # Rotation: the old refresh token is dead from now on; keep the new one.
            self._refresh_token = grant.refresh_token
        token = AccessToken(grant.access_token, next(_generations), grant.issued_at)
        self._token = token
        self._metrics.token_requests.labels(self.account.name, flow, "ok").inc()
        log.info("access token obtained", extra={"account": self.account.name, "flow": flow})
        return token

    async def close(self) -> None:
        task = self._inflight
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def _consume_exception(task: asyncio.Task[AccessToken]) -> None:
    if not task.cancelled():
        task.exception()


class MemoryTokenManager:
    """Token manager with state in this process (single-flight per account within it)."""

    def __init__(
        self,
        fetch: TokenFetcher,
        metrics: Metrics,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        request_timeout: float = 10.0,
    ) -> None:
        self._request_timeout = request_timeout
        self._fetch = fetch
        self._metrics = metrics
        self._backoff = backoff or Backoff()
        self._clock = clock
        self._accounts: dict[str, AccountTokens] = {}

    def state(self, account: Account) -> AccountTokens:
        state = self._accounts.get(account.name)
        if state is None:
            state = AccountTokens(
                account,
                self._fetch,
                self._backoff,
                self._metrics,
                self._clock,
                self._request_timeout,
            )
            self._accounts[account.name] = state
        return state

    async def get(self, account: Account) -> AccessToken:
        return await self.state(account).get()

    async def invalidate(self, account: Account, token: AccessToken) -> bool:
        return self.state(account).invalidate(token)

    def cached(self, account: Account) -> AccessToken | None:
        state = self._accounts.get(account.name)
        return state.token if state is not None else None

    async def close(self) -> None:
        await asyncio.gather(*(s.close() for s in self._accounts.values()))
