"""The fleet's memory of which accounts-file refresh tokens rotation spent, so that none is ever
sent again (Salesforce answers a replayed refresh token by revoking the whole chain: every
worker's token dies and every job is AUTH_FAILED until an admin authorizes again).

`spent:<who>` is a hash without a TTL (not evicted under `noeviction`, nor under volatile-*
policies, which evict only keys with one): field the fingerprint of an accounts-file token
(`seed_of`), value the fingerprint of the newest refresh token its chain rotated into. It is
written in the same script as the rotated token itself (`refresh:<who>`, which has a TTL and may
be lost: evicted, expired, or a Redis restarted without its data).

When `refresh:<who>` is gone and the file's token is spent, a worker holding the newest token
(its fingerprint is the one `spent:` names) puts it back (`KEEP`, from `RefreshKeeper`, every
KEEP_EVERY_SECONDS); a worker without it waits for that copy and never sends the file's token
(tokens.py: `SpentFileToken`, then AUTH_FAILED naming `sfworker accounts authorize`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable

from pydantic import SecretStr

from worker.tasks import StopFlag, stop

log = logging.getLogger(__name__)

KEEP_EVERY_SECONDS = 2.0

# KEYS: refresh, spent; ARGV: file seed, newest refresh token (sealed), its fingerprint, ttl ms.
# Put this process's copy back where the fleet reads it, only if the fleet has none and the copy
# is the chain's newest (never an older one: that would be a replay).
KEEP = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[3] then return -1 end
redis.call('HSET', KEYS[1], 'value', ARGV[2], 'seed', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""


def fingerprint(secret: SecretStr | None) -> str:
    """A refresh token's fingerprint: 24 hex digits of its SHA-256 (`seed_of` of the accounts
    file's token is this too)."""
    if secret is None:
        return ""
    return hashlib.sha256(secret.get_secret_value().encode()).hexdigest()[:24]


def holds_newest(mine: SecretStr | None, file_token: SecretStr | None, newest: str | None) -> bool:
    """This process's copy is the chain's newest refresh token (and not the file's)."""
    if mine is None or newest is None or mine == file_token:
        return False
    return fingerprint(mine) == newest


Keep = Callable[[], Awaitable[None]]  # one account's keep_quietly


class RefreshKeeper:
    """One task per worker process: every KEEP_EVERY_SECONDS, each account board puts its copy
    of the newest refresh token back if the fleet lost it (`RedisTokenBoard.keep_quietly`)."""

    def __init__(self, every: float = KEEP_EVERY_SECONDS) -> None:
        self._every = every
        self._keeps: list[Keep] = []
        self._task: asyncio.Task[None] | None = None
        self._running = StopFlag()

    def add(self, keep: Keep) -> None:
        self._keeps.append(keep)
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="refresh-token-keeper")

    async def _run(self) -> None:
        while self._running.running:
            await asyncio.sleep(self._every)
            for keep in list(self._keeps):
                try:
                    await keep()
                except Exception:
                    log.exception("putting the fleet's refresh token back failed")

    async def close(self) -> None:
        if self._task is not None:
            await stop(self._task, self._running)
            self._task = None
