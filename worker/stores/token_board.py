"""The token board: where an account's access token, refresh token, refresh lock and last
refusal live. The token state machine (salesforce/tokens.py) reads and writes a board and never
learns where it is kept: in this process (`MemoryTokenBoard`, below) or in Redis for the whole
fleet (`RedisTokenBoard`, stores/redis_token_board.py).

What a board holds for one account:
- the current access token (`current`), dropped by `invalidate` only if it is still the one a
  401 reported dead (compare-and-invalidate);
- the refresh lock (`lock`, `renew`, `release`): whoever holds it calls the token endpoint;
- the refresh token to send (`refresh_token`), replaced by a rotated one in `publish`, which
  also stores the new access token, fenced by the lock (None: the lock was lost meanwhile);
- the last refusal of the token endpoint (`refused`, `refusal`), kept for the backoff.

A board that cannot be reached raises `BoardUnavailable`: the state machine then works with
this process's own board.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

from pydantic import SecretStr

from worker.accounts import Account

LOCAL = "local"
FLEET = "fleet"

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
    source: str = LOCAL

    def same_as(self, other: AccessToken) -> bool:
        return self.generation == other.generation and self.source == other.source

    @property
    def bearer(self) -> str:
        return f"Bearer {self.value.get_secret_value()}"


@dataclass(frozen=True)
class Backoff:
    """How long token requests pause after `failures` refusals in a row."""

    initial: float = 1.0
    maximum: float = 60.0

    def delay(self, failures: int) -> float:
        return float(min(self.maximum, self.initial * 2.0 ** max(0, failures - 1)))


@dataclass(frozen=True)
class Refusal:
    """A refusal of the token endpoint as plain values (the error code by its value). Read back
    from a board, `failures` counts the refusals in a row and `wait` the seconds of pause left."""

    message: str
    code: str
    retryable: bool = False
    error: str = ""
    description: str = ""
    http_status: int | None = None
    failures: int = 1
    wait: float = 0.0
    fleet_wide: bool = False


class BoardUnavailable(Exception):
    """The board cannot be used right now: use this process's own board instead."""


class UnreadableRefreshToken(Exception):
    """The board holds a refresh token that does not open with this worker's keys, and it is
    the one the fleet rotated the accounts file's token into."""


class SpentRefreshToken(Exception):
    """Rotation spent the accounts file's refresh token, the fleet's newest is not on the board
    (evicted, expired, a Redis restarted without it) and this process does not hold it: none may
    be sent (the file's would be a replay, and Salesforce revokes the whole chain)."""


RestoreHook = Callable[[], Awaitable[None]]


class TokenBoard(Protocol):
    """The token state of one account (see the module's docstring)."""

    @property
    def source(self) -> str:
        """The `AccessToken.source` of the tokens this board numbers."""
        ...

    @property
    def lease(self) -> float:
        """Seconds the refresh lock lasts unless renewed (0: it does not run out)."""
        ...

    @property
    def available(self) -> bool: ...

    async def wait_available(self, within: float) -> bool: ...

    async def current(self) -> AccessToken | None: ...

    async def invalidate(self, token: AccessToken) -> None:
        """Drop the current token if it is `token`; a board out of reach forgets nothing."""
        ...

    async def refusal(self) -> Refusal | None:
        """The last refusal while its pause lasts."""
        ...

    async def refused(self, refusal: Refusal, backoff: Backoff) -> float:
        """Record a refusal; the seconds token requests pause now."""
        ...

    async def lock(self) -> str | None:
        """Take the refresh lock: the holder's id, or None when someone else holds it."""
        ...

    async def renew(self, holder: str) -> None: ...

    async def release(self, holder: str) -> None: ...

    async def refresh_token(self) -> SecretStr | None:
        """The refresh token to send now (UnreadableRefreshToken, SpentRefreshToken: none may
        be sent)."""
        ...

    async def publish(
        self,
        holder: str,
        access_token: SecretStr,
        refresh_token: SecretStr | None,
        issued_at: float,
    ) -> AccessToken | None:
        """Store a new access token and a rotated refresh token; None when `holder` lost the
        lock (nothing is stored)."""
        ...

    async def write_back(self, refresh_token: SecretStr) -> None:
        """A refresh token rotated while the board was out of reach becomes the board's."""
        ...


class TokenBoards(Protocol):
    """The boards of the accounts of a process that shares its tokens."""

    def board(self, account: Account) -> TokenBoard: ...

    def on_restore(self, hook: RestoreHook) -> None:
        """Run `hook` when the boards can be reached again after an outage."""
        ...

    async def close(self) -> None: ...


class MemoryTokenBoard:
    """The token state of one account kept in this process: the whole state when the process
    works alone, its own copy (and its fallback) when the fleet shares a board."""

    source = LOCAL
    lease = 0.0
    available = True

    def __init__(self, account: Account, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._token: AccessToken | None = None
        self._refresh_token = account.refresh_token
        self._holder: str | None = None
        self._last: Refusal | None = None
        self._failures = 0
        self._retry_at = 0.0

    # --- read and written without waiting --------------------------------------------------

    @property
    def token(self) -> AccessToken | None:
        return self._token

    @property
    def newest_refresh_token(self) -> SecretStr | None:
        return self._refresh_token

    def adopt(self, token: AccessToken | None, refresh_token: SecretStr | None) -> None:
        """Take over a token and the newest refresh token obtained elsewhere (None: keep)."""
        if refresh_token is not None:
            self._refresh_token = refresh_token
        if token is not None:
            self._token = token

    def drop(self, token: AccessToken) -> bool:
        """Compare-and-invalidate; True when `token` was the current one."""
        if self._token is not None and self._token.same_as(token):
            self._token = None
            return True
        return False

    def paused(self) -> Refusal | None:
        now = self._clock()
        if self._last is None or now >= self._retry_at:
            return None
        return replace(self._last, failures=self._failures, wait=self._retry_at - now)

    # --- the board -------------------------------------------------------------------------

    async def wait_available(self, within: float) -> bool:
        return True

    async def current(self) -> AccessToken | None:
        return self._token

    async def invalidate(self, token: AccessToken) -> None:
        self.drop(token)

    async def refusal(self) -> Refusal | None:
        return self.paused()

    async def refused(self, refusal: Refusal, backoff: Backoff) -> float:
        self._failures += 1
        self._last = refusal
        delay = backoff.delay(self._failures)
        self._retry_at = self._clock() + delay
        return delay

    async def lock(self) -> str | None:
        if self._holder is not None:
            return None
        self._holder = uuid.uuid4().hex
        return self._holder

    async def renew(self, holder: str) -> None:
        return None

    async def release(self, holder: str) -> None:
        if self._holder == holder:
            self._holder = None

    async def refresh_token(self) -> SecretStr | None:
        return self._refresh_token

    async def publish(
        self,
        holder: str,
        access_token: SecretStr,
        refresh_token: SecretStr | None,
        issued_at: float,
    ) -> AccessToken | None:
        if self._holder != holder:
            return None
        self._failures = 0
        self._last = None
        token = AccessToken(access_token, next_generation(), issued_at, source=self.source)
        # Rotation: the old refresh token is dead from now on; keep the new one.
        self.adopt(token, refresh_token)
        return token

    async def write_back(self, refresh_token: SecretStr) -> None:
        self._refresh_token = refresh_token
