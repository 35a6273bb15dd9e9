"""The token board of a fleet: an account's tokens, refresh lock and last refusal in Redis, so
that one token request per account per expiry serves every worker process.

Keys (under SFWORKER_REDIS_PREFIX; <who> is the account's name and `Account.scope`, a hash of
its org, app, user and flow): `token:<who>` (the current access token, sealed, and its fleet
generation), `token-gen:<who>` (the generation counter), `token-lock:<who>` (who is refreshing,
with a lease), `token-error:<who>` (the last refusal, kept for the backoff), `token-failures:<who>`
(refusals in a row), `refresh:<who>` (the newest refresh token, sealed, kept
SFWORKER_REFRESH_TOKEN_TTL_DAYS after its last rotation, and a fingerprint of the accounts file's
one), `spent:<who>` (no TTL: which accounts-file tokens rotation spent, stores/spent_tokens.py).
Tokens are sealed by the link's `Seal` (stores/sealing.py); one that does not open reads
as absent.

- The lock is `SET NX PX lease`, released and renewed only by its holder (scripts that compare
  the holder's id); a holder that dies leaves a lock whose lease runs out. A lock Redis kept
  through an outage (a restart) that its live holder let go of meanwhile goes once Redis answers.
- Compare-and-invalidate in Redis: a 401 on an older generation changes nothing. A 401 whose
  invalidation did not reach Redis is remembered and done on the next read.
- Rotation: the new refresh token is written in the same script as the access token, before
  the lock is released, so nobody can refresh with the rotated-out one. The accounts file's
  refresh token is only the start: a *different* one in the file (an admin authorized again)
  wins.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
from pydantic import SecretStr
from redis.commands.core import AsyncScript

from worker.accounts import Account, Flow
from worker.stores.link import Redis, RedisLink, RedisUnavailable, as_text
from worker.stores.spent_tokens import KEEP, RefreshKeeper, fingerprint, holds_newest
from worker.stores.token_board import (
    FLEET,
    AccessToken,
    Backoff,
    BoardUnavailable,
    Refusal,
    RestoreHook,
    SpentRefreshToken,
    UnreadableRefreshToken,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
_TOKEN_TTL_MS = 12 * 3600 * 1000  # a forgotten token goes eventually; a live one is rewritten

# KEYS: lock, token, gen, refresh, error, failures, spent
# ARGV: holder, access token (sealed), rotated refresh token (sealed) or "", file fingerprint,
# token ttl ms, refresh token ttl ms, rotated refresh token's fingerprint
_STORE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[4], 'value', ARGV[3], 'seed', ARGV[4])
  redis.call('PEXPIRE', KEYS[4], ARGV[6])
  redis.call('HSET', KEYS[7], ARGV[4], ARGV[7])
end
if redis.call('EXISTS', KEYS[3]) == 0 then
  -- A Redis that came back empty: start above every generation handed out before it.
  local t = redis.call('TIME')
  redis.call('SET', KEYS[3], t[1] .. string.format('%06d', tonumber(t[2])))
end
local gen = redis.call('INCR', KEYS[3])
redis.call('HSET', KEYS[2], 'value', ARGV[2], 'gen', gen)
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call('DEL', KEYS[5], KEYS[6])
return gen
"""
# KEYS: lock; ARGV: holder
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# KEYS: lock; ARGV: holder, lease ms
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
# KEYS: token; ARGV: generation that a 401 reported dead
_INVALIDATE = """
if redis.call('HGET', KEYS[1], 'gen') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def seed_of(secret: SecretStr | None) -> str:
    """The fingerprint of the accounts file's refresh token kept beside the fleet's one."""
    if secret is None:
        return ""
    return hashlib.sha256(secret.get_secret_value().encode()).hexdigest()[:24]


def _refusal_payload(refusal: Refusal, failures: int) -> bytes:
    return orjson.dumps(
        {
            "message": refusal.message,
            "code": refusal.code,
            "retryable": refusal.retryable,
            "error": refusal.error,
            "description": refusal.description,
            "http_status": refusal.http_status,
            "failures": failures,
        }
    )


def _refusal_from(raw: Any, wait_ms: int) -> Refusal:
    data: dict[str, Any] = orjson.loads(raw)
    return Refusal(
        message=str(data.get("message", "token request failed")),
        code=str(data.get("code", "AUTH_FAILED")),
        retryable=bool(data.get("retryable")),
        error=str(data.get("error") or ""),
        description=str(data.get("description") or ""),
        http_status=data.get("http_status"),
        failures=int(data.get("failures", 1)),
        wait=max(0, wait_ms) / 1000,
        fleet_wide=True,
    )


class _Scripts:
    def __init__(self, link: RedisLink) -> None:
        self.store = link.script(_STORE)
        self.release = link.script(_RELEASE)
        self.renew = link.script(_RENEW)
        self.invalidate = link.script(_INVALIDATE)
        self.keep = link.script(KEEP)


class RedisTokenBoards:
    """The Redis boards of a process's accounts (`TokenBoards`)."""

    def __init__(
        self,
        link: RedisLink,
        *,
        lease: float = 5.0,
        refresh_ttl: float = 30 * 86400.0,
        keeper: RefreshKeeper | None = None,
    ) -> None:
        self._link = link
        self._lease = lease
        self._refresh_ttl = refresh_ttl
        self._scripts = _Scripts(link)
        # A worker's: puts a copy of the newest refresh token back if the fleet lost it.
        self._keeper = keeper
        self._boards: list[RedisTokenBoard] = []
        self._hooks: list[RestoreHook] = []
        link.on_restore(self._restore)

    def board(self, account: Account) -> RedisTokenBoard:
        board = RedisTokenBoard(
            account,
            self._link,
            self._scripts,
            lease=self._lease,
            refresh_ttl=self._refresh_ttl,
        )
        if self._keeper is not None and account.flow is Flow.REFRESH_TOKEN:
            self._keeper.add(board.keep_quietly)
        self._boards.append(board)
        return board

    async def close(self) -> None:
        if self._keeper is not None:
            await self._keeper.close()

    def on_restore(self, hook: RestoreHook) -> None:
        self._hooks.append(hook)

    async def _restore(self) -> None:
        """Redis answers again: the hooks (a refresh token rotated during the outage is written
        back), then the locks let go of during it are released; not before the write-back, or
        another worker could take the lock and send the rotated-out refresh token."""
        try:
            for hook in self._hooks:
                await hook()
            for board in self._boards:
                await board.release_left()
        except BoardUnavailable:
            raise RedisUnavailable(self._link.where) from None  # gone again: the link waits


