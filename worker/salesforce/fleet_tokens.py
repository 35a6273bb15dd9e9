"""The token manager of a fleet: one token request per account per expiry, whatever the number
of worker processes, with the state in Redis.

Keys (under SFWORKER_REDIS_PREFIX; <who> is the account's name and `Account.scope`, a hash of
its org, app, user and flow): `token:<who>` (the current access token, sealed, and its fleet
generation), `token-gen:<who>` (the generation counter), `token-lock:<who>` (who is refreshing,
with a lease), `token-error:<who>` (the last refusal, kept for the backoff), `refresh:<who>` (the
newest refresh token, sealed, kept SFWORKER_REFRESH_TOKEN_TTL_DAYS after its last rotation, and a
fingerprint of the accounts file's one). Tokens are sealed by the link's `Seal`
(stores/sealing.py); one that does not open reads as absent.

- A process keeps the token it read; only when it has none, or a 401 reported the *current* one
  dead (compare-and-invalidate in Redis: a 401 on an older token changes nothing), does it look
  in Redis again. Inside a process, one task does that for all the jobs waiting.
- One worker takes the lock (`SET NX PX lease`, released only by its holder through a script
  that compares the holder's token) and calls the token endpoint; the others poll Redis every
  50 ms for the new token and never call Salesforce. The holder renews the lease while its
  request runs; a holder that dies leaves a lock whose lease runs out within one lease, and the
  next worker then refreshes.
- Rotation: the new refresh token is written in the same script as the access token, before the
  lock is released, so nobody can refresh with the rotated-out one. The accounts file's refresh
  token is only the start: a *different* one in the file (an admin authorized again) wins.
- When Redis is unreachable, the process's own token manager takes over (seeded with the
  newest refresh token seen); a refresh token rotated meanwhile is written back on return.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
from pydantic import SecretStr

from worker.accounts import Account, Flow
from worker.contract import ErrorCode
from worker.observability.metrics import Metrics
from worker.salesforce.oauth import AuthError, Grant
from worker.salesforce.tokens import (
    AccessToken,
    AccountTokens,
    Backoff,
    MemoryTokenManager,
    TokenFetcher,
    next_generation,
)
from worker.stores.link import RedisLink, RedisUnavailable, as_text
from worker.stores.sealing import MAGIC
from worker.tasks import Loop, stop

log = logging.getLogger(__name__)

FLEET = "fleet"
_POLL_SECONDS = 0.05
_TOKEN_TTL_MS = 12 * 3600 * 1000  # a forgotten token goes eventually; a live one is rewritten

# KEYS: lock, token, gen, refresh, error, failures
# ARGV: holder, access token (sealed), rotated refresh token (sealed) or "", file fingerprint,
# token ttl ms, refresh token ttl ms
_STORE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[4], 'value', ARGV[3], 'seed', ARGV[4])
  redis.call('PEXPIRE', KEYS[4], ARGV[6])
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
# KEYS: refresh, legacy refresh; ARGV: sealed value, seed, ttl ms
_CARRY = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'value', ARGV[1], 'seed', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
redis.call('DEL', KEYS[2])
return 0
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


def fingerprint(secret: SecretStr | None) -> str:
    if secret is None:
        return ""
    return hashlib.sha256(secret.get_secret_value().encode()).hexdigest()[:24]


def _error_payload(exc: AuthError, failures: int) -> bytes:
    return orjson.dumps(
        {
            "message": exc.message,
            "code": exc.code.value,
            "retryable": exc.retryable,
            "error": exc.error,
            "description": exc.description,
            "http_status": exc.http_status,
            "failures": failures,
        }
    )


def _error_from(raw: Any, wait_ms: int) -> AuthError:
    data: dict[str, Any] = orjson.loads(raw)
    return AuthError(
        f"{data.get('message', 'token request failed')} (token requests paused for "
        f"{max(0, wait_ms) / 1000:.1f} s after {data.get('failures', 1)} failure(s), fleet-wide)",
        code=ErrorCode(data.get("code", ErrorCode.AUTH_FAILED.value)),
        retryable=bool(data.get("retryable")),
        error=str(data.get("error") or ""),
        description=str(data.get("description") or ""),
        http_status=data.get("http_status"),
    )


class FleetAccountTokens:
    """Token state of one account in this process, backed by Redis."""

    def __init__(
        self,
        account: Account,
        link: RedisLink,
        fetch: TokenFetcher,
        local: AccountTokens,
        metrics: Metrics,
        backoff: Backoff,
        *,
        lease: float,
        request_timeout: float,
        clock: Callable[[], float] = time.monotonic,
        refresh_ttl: float = 30 * 86400.0,
    ) -> None:
        self.account = account
        self._refresh_ttl_ms = int(refresh_ttl * 1000)
        self._link = link
        self._fetch = fetch
        self._local = local
        self._metrics = metrics
        self._backoff = backoff
        self._lease_ms = int(lease * 1000)
        self._request_timeout = request_timeout
        self._clock = clock
        self._token: AccessToken | None = None
        self._dead_generation: int | None = None
        self._inflight: asyncio.Task[AccessToken] | None = None
        self._latest_refresh: SecretStr | None = account.refresh_token
        self._seed = fingerprint(account.refresh_token)
        who = (account.name, account.scope)
        self._keys = {
            "lock": link.key("token-lock", *who),
            "token": link.key("token", *who),
            "gen": link.key("token-gen", *who),
            "refresh": link.key("refresh", *who),
            "error": link.key("token-error", *who),
            "failures": link.key("token-failures", *who),
        }
        self._seal = link.seal
        self._store = link.script(_STORE)
        self._release = link.script(_RELEASE)
        self._renew = link.script(_RENEW)
        self._invalidate = link.script(_INVALIDATE)
        self._carry = link.script(_CARRY)

    # --- what the client calls -------------------------------------------------------------

    @property
    def held(self) -> AccessToken | None:
        """The fleet token this process holds now (None: `get` decides)."""
        return self._token

    async def get(self) -> AccessToken:
        if self._token is not None:
            return self._token
        if not self._link.available and not self._rotates:
            return await self._local_get()
        if self._inflight is not None:
            self._metrics.token_waits.labels(self.account.name).inc()
        else:
            self._inflight = asyncio.create_task(
                self._acquire(), name=f"fleet-token:{self.account.name}"
            )
            self._inflight.add_done_callback(self._done)
        # shield: a job that gives up (its deadline) must not cancel the shared work.
        return await asyncio.shield(self._inflight)

    async def invalidate(self, token: AccessToken) -> bool:
        if token.source != FLEET:
            return self._local.invalidate(token)
        dropped = False
        self._local.invalidate(token)  # it may hold this token for the fallback
        if self._token is not None and self._token.same_as(token):
            self._token = None
            dropped = True
            self._metrics.token_invalidations.labels(self.account.name).inc()
        # Generations only grow: the newest one a 401 reported dead covers every older one.
        self._dead_generation = max(self._dead_generation or 0, token.generation)
        key, generation = self._keys["token"], str(token.generation)
        await self._link.attempt(
            lambda r: self._invalidate(keys=[key], args=[generation], client=r)
        )
        return dropped

    def _done(self, task: asyncio.Task[AccessToken]) -> None:
        self._inflight = None
        if not task.cancelled():
            task.exception()

    async def refresh_now(self) -> None:
        """Make one token request under the fleet's lock, with the fleet's newest refresh token,
        and store what it returns for the fleet (`sfworker accounts check`: a check must never
        spend a refresh token behind the workers' back)."""
        give_up = self._clock() + self._lease_ms / 1000 + self._request_timeout + 1.0
        while True:
            holder = uuid.uuid4().hex
            if await self._take_lock(holder):
                try:
                    await self._refresh(holder)
                    return
                finally:
                    await self._release_lock(holder)
            if self._clock() > give_up:
                raise AuthError(
                    "another worker's token request did not finish in time",
                    code=ErrorCode.SALESFORCE_UNAVAILABLE,
                    retryable=True,
                )
            await asyncio.sleep(_POLL_SECONDS)

    # --- in-process fallback ---------------------------------------------------------------

    async def _local_get(self) -> AccessToken:
        return await self._local.get()

    async def write_back(self) -> None:
        """After an outage: a refresh token the local manager rotated meanwhile is the only live
        one; put it where the fleet reads it."""
        rotated = self._local.refresh_token
        if rotated is None or self.account.flow is not Flow.REFRESH_TOKEN:
            return
        key, seed = self._keys["refresh"], self._seed
        value = self._seal.seal_text(key, rotated.get_secret_value())
        if rotated == self._latest_refresh:
            # Nothing rotated here meanwhile; but a Redis that came back empty (restarted
            # without persistence) would send the fleet back to the file's rotated-out token.
            if rotated == self.account.refresh_token:
                return
            if await self._link.call(lambda r: r.hexists(key, "value")):
                return
        await self._link.call(lambda r: r.hset(key, mapping={"value": value, "seed": seed}))
        await self._link.call(lambda r: r.pexpire(key, self._refresh_ttl_ms))
        self._latest_refresh = rotated
        log.warning(
            "refresh token rotated during the Redis outage written back",
            extra={"account": self.account.name},
        )

    # --- the fleet protocol ----------------------------------------------------------------

    @property
    def _rotates(self) -> bool:
        """The refresh token rotates (this process has seen it change)."""
        return (
            self.account.flow is Flow.REFRESH_TOKEN
            and self._local.refresh_token != self.account.refresh_token
        )

    async def _acquire(self) -> AccessToken:
        try:
            return await self._acquire_fleet()
        except RedisUnavailable:
            if not self._rotates:
                return await self._local_get()
        # With rotation, a worker cut off from Redis does not refresh alone: the others may
        # spend the same refresh token (one is refused) or have rotated it already (a replay,
        # and Salesforce revokes the chain for the whole fleet). It uses the token it holds,
        # or waits for Redis (the jobs' deadlines bound the wait).
        held = self._local.token
        if held is not None:
            return held
        await self._link.wait_available(self._lease_ms / 1000 + self._request_timeout + 1.0)
        try:
            return await self._acquire_fleet()
        except RedisUnavailable:
            raise AuthError(
                "no access token: Redis is out of reach and the refresh token rotates, so "
                "this worker does not refresh it alone",
                code=ErrorCode.SALESFORCE_UNAVAILABLE,
                retryable=True,
            ) from None

    async def _acquire_fleet(self) -> AccessToken:
        if self.account.flow is Flow.REFRESH_TOKEN:
            # A refresh this process started alone (Redis out of reach) may still be in flight
            # and rotate the refresh token: let it end and give its result to the fleet first,
            # or the fleet would refresh concurrently with it, or replay what it rotated out.
            await self._local.settled()
            await self.write_back()
        give_up = self._clock() + self._lease_ms / 1000 + self._request_timeout + 1.0
        waited = False
        while True:
            token = await self._read_shared()
            if token is not None:
                return token
            await self._raise_shared_error()
            holder = uuid.uuid4().hex
            if await self._take_lock(holder):
                try:
                    token = await self._read_shared()  # refreshed while we asked for the lock?
                    if token is not None:
                        return token
                    return await self._refresh(holder)
                finally:
                    await self._release_lock(holder)
            if not waited:
                waited = True
                log.debug("waiting for another worker's token request", extra=self._extra())
            if self._clock() > give_up:
                raise AuthError(
                    "no access token: another worker's token request did not finish in time",
                    code=ErrorCode.SALESFORCE_UNAVAILABLE,
                    retryable=True,
                )
            await asyncio.sleep(_POLL_SECONDS)

    async def _take_lock(self, holder: str) -> bool:
        lock, lease = self._keys["lock"], self._lease_ms
        return bool(await self._link.call(lambda r: r.set(lock, holder, nx=True, px=lease)))

    async def _release_lock(self, holder: str) -> None:
        """Only the holder's own lock is deleted; if Redis is gone, the lease ends it."""
        lock = self._keys["lock"]
        await self._link.attempt(lambda r: self._release(keys=[lock], args=[holder], client=r))

    async def _read_shared(self) -> AccessToken | None:
        key = self._keys["token"]
        data = await self._link.call(lambda r: r.hgetall(key))
        value, gen = self._seal.open_text(key, data.get(b"value")), as_text(data.get(b"gen"))
        if not value or not gen:
            return None  # none, or one that does not open: this worker asks for one
        generation = int(gen)
        if self._dead_generation is not None and generation <= self._dead_generation:
            # A 401 said so but our compare-and-invalidate did not reach Redis: do it now.
            await self._link.call(lambda r: self._invalidate(keys=[key], args=[gen], client=r))
            return None
        token = AccessToken(SecretStr(value), generation, time.time(), source=FLEET)
        self._token = token
        self._local.adopt(token, None)
        if self.account.flow is Flow.REFRESH_TOKEN:
            # Keep the newest refresh token at hand, should Redis go away later.
            with contextlib.suppress(SealedRefreshToken):
                await self._refresh_token_now()
        return token

    async def _raise_shared_error(self) -> None:
        key = self._keys["error"]
        raw = await self._link.call(lambda r: r.get(key))
        if raw is None:
            return
        wait_ms = await self._link.call(lambda r: r.pttl(key))
        raise _error_from(raw, int(wait_ms))

    async def _refresh_token_now(self) -> SecretStr | None:
        """The refresh token to use: the fleet's newest, unless the accounts file now holds a
        different one than the one the fleet started from."""
        if self.account.flow is not Flow.REFRESH_TOKEN:
            return None
        key = self._keys["refresh"]
        data = await self._link.call(lambda r: r.hgetall(key))
        if not data:
            data = await self._carry_over()
        raw, seed = data.get(b"value"), as_text(data.get(b"seed"))
        value = self._seal.open_text(key, raw)
        if raw is not None and value is None and seed == self._seed:
            # The fleet rotated the file's token into one this worker cannot read: the file's
            # is spent, and replaying it would make Salesforce revoke the fleet's.
            raise SealedRefreshToken()
        if value and seed == self._seed:
            self._latest_refresh = SecretStr(value)
        else:
            self._latest_refresh = self.account.refresh_token
        self._local.adopt(None, self._latest_refresh)
        return self._latest_refresh

    async def _carry_over(self) -> dict[Any, Any]:
        """A refresh token rotated by a version before sealing, under the key named by account
        alone and in plain text: moved (sealed) to this account's key, unless the fleet wrote
        one there meanwhile. Without it, an upgrade would replay the file's spent token."""
        legacy, key = self._link.key("refresh", self.account.name), self._keys["refresh"]
        data = await self._link.call(lambda r: r.hgetall(legacy))
        value, seed = data.get(b"value"), data.get(b"seed")
        if not isinstance(value, bytes) or not isinstance(seed, bytes) or value.startswith(MAGIC):
            return {}
        args: list[bytes | int] = [self._seal.seal(key, value), seed, self._refresh_ttl_ms]
        await self._link.call(lambda r: self._carry(keys=[key, legacy], args=args, client=r))
        log.warning("refresh token of the previous version carried over", extra=self._extra())
        carried: dict[Any, Any] = await self._link.call(lambda r: r.hgetall(key))
        return carried

    async def _keep_lock(self, holder: str, loop: Loop) -> None:
        """Renew the lock's lease while this holder's token request runs: a live holder keeps
        the lock however long the request takes; a dead one loses it within one lease."""
        lock, lease = self._keys["lock"], self._lease_ms
        while loop.running:
            await asyncio.sleep(lease / 3000)
            await self._link.attempt(
                lambda r: self._renew(keys=[lock], args=[holder, lease], client=r)
            )

    async def _refresh(self, holder: str) -> AccessToken:
        refresh_token = await self._refresh_token_now()
        flow = self.account.flow.value
        started = time.perf_counter()
        keeping = Loop()
        keeper = asyncio.create_task(self._keep_lock(holder, keeping), name="token-lock-lease")
        try:
            try:
                async with asyncio.timeout(self._request_timeout):
                    grant = await self._fetch(self.account, refresh_token)
            except TimeoutError:
                raise AuthError(
                    f"token endpoint did not answer within {self._request_timeout:.1f} s",
                    code=ErrorCode.SALESFORCE_UNAVAILABLE,
                    retryable=True,
                ) from None
        except AuthError as exc:
            await self._record_failure(exc)
            raise
        finally:
            await stop(keeper, keeping)
            self._metrics.token_request_duration.labels(self.account.name).observe(
                time.perf_counter() - started
            )
        self._metrics.token_requests.labels(self.account.name, flow, "ok").inc()
        return await self._publish(holder, grant)

    async def _record_failure(self, exc: AuthError) -> None:
        flow = self.account.flow.value
        self._metrics.token_requests.labels(self.account.name, flow, "error").inc()
        failures_key, error_key = self._keys["failures"], self._keys["error"]
        try:
            failures = int(await self._link.call(lambda r: r.incr(failures_key)))
            delay = self._backoff.delay(failures)
            ttl = int(self._backoff.maximum * 4000)
            payload = _error_payload(exc, failures)
            await self._link.call(lambda r: r.pexpire(failures_key, ttl))
            await self._link.call(lambda r: r.set(error_key, payload, px=int(delay * 1000)))
        except RedisUnavailable:
            delay = self._backoff.initial
        log.warning(
            "token request failed",
            extra={**self._extra(), "error": exc.message, "retry_in_s": round(delay, 2)},
        )

    async def _publish(self, holder: str, grant: Grant) -> AccessToken:
        """Write the new token (and a rotated refresh token) for the fleet, fenced by the lock."""
        rotated = grant.refresh_token
        k = self._keys
        keys = [k["lock"], k["token"], k["gen"], k["refresh"], k["error"], k["failures"]]
        seal = self._seal
        args: list[str | bytes | int] = [
            holder,
            seal.seal_text(k["token"], grant.access_token.get_secret_value()),
            seal.seal_text(k["refresh"], rotated.get_secret_value()) if rotated is not None else "",
            self._seed,
            _TOKEN_TTL_MS,
            self._refresh_ttl_ms,
        ]
        try:
            generation = int(
                await self._link.call(lambda r: self._store(keys=keys, args=args, client=r))
            )
        except RedisUnavailable:
            # Only this process knows the new tokens now: keep them for the fallback, and the
            # restore hook writes a rotated refresh token back.
            local = AccessToken(grant.access_token, next_generation(), grant.issued_at)
            self._local.adopt(local, rotated)
            self._token = None
            return local
        if generation < 0:
            log.error(
                "token lock lost during the token request (its lease could not be renewed: Redis "
                "too slow, or this process stalled); check Redis or raise "
                "SFWORKER_TOKEN_LOCK_LEASE_SECONDS",
                extra=self._extra(),
            )
            token = AccessToken(grant.access_token, next_generation(), grant.issued_at)
            self._local.adopt(token, rotated)
            return token
        if rotated is not None:
            # Only now is it the fleet's: had the write failed, the restore hook writes it back.
            self._latest_refresh = rotated
        token = AccessToken(grant.access_token, generation, grant.issued_at, source=FLEET)
        self._token = token
        self._local.adopt(token, rotated)
        log.info("access token obtained for the fleet", extra=self._extra())
        return token

    def _extra(self) -> dict[str, str]:
        return {"account": self.account.name, "flow": self.account.flow.value}


class RedisTokenManager:
    """TokenManager whose refreshes are single-flight across every process sharing Redis."""

    def __init__(
        self,
        link: RedisLink,
        fetch: TokenFetcher,
        metrics: Metrics,
        backoff: Backoff | None = None,
        *,
        lease: float = 5.0,
        request_timeout: float = 5.0,
        refresh_ttl: float = 30 * 86400.0,
    ) -> None:
        self._link = link
        self._refresh_ttl = refresh_ttl
        self._fetch = fetch
        self._metrics = metrics
        self._backoff = backoff or Backoff()
        self._lease = lease
        self._request_timeout = request_timeout
        self._local = MemoryTokenManager(
            fetch, metrics, self._backoff, request_timeout=request_timeout
        )
        self._accounts: dict[str, FleetAccountTokens] = {}
        link.on_restore(self._write_back)

    def state(self, account: Account) -> FleetAccountTokens:
        state = self._accounts.get(account.name)
        if state is None:
            state = FleetAccountTokens(
                account,
                self._link,
                self._fetch,
                self._local.state(account),
                self._metrics,
                self._backoff,
                lease=self._lease,
                request_timeout=self._request_timeout,
                refresh_ttl=self._refresh_ttl,
            )
            self._accounts[account.name] = state
        return state

    async def get(self, account: Account) -> AccessToken:
        return await self.state(account).get()

    async def invalidate(self, account: Account, token: AccessToken) -> bool:
        return await self.state(account).invalidate(token)

    def cached(self, account: Account) -> AccessToken | None:
        state = self._accounts.get(account.name)
        return state.held if state is not None else None

    async def _write_back(self) -> None:
        for state in self._accounts.values():
            await state.write_back()

    async def close(self) -> None:
        tasks = [s._inflight for s in self._accounts.values() if s._inflight is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._local.close()
