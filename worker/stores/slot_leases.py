"""The concurrency cap of each account, shared by the fleet through Redis: a semaphore whose
slots are leases, so a dead worker cannot leak them (`LocalSlots`, stores/slots.py, caps one
process)."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from worker.accounts import Account
from worker.stores.link import RedisLink, RedisUnavailable, as_text
from worker.stores.slots import LocalSlots
from worker.tasks import StopFlag, stop

# A dead worker's slots free within a lease; a living one renews the leases of its slots.
SLOT_LEASE_MS = 6_000
_RENEW_SECONDS = SLOT_LEASE_MS / 3000
# A slot no call of this process needs for this long goes back to the fleet.
_IDLE_SECONDS = 0.5
# A slot is handed from call to call inside this process for at most this long, then goes back
# to the fleet, so that other workers waiting for the cap get their turn.
_TURN_SECONDS = 1.0

# KEYS: the account's slot set; ARGV: lease ms, cap, members wanted. As many as the cap has
# room for are added; how many. Server time: no clock skew.
_TAKE_SLOTS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local room = tonumber(ARGV[2]) - redis.call('ZCARD', KEYS[1])
local n = math.min(room, #ARGV - 2)
if n <= 0 then return 0 end
for i = 1, n do
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[i + 2])
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return n
"""
# KEYS: the account's slot set; ARGV: lease ms, members held. Those whose lease ran out (or
# that are gone: Redis restarted) are not renewed but returned: they are no longer held.
_RENEW_SLOTS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lost = {}
for i = 2, #ARGV do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) > now then
    redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[i])
  else
    redis.call('ZREM', KEYS[1], ARGV[i])
    table.insert(lost, ARGV[i])
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return lost
"""


class _Lease:
    """One slot of the fleet's cap that this process holds (a member of the slot set)."""

    __slots__ = ("idle_since", "lost", "member", "taken")

    def __init__(self, member: str, taken: float) -> None:
        self.member = member
        self.taken = taken
        self.idle_since = taken
        self.lost = False


