"""Token manager: hands out access tokens per integration account, one refresh at a time.

- Lazy: the first job that needs a token fetches it, cached until a 401 INVALID_SESSION_ID.
- Single-flight: any number of jobs waiting on a missing token share one token request.
- Compare-and-invalidate: a 401 drops the token only if the failing call used it (one refresh).
- Backoff: after a failed token request, jobs fail fast with its error (3,600 logins an hour).
- Timeouts: a token request that does not answer within SFWORKER_TOKEN_TIMEOUT_SECONDS fails.

`AccountTokens` is that state machine for one account, written over a token *board*
(stores/token_board.py): the process's own (`MemoryTokenBoard`), or one the fleet shares
(Redis: stores/redis_token_board.py), which makes the rules above hold fleet-wide: one worker
takes the board's refresh lock (renewing its lease while its request runs) and the others poll
the board every 50 ms for the new token. When the shared board is out of reach, the process's own
board takes over (seeded with the newest refresh token seen); a refresh token rotated meanwhile
is written back on return; a spent one is never sent. `BoardTokenManager` holds them all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from pydantic import SecretStr

from worker.accounts import Account, Flow
from worker.observability.metrics import Metrics
from worker.salesforce.oauth import AuthError, Grant
from worker.salesforce.token_errors import (
    SpentFileToken,
    paused,
    refresh_token_to_send,
    refusal_of,
    unavailable,
)
from worker.stores.token_board import (
    AccessToken,
    Backoff,
    BoardUnavailable,
    MemoryTokenBoard,
    SpentRefreshToken,
    TokenBoard,
    TokenBoards,
    UnreadableRefreshToken,
    next_generation,
)
from worker.tasks import StopFlag, stop

__all__ = [
    "AccessToken",
    "AccountTokens",
    "Backoff",
    "BoardTokenManager",
    "TokenFetcher",
    "TokenManager",
]

log = logging.getLogger(__name__)

_POLL_SECONDS = 0.05


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


class AccountTokens:
    """The token state machine of one account in this process.

    `own` is the process's board: its token is the one held (handed out without waiting),
    its refresh token the newest this process has seen. `board` is where the account's token
    lives: `own` itself when the process works alone, or the fleet's."""

    def __init__(
        self,
        account: Account,
        fetch: TokenFetcher,
        metrics: Metrics,
        own: MemoryTokenBoard,
        board: TokenBoard | None = None,
        *,
        backoff: Backoff,
        request_timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.account = account
        self._fetch = fetch
        self._metrics = metrics
        self._own = own
        self._board: TokenBoard = board if board is not None else own
        self._backoff = backoff
        self._request_timeout = request_timeout
        self._clock = clock
        # The token held is the board's current one (not one obtained while it was out).
        self._from_board = True
        self._inflight: asyncio.Task[AccessToken] | None = None
        # The file's refresh token is spent (token_errors.SpentFileToken); a wait ended.
        self._file_spent = False
        self._gave_up = False

    # --- what the client calls -------------------------------------------------------------

    @property
    def token(self) -> AccessToken | None:
        """The token to use now, without waiting (None: `get` decides)."""
        token = self._own.token
        if token is not None and (self._from_board or not self._board.available):
            return token
        return None

    async def get(self) -> AccessToken:
        token = self.token
        if token is not None:
            return token
        if self._inflight is not None:
            self._metrics.token_waits.labels(self.account.name).inc()
        else:
            if self._alone:
                self._raise_if_paused()
            self._inflight = asyncio.create_task(
                self._acquire(), name=f"token-refresh:{self.account.name}"
            )
            self._inflight.add_done_callback(self._done)
        # shield: a job that gives up (its deadline) must not cancel the shared request.
        return await asyncio.shield(self._inflight)

    async def invalidate(self, token: AccessToken) -> bool:
        dropped = self._own.drop(token)
        if dropped:
            self._metrics.token_invalidations.labels(self.account.name).inc()
        if self._board is not self._own and token.source == self._board.source:
            await self._board.invalidate(token)
        return dropped

    async def refresh_now(self) -> None:
        """Make one token request under the board's lock, with its newest refresh token, and
        publish what it returns (`sfworker accounts check`: a check must never spend a refresh
        token behind the workers' back). BoardUnavailable when the board is out of reach."""
        give_up = self._clock() + self._patience
        while True:
            holder = await self._board.lock()
            if holder is not None:
                try:
                    await self._refresh(self._board, holder)
                    return
                finally:
                    await self._board.release(holder)
            if self._clock() > give_up:
                raise unavailable("another worker's token request did not finish in time")
            await asyncio.sleep(_POLL_SECONDS)

    async def write_back(self) -> None:
        """After an outage of the board: a refresh token this process rotated meanwhile is the
        only live one; the board takes it."""
        if self._board is self._own or self.account.flow is not Flow.REFRESH_TOKEN:
            return
        newest = self._own.newest_refresh_token
        if newest is not None:
            await self._board.write_back(newest)

    async def close(self) -> None:
        task = self._inflight
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    # --- which board -----------------------------------------------------------------------

    @property
    def _rotates(self) -> bool:
        """The refresh token rotates (this process has seen it change)."""
        return self.account.flow is Flow.REFRESH_TOKEN and (
            self._file_spent or self._own.newest_refresh_token != self.account.refresh_token
        )

    @property
    def _alone(self) -> bool:
        """This process's own board decides: no other, or it is out of reach and nothing forbids
        refreshing alone."""
        return self._board is self._own or (not self._board.available and not self._rotates)

    @property
    def _patience(self) -> float:
        """How long to wait for another holder of the lock before giving up."""
        return self._board.lease + self._request_timeout + 1.0

    def _done(self, task: asyncio.Task[AccessToken]) -> None:
        self._inflight = None
        if not task.cancelled():
            task.exception()

    def _raise_if_paused(self) -> None:
        refusal = self._own.paused()
        if refusal is not None:
            raise paused(refusal)

    async def _acquire(self) -> AccessToken:
        if self._alone:
            return await self._by_own()
        try:
            return await self._by_board()
        except BoardUnavailable:
            if not self._rotates:
                return await self._by_own()
        # With rotation, a worker cut off from the fleet's board does not refresh alone: the
        # others may spend the same refresh token (one is refused) or have rotated it already (a
        # replay, and Salesforce revokes the chain for the whole fleet). It uses the token it
        # holds, or waits for the board (the jobs' deadlines bound the wait).
        held = self._own.token
        if held is not None:
            return held
        await self._board.wait_available(self._patience)
        try:
            return await self._by_board()
        except BoardUnavailable:
            raise unavailable(
                "no access token: Redis is out of reach and the refresh token rotates, so "
                "this worker does not refresh it alone"
            ) from None

    async def _by_own(self) -> AccessToken:
        held = self._own.token
        if held is not None:
            return held
        self._raise_if_paused()
        return await self._from(self._own)

    async def _by_board(self) -> AccessToken:
        # A refresh token rotated while the board was out goes to it before anyone refreshes.
        await self.write_back()
        return await self._from(self._board)

    async def _from(self, board: TokenBoard) -> AccessToken:
        """The board's token, or a new one requested under its lock, or one another holder of
        the lock publishes (polled), or a live worker's copy of a lost refresh token (polled)."""
        give_up = self._clock() + self._patience
        waited = False
        spent: SpentFileToken | None = None
        while True:
            token = await self._read(board)
            if token is not None:
                return token
            refusal = await board.refusal()
            if refusal is not None:
                raise paused(refusal)
            holder = await board.lock()
            if holder is not None:
                try:
                    token = await self._read(board)  # published while we asked for the lock?
                    if token is not None:
                        return token
                    return await self._refresh(board, holder)
                except SpentFileToken as exc:
                    self._file_spent = True
                    if self._gave_up:
                        raise
                    spent = exc
                finally:
                    await board.release(holder)
            if not waited:
                waited = True
                log.debug("waiting for another worker's token request", extra=self._extra())
            if self._clock() > give_up:
                if spent is not None:
                    self._gave_up = True
                    raise spent
                raise unavailable(
                    "no access token: another worker's token request did not finish in time"
                )
            await asyncio.sleep(_POLL_SECONDS)

    async def _read(self, board: TokenBoard) -> AccessToken | None:
        token = await board.current()
        if token is None:
            return None
        self._hold(token, board)
        if board is not self._own:
            # Keep the newest refresh token at hand, should the board go away later.
            try:
                self._own.adopt(None, await board.refresh_token())
            except (SpentRefreshToken, UnreadableRefreshToken) as exc:
                self._file_spent |= isinstance(exc, SpentRefreshToken)
        return token

    def _hold(self, token: AccessToken, board: TokenBoard | None) -> None:
        """Hold `token`, read or published on `board` (None: obtained while it was out)."""
        self._gave_up = False
        self._own.adopt(token, None)
        self._from_board = board is self._board

    # --- one token request -----------------------------------------------------------------

    async def _refresh(self, board: TokenBoard, holder: str) -> AccessToken:
        refresh_token = await refresh_token_to_send(board, self.account, quiet=self._file_spent)
        self._own.adopt(None, refresh_token)
        started = time.perf_counter()
        keeping = StopFlag()
        keeper = (
            asyncio.create_task(self._keep_lock(board, holder, keeping), name="token-lock-lease")
            if board.lease > 0
            else None
        )
        try:
            try:
                async with asyncio.timeout(self._request_timeout):
                    grant = await self._fetch(self.account, refresh_token)
            except TimeoutError:
                raise unavailable(
                    f"token endpoint did not answer within {self._request_timeout:.1f} s"
                ) from None
        except AuthError as exc:
            await self._refused(board, exc)
            raise
        finally:
            await stop(keeper, keeping)
            self._metrics.token_request_duration.labels(self.account.name).observe(
                time.perf_counter() - started
            )
        self._metrics.token_requests.labels(self.account.name, self.account.flow.value, "ok").inc()
        return await self._publish(board, holder, grant)

    async def _keep_lock(self, board: TokenBoard, holder: str, flag: StopFlag) -> None:
        """Renew the lock's lease while this holder's token request runs: a live holder keeps
        the lock however long the request takes; a dead one loses it within one lease."""
        while flag.running:
            await asyncio.sleep(board.lease / 3)
            await board.renew(holder)

    async def _refused(self, board: TokenBoard, exc: AuthError) -> None:
        flow = self.account.flow.value
        self._metrics.token_requests.labels(self.account.name, flow, "error").inc()
        try:
            delay = await board.refused(refusal_of(exc), self._backoff)
        except BoardUnavailable:
            delay = self._backoff.initial
        log.warning(
            "token request failed",
            extra={**self._extra(), "error": exc.message, "retry_in_s": round(delay, 2)},
        )

    async def _publish(self, board: TokenBoard, holder: str, grant: Grant) -> AccessToken:
        rotated = grant.refresh_token
        try:
            token = await board.publish(holder, grant.access_token, rotated, grant.issued_at)
        except BoardUnavailable:
            # Only this process knows the new tokens now: keep them for the fallback, and the
            # restore hook writes a rotated refresh token back.
            return self._keep_alone(grant)
        if token is None:
            log.error(
                "token lock lost during the token request (its lease could not be renewed: Redis "
                "too slow, or this process stalled); check Redis or raise "
                "SFWORKER_TOKEN_LOCK_LEASE_SECONDS",
                extra=self._extra(),
            )
            return self._keep_alone(grant)
        self._hold(token, board)
        self._own.adopt(None, rotated)
        fleet = " for the fleet" if board is not self._own else ""
        log.info(f"access token obtained{fleet}", extra=self._extra())
        return token

    def _keep_alone(self, grant: Grant) -> AccessToken:
        token = AccessToken(grant.access_token, next_generation(), grant.issued_at)
        self._hold(token, None)
        self._own.adopt(None, grant.refresh_token)
        return token

    def _extra(self) -> dict[str, str]:
        return {"account": self.account.name, "flow": self.account.flow.value}


class BoardTokenManager:
    """TokenManager over boards: the process's own per account, and the fleet's when `shared`
    is given (then single-flight holds across every process sharing it)."""

    def __init__(
        self,
        fetch: TokenFetcher,
        metrics: Metrics,
        backoff: Backoff | None = None,
        *,
        shared: TokenBoards | None = None,
        clock: Callable[[], float] = time.monotonic,
        request_timeout: float = 10.0,
    ) -> None:
        self._fetch = fetch
        self._metrics = metrics
        self._backoff = backoff or Backoff()
        self._shared = shared
        self._clock = clock
        self._request_timeout = request_timeout
        self._accounts: dict[str, AccountTokens] = {}
        if shared is not None:
            shared.on_restore(self._write_back)

    def state(self, account: Account) -> AccountTokens:
        state = self._accounts.get(account.name)
        if state is None:
            state = AccountTokens(
                account,
                self._fetch,
                self._metrics,
                MemoryTokenBoard(account, self._clock),
                self._shared.board(account) if self._shared is not None else None,
                backoff=self._backoff,
                request_timeout=self._request_timeout,
                clock=self._clock,
            )
            self._accounts[account.name] = state
        return state

    async def get(self, account: Account) -> AccessToken:
        return await self.state(account).get()

    async def invalidate(self, account: Account, token: AccessToken) -> bool:
        return await self.state(account).invalidate(token)

    def cached(self, account: Account) -> AccessToken | None:
        state = self._accounts.get(account.name)
        return state.token if state is not None else None

    async def _write_back(self) -> None:
        for state in self._accounts.values():
            await state.write_back()

    async def close(self) -> None:
        await asyncio.gather(*(s.close() for s in self._accounts.values()))
        if self._shared is not None:
            await self._shared.close()
