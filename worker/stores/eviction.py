"""At start: can the fleet's Redis evict its keys? (`maxmemory-policy`, read with CONFIG GET.)

An evicting policy takes keys the fleet cannot lose: a rotated refresh token (`refresh:*`, kept
with a TTL, rarely touched: first in line under volatile-lru; then a restarting worker has only
the accounts file's token, which rotation has spent), insert markers and job-id bindings (an
insert POSTed twice). One tenant's large results can push another tenant's keys out. So a worker
refuses to start on `allkeys-*` or `volatile-*` (ConfigError naming the policy) unless
SFWORKER_REDIS_ALLOW_EVICTION=true, which makes it a warning. `noeviction` is the policy to use:
a full Redis then refuses writes, which the worker treats as an outage (its in-process fallback),
never as a lost key.

A managed Redis may refuse CONFIG (renamed, or an ACL without it): the worker warns and starts.
A Redis that does not answer at start is checked when it first does (a warning then: a running
worker is not stopped). Persistence is read too: without AOF a restart of Redis forgets which
refresh tokens rotation spent (docs/configuration.md, "Refresh tokens and Redis").
"""

from __future__ import annotations

import asyncio
import logging

from redis.exceptions import RedisError, ResponseError

from worker.accounts import ConfigError
from worker.stores.link import RedisLink, RedisUnavailable, as_text

log = logging.getLogger(__name__)

SAFE_POLICY = "noeviction"
ALLOW = "SFWORKER_REDIS_ALLOW_EVICTION"


def evicts(policy: str) -> bool:
    """The policy may remove keys the worker wrote (every policy but noeviction does, once
    `maxmemory` is reached; maxmemory can be set at any time without the workers knowing)."""
    return policy.startswith(("allkeys-", "volatile-"))


class EvictionCheck:
    """Reads the policy once, at start or at the first answer after it."""

    def __init__(self, link: RedisLink, *, allow: bool, rotating: bool) -> None:
        self._link = link
        self._allow = allow
        self._rotating = rotating  # some account refreshes with a refresh token
        self._done = False

    async def at_start(self) -> None:
        """ConfigError when Redis evicts and that is not allowed."""
        if not self._link.available:
            log.warning(
                "Redis does not answer at start: its maxmemory-policy is checked when it does",
                extra={"redis": self._link.where},
            )
            self._link.on_restore(self._later)
            return
        await self._check(refuse=True)

    async def _later(self) -> None:
        if not self._done:
            await self._check(refuse=False)

    async def _check(self, *, refuse: bool) -> None:
        try:
            policy = await self._config("maxmemory-policy")
            appendonly = await self._config("appendonly")
        except ResponseError as exc:
            self._done = True
            log.warning(
                "could not read Redis's maxmemory-policy (CONFIG refused: a managed Redis?); "
                f"make sure it is {SAFE_POLICY}: an evicting Redis loses rotated refresh "
                "tokens, insert markers and job-id bindings",
                extra={"redis": self._link.where, "error": str(exc)[:200]},
            )
            return
        except RedisUnavailable:
            return  # checked at the next restore
        self._done = True
        if policy is not None and evicts(policy):
            message = (
                f"Redis at {self._link.where} has maxmemory-policy {policy}: it can evict the "
                "fleet's rotated refresh tokens (then the accounts file's spent one is all a "
                "worker has, and the account needs `sfworker accounts authorize`), insert "
                f"markers and job-id bindings. Set maxmemory-policy {SAFE_POLICY} (full, Redis "
                "refuses writes and the workers fall back to memory), or set "
                f"{ALLOW}=true to start anyway"
            )
            if refuse and not self._allow:
                raise ConfigError(message)
            level = logging.WARNING if self._allow else logging.ERROR
            log.log(level, message, extra={"redis": self._link.where, "policy": policy})
        if self._rotating and appendonly == "no":
            log.warning(
                "Redis keeps no append-only file (appendonly no): if it restarts, the fleet "
                "forgets its rotated refresh tokens and which accounts-file tokens rotation "
                "spent; with rotating refresh tokens use appendonly yes, appendfsync everysec "
                "or always",
                extra={"redis": self._link.where},
            )

    async def _config(self, name: str) -> str | None:
        try:
            async with asyncio.timeout(self._link.timeout * 2):
                reply = await self._link.client.config_get(name)
        except ResponseError:
            raise
        except (RedisError, TimeoutError, OSError):
            raise RedisUnavailable(self._link.where) from None
        return as_text(reply.get(name)) if isinstance(reply, dict) else None