class _AccountLeases:
    """The fleet slots of one account held by this process, lent to its calls: a call takes an
    idle one without asking Redis; slots are taken from Redis in blocks (as many as calls are
    waiting), handed from a finishing call to a waiting one, and given back when idle for
    `_IDLE_SECONDS` or after `_TURN_SECONDS` of use."""

    def __init__(self, slots: FleetSlots, key: str, cap: int) -> None:
        self._slots = slots
        self.key = key
        self._cap = cap
        self.idle: list[_Lease] = []
        self.busy: set[_Lease] = set()
        self._waiters: deque[asyncio.Future[_Lease | None]] = deque()
        self._taker: asyncio.Task[None] | None = None
        self._reaper: asyncio.TimerHandle | None = None

    @property
    def held(self) -> list[_Lease]:
        return [*self.idle, *self.busy]

    async def acquire(self) -> _Lease | None:
        """A slot (None: Redis is out of reach, the process's own cap alone applies)."""
        if self.idle:
            lease = self.idle.pop()
            self.busy.add(lease)
            return lease
        waiter: asyncio.Future[_Lease | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        if self._taker is None:
            self._taker = asyncio.create_task(self._take(), name=f"slots:{self.key}")
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                granted = waiter.result()
                if granted is not None:
                    self.release(granted)  # granted as the call gave up: to the next one
            else:
                waiter.cancel()
            raise

    def release(self, lease: _Lease) -> None:
        self.busy.discard(lease)
        if lease.lost:
            return
        now = time.monotonic()
        if now - lease.taken < _TURN_SECONDS:
            while self._waiters:
                waiter = self._waiters.popleft()
                if not waiter.done():
                    self.busy.add(lease)
                    waiter.set_result(lease)
                    return
            lease.idle_since = now
            self.idle.append(lease)
            if self._reaper is None:
                loop = asyncio.get_running_loop()
                self._reaper = loop.call_later(_IDLE_SECONDS, self._reap)
            return
        # Its turn is over: back to the fleet; a call waiting here asks again, as any worker.
        self._slots.give_back(self.key, [lease.member])
        if self._waiters and self._taker is None:
            self._taker = asyncio.create_task(self._take(), name=f"slots:{self.key}")

    def _reap(self) -> None:
        self._reaper = None
        now = time.monotonic()
        stale = [lease for lease in self.idle if now - lease.idle_since >= _IDLE_SECONDS]
        if stale:
            self.idle = [lease for lease in self.idle if lease not in stale]
            self._slots.give_back(self.key, [lease.member for lease in stale])
        if self.idle:
            self._reaper = asyncio.get_running_loop().call_later(_IDLE_SECONDS, self._reap)

    def forget(self, members: set[str]) -> None:
        """Leases the fleet no longer counts as ours (expired, or Redis lost them)."""
        for lease in self.held:
            if lease.member in members:
                lease.lost = True
        self.idle = [lease for lease in self.idle if not lease.lost]
        self.busy = {lease for lease in self.busy if not lease.lost}

    def drop_idle(self) -> list[str]:
        members = [lease.member for lease in self.idle]
        self.idle = []
        return members

    async def _take(self) -> None:
        """Ask Redis for as many slots as calls are waiting, until none waits."""
        pause = 0.005
        try:
            while True:
                self._waiters = deque(w for w in self._waiters if not w.done())
                want = min(len(self._waiters), self._cap)
                if want == 0:
                    return
                try:
                    leases = await self._slots.take(self.key, self._cap, want)
                except RedisUnavailable:
                    while self._waiters:
                        waiter = self._waiters.popleft()
                        if not waiter.done():
                            waiter.set_result(None)
                    return
                for lease in leases:
                    self._give(lease)
                if leases:
                    pause = 0.005
                    continue
                await asyncio.sleep(random.uniform(pause / 2, pause))
                pause = min(pause * 2, 0.05)
        finally:
            self._taker = None

    def _give(self, lease: _Lease) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.busy.add(lease)
                waiter.set_result(lease)
                return
        self.idle.append(lease)
        if self._reaper is None:
            self._reaper = asyncio.get_running_loop().call_later(_IDLE_SECONDS, self._reap)


class FleetSlots:
    """`max_concurrency` for the whole fleet: a sorted set of holders scored by lease expiry.
    The process's own semaphore comes first; then a slot this process already holds, or a block
    of them taken from Redis at once (see `_AccountLeases`): Redis is asked when the process
    needs more slots than it holds, not around every call. Without Redis, the process's cap
    alone applies."""

    def __init__(self, link: RedisLink) -> None:
        self._link = link
        self._local = LocalSlots()
        self._take = link.script(_TAKE_SLOTS)
        self._renew = link.script(_RENEW_SLOTS)
        self._accounts: dict[str, _AccountLeases] = {}
        self._ids = itertools.count()
        self._owner = uuid.uuid4().hex[:16]
        self._renewer: asyncio.Task[None] | None = None
        self._renewing = StopFlag()
        self._giving: set[asyncio.Task[None]] = set()

    @asynccontextmanager
    async def hold(self, account: Account) -> AsyncIterator[None]:
        async with self._local.hold(account):
            leases = self._accounts.get(account.name)
            if leases is None:
                key = self._link.key("slots", account.name)
                leases = self._accounts[account.name] = _AccountLeases(
                    self, key, account.max_concurrency
                )
            lease = await leases.acquire()
            if lease is not None and self._renewer is None:
                self._renewer = asyncio.create_task(self._renew_leases(), name="slot-leases")
            try:
                yield
            finally:
                if lease is not None:  # if Redis is gone, the lease frees it
                    leases.release(lease)

    async def take(self, key: str, cap: int, want: int) -> list[_Lease]:
        members = [f"{self._owner}:{next(self._ids)}" for _ in range(want)]
        args: list[str | int] = [SLOT_LEASE_MS, cap, *members]
        taken = int(await self._link.call(lambda r: self._take(keys=[key], args=args, client=r)))
        now = time.monotonic()
        return [_Lease(member, now) for member in members[:taken]]

    def give_back(self, key: str, members: list[str]) -> None:
        task = asyncio.create_task(self._zrem(key, members), name="slot-give-back")
        self._giving.add(task)
        task.add_done_callback(self._giving.discard)

    async def _zrem(self, key: str, members: list[str]) -> None:
        await self._link.attempt(lambda r: r.zrem(key, *members))

    async def _renew_leases(self) -> None:
        while self._renewing.running:
            await asyncio.sleep(_RENEW_SECONDS)
            for leases in list(self._accounts.values()):
                if not self._link.available:
                    leases.drop_idle()  # they may lapse meanwhile: take fresh ones later
                    continue
                members = [lease.member for lease in leases.held]
                if members:
                    await self._renew_one(leases, members)

    async def _renew_one(self, leases: _AccountLeases, members: list[str]) -> None:
        key = leases.key
        args: list[str | int] = [SLOT_LEASE_MS, *members]
        try:
            lost = await self._link.call(lambda r: self._renew(keys=[key], args=args, client=r))
        except RedisUnavailable:
            return
        if lost:
            leases.forget({as_text(m) or "" for m in lost})

    async def close(self) -> None:
        await stop(self._renewer, self._renewing)
        for leases in self._accounts.values():
            members = leases.drop_idle()
            if members:
                self.give_back(leases.key, members)
        if self._giving:
            await asyncio.wait(set(self._giving), timeout=1.0)