class RedisTokenBoard:
    """The fleet's token state of one account (`TokenBoard`)."""

    source = FLEET

    def __init__(
        self,
        account: Account,
        link: RedisLink,
        scripts: _Scripts,
        *,
        lease: float,
        refresh_ttl: float,
    ) -> None:
        self._account = account
        self._link = link
        self._scripts = scripts
        self._seal = link.seal
        self._lease_ms = int(lease * 1000)
        self._refresh_ttl_ms = int(refresh_ttl * 1000)
        self._dead_generation: int | None = None
        self._left: set[str] = set()  # let go of while Redis was away: see `release_left`
        # The newest refresh token known to be the fleet's (read, or published by this process).
        self._latest_refresh: SecretStr | None = account.refresh_token
        self._seed = seed_of(account.refresh_token)
        who = (account.name, account.scope)
        self._lock = link.key("token-lock", *who)
        self._token = link.key("token", *who)
        self._gen = link.key("token-gen", *who)
        self._refresh = link.key("refresh", *who)
        self._error = link.key("token-error", *who)
        self._failures = link.key("token-failures", *who)
        self._spent = link.key("spent", *who)

    @property
    def lease(self) -> float:
        return self._lease_ms / 1000

    @property
    def available(self) -> bool:
        return self._link.available

    async def wait_available(self, within: float) -> bool:
        return await self._link.wait_available(within)

    async def _call(self, command: Callable[[Redis], Awaitable[T]]) -> T:
        try:
            return await self._link.call(command)
        except RedisUnavailable:
            raise BoardUnavailable(self._link.where) from None

    async def _durable(self, command: Callable[[Redis], Awaitable[T]]) -> T:
        try:
            return await self._link.durable(command)
        except RedisUnavailable:
            raise BoardUnavailable(self._link.where) from None

    # --- the access token ------------------------------------------------------------------

    async def current(self) -> AccessToken | None:
        key = self._token
        data = await self._call(lambda r: r.hgetall(key))
        value, gen = self._seal.open_text(key, data.get(b"value")), as_text(data.get(b"gen"))
        if not value or not gen:
            return None  # none, or one that does not open: this worker asks for one
        generation = int(gen)
        if self._dead_generation is not None and generation <= self._dead_generation:
            # A 401 said so but our compare-and-invalidate did not reach Redis: do it now.
            script = self._scripts.invalidate
            await self._call(lambda r: script(keys=[key], args=[gen], client=r))
            return None
        return AccessToken(SecretStr(value), generation, time.time(), source=FLEET)

    async def invalidate(self, token: AccessToken) -> None:
        # Generations only grow: the newest one a 401 reported dead covers every older one.
        self._dead_generation = max(self._dead_generation or 0, token.generation)
        key, generation, script = self._token, str(token.generation), self._scripts.invalidate
        await self._link.attempt(lambda r: script(keys=[key], args=[generation], client=r))

    # --- the refusal kept for the backoff --------------------------------------------------

    async def refusal(self) -> Refusal | None:
        key = self._error
        raw = await self._call(lambda r: r.get(key))
        if raw is None:
            return None
        wait_ms = await self._call(lambda r: r.pttl(key))
        return _refusal_from(raw, int(wait_ms))

    async def refused(self, refusal: Refusal, backoff: Backoff) -> float:
        failures_key, error_key = self._failures, self._error
        failures = int(await self._call(lambda r: r.incr(failures_key)))
        delay = backoff.delay(failures)
        ttl = int(backoff.maximum * 4000)
        payload = _refusal_payload(refusal, failures)
        await self._call(lambda r: r.pexpire(failures_key, ttl))
        await self._call(lambda r: r.set(error_key, payload, px=int(delay * 1000)))
        return delay

    # --- the refresh lock ------------------------------------------------------------------

    async def lock(self) -> str | None:
        holder, lock, lease = uuid.uuid4().hex, self._lock, self._lease_ms
        # Confirmed by a replica (replicas.py): a lock lost in a failover lets a second worker
        # refresh with the same refresh token.
        try:
            taken = await self._durable(lambda r: r.set(lock, holder, nx=True, px=lease))
        except BoardUnavailable:
            self._left.add(holder)  # Redis may have taken it before the reply was lost
            raise
        return holder if taken else None

    async def renew(self, holder: str) -> None:
        lock, lease, script = self._lock, self._lease_ms, self._scripts.renew
        await self._link.attempt(lambda r: script(keys=[lock], args=[holder, lease], client=r))

    async def release(self, holder: str) -> None:
        """Only the holder's own lock is deleted; if Redis is gone, once it answers again."""
        lock, script = self._lock, self._scripts.release
        try:
            await self._link.call(lambda r: script(keys=[lock], args=[holder], client=r))
        except RedisUnavailable:
            self._left.add(holder)

    async def release_left(self) -> None:
        """Release the locks let go of while Redis was out of reach: their release, or the reply
        to their SET, was lost. A restore step: until then, every worker of the fleet needing a
        token would wait for the lease to run out."""
        for holder in list(self._left):
            self._left.discard(holder)
            await self.release(holder)  # kept again if Redis went away again
        if self._left:
            raise BoardUnavailable(self._link.where)

    # --- the refresh token -----------------------------------------------------------------

    async def refresh_token(self) -> SecretStr | None:
        """The fleet's newest, unless the accounts file now holds a different one than the one
        the fleet started from; never the file's once rotation spent it (SpentRefreshToken when
        the fleet lost its newest and this process does not hold it)."""
        if self._account.flow is not Flow.REFRESH_TOKEN:
            return None
        key, spent, seed_key = self._refresh, self._spent, self._seed
        data = await self._call(lambda r: r.hgetall(key))
        newest = as_text(await self._call(lambda r: r.hget(spent, seed_key)))
        raw, seed = data.get(b"value"), as_text(data.get(b"seed"))
        value = self._seal.open_text(key, raw)
        if raw is not None and value is None and seed == self._seed:
            # The fleet rotated the file's token into one this worker cannot read: the file's
            # is spent, and replaying it would make Salesforce revoke the fleet's.
            raise UnreadableRefreshToken()
        if value and seed == self._seed:
            self._latest_refresh = SecretStr(value)
            if newest != fingerprint(self._latest_refresh):  # written before `spent:` was
                await self._call(lambda r: r.hset(spent, seed_key, fingerprint(SecretStr(value))))
        elif not newest:
            self._latest_refresh = self._account.refresh_token  # not spent: the chain's start
        elif not (
            holds_newest(self._latest_refresh, self._account.refresh_token, newest)
            and await self.keep_copy() >= 0  # the fleet lost it; this process holds it
        ):
            raise SpentRefreshToken()
        return self._latest_refresh

    async def keep_quietly(self) -> None:
        """`keep_copy`, from the keeper: nothing while Redis is away."""
        if self._link.available:
            with contextlib.suppress(BoardUnavailable):
                await self.keep_copy()

    async def keep_copy(self) -> int:
        """Put this process's copy of the chain's newest refresh token back, if the fleet has
        none (evicted, expired, a Redis restarted) and `spent:` names it as the newest: 1 when
        put back, 0 when the fleet has one, -1 when this copy is not the newest."""
        mine = self._latest_refresh
        if mine is None or mine == self._account.refresh_token:
            return -1
        keys = [self._refresh, self._spent]
        args: list[str | bytes | int] = [
            self._seed,
            self._seal.seal_text(self._refresh, mine.get_secret_value()),
            fingerprint(mine),
            self._refresh_ttl_ms,
        ]
        script = self._scripts.keep
        kept = int(await self._call(lambda r: script(keys=keys, args=args, client=r)))
        if kept == 1:
            log.warning(
                "the fleet's refresh token was missing from Redis: put back from this worker",
                extra=self._extra(),
            )
        return kept

    async def write_back(self, refresh_token: SecretStr) -> None:
        """A refresh token this process rotated while Redis was out is the only live one: put
        it where the fleet reads it."""
        if self._account.flow is not Flow.REFRESH_TOKEN:
            return
        key, seed = self._refresh, self._seed
        if refresh_token == self._latest_refresh:
            # Nothing rotated here meanwhile; but a Redis that came back empty (restarted
            # without persistence) would send the fleet back to the file's rotated-out token.
            if refresh_token == self._account.refresh_token:
                return
            if await self._call(lambda r: r.hexists(key, "value")):
                return
        value = self._seal.seal_text(key, refresh_token.get_secret_value())
        await self._call(lambda r: r.hset(key, mapping={"value": value, "seed": seed}))
        await self._call(lambda r: r.pexpire(key, self._refresh_ttl_ms))
        spent, newest = self._spent, fingerprint(refresh_token)
        await self._call(lambda r: r.hset(spent, seed, newest))
        self._latest_refresh = refresh_token
        log.warning(
            "refresh token rotated during the Redis outage written back", extra=self._extra()
        )

    # --- the grant -------------------------------------------------------------------------

    async def publish(
        self,
        holder: str,
        access_token: SecretStr,
        refresh_token: SecretStr | None,
        issued_at: float,
    ) -> AccessToken | None:
        """The new token (and a rotated refresh token) for the fleet, fenced by the lock."""
        seal = self._seal
        keys = [
            *(self._lock, self._token, self._gen, self._refresh, self._error, self._failures),
            self._spent,
        ]
        args: list[str | bytes | int] = [
            holder,
            seal.seal_text(self._token, access_token.get_secret_value()),
            seal.seal_text(self._refresh, refresh_token.get_secret_value())
            if refresh_token is not None
            else "",
            self._seed,
            _TOKEN_TTL_MS,
            self._refresh_ttl_ms,
            fingerprint(refresh_token),
        ]
        script: AsyncScript = self._scripts.store
        # Confirmed by a replica before anyone uses it (replicas.py): a rotated refresh token
        # lost in a failover leaves the fleet the spent one.
        generation = int(await self._durable(lambda r: script(keys=keys, args=args, client=r)))
        if generation < 0:
            return None
        if refresh_token is not None:
            # Only now is it the fleet's: had the write failed, the restore hook writes it back.
            self._latest_refresh = refresh_token
        return AccessToken(access_token, generation, issued_at, source=FLEET)

    def _extra(self) -> dict[str, str]:
        return {"account": self._account.name, "flow": self._account.flow.value}
