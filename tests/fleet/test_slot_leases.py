"""Issue 18, point 1: fleet slots are leased in blocks, off the per-call path, and the fleet-wide
cap still holds: two processes' slot pools (two FleetSlots on one Redis prefix) never have more
calls running together than the cap, both get their turn, and idle slots go back to the fleet."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from tests.support.waiting import wait_until
from worker.accounts import Account, Flow
from worker.observability.metrics import Metrics
from worker.stores.link import RedisLink
from worker.stores.slot_leases import FleetSlots

CAP = 4


def account() -> Account:
    return Account(
        name="main",
        instance_url="https://example.my.salesforce.com",
        token_url="https://login.salesforce.com/services/oauth2/token",
        flow=Flow.CLIENT_CREDENTIALS,
        client_id="id",
        max_concurrency=CAP,
    )


async def test_two_pools_share_the_cap_and_give_idle_slots_back(
    redis_url: str, redis_prefix: str
) -> None:
    links = [RedisLink(redis_url, redis_prefix, Metrics()) for _ in range(2)]
    for link in links:
        await link.start()
    pools = [FleetSlots(link) for link in links]
    acme = account()
    running = 0
    most = 0
    served = [0, 0]

    async def call(which: int) -> None:
        nonlocal running, most
        async with pools[which].hold(acme):
            running += 1
            most = max(most, running)
            await asyncio.sleep(0.01)
            running -= 1
            served[which] += 1

    try:
        await asyncio.gather(*(call(i % 2) for i in range(200)))
        assert most == CAP  # the cap was used, never passed
        assert served == [100, 100]
        key = links[0].key("slots", acme.name)
        plain = aioredis.from_url(redis_url)

        async def all_given_back() -> bool:
            return int(await plain.zcard(key)) == 0

        await wait_until(all_given_back, 5, "idle slots handed back to the fleet")
        await plain.aclose()
    finally:
        for pool in pools:
            await pool.close()
        for link in links:
            await link.close()
