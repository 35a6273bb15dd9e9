"""Rotation and Redis outages: the newest refresh token is never lost to the fleet. A Redis that
comes back empty (restarted without persistence) or that missed the write of a rotated refresh
token (it stopped answering during the token request) gets the process's newest one back, so
nobody replays a rotated-out token (Salesforce would revoke the whole chain)."""

from __future__ import annotations

import os
import signal

import pytest
from sfsim.testing import (
    DEFAULT_CLIENT_ID,
    DEFAULT_REFRESH_TOKEN,
)

from tests.fleet.helpers import Fleet, searches
from tests.support.metrics import metric
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_until
from tests.support.workers import WorkerProcess
from worker.settings import Settings

pytestmark = pytest.mark.slow


async def _rotating_settings(fleet: Fleet, private_redis: RedisServer) -> Settings:
    await fleet.rotating_org()
    return fleet.configure(
        flow="refresh_token",
        accounts="rotating.toml",
        redis_url=private_redis.url,
        redis_prefix="sfworker-rotation:",
        redis_retry_seconds=0.5,
    )


async def _rotating_worker(
    fleet: Fleet, private_redis: RedisServer, *, patient: bool = False
) -> WorkerProcess:
    """`patient`: a token request may be held by the test for long (its timeout 120 s)."""
    rotating = await _rotating_settings(fleet, private_redis)
    if patient:
        rotating = rotating.model_copy(update={"token_timeout_seconds": 120})
    worker: WorkerProcess = fleet.spawn(rotating)
    await worker.wait_ready()
    return worker


async def _fallback(worker: WorkerProcess, value: float) -> None:
    async def reads() -> bool:
        return metric(await worker.metrics(), "sfworker_redis_fallback") == value

    await wait_until(reads, 15, f"sfworker_redis_fallback = {value}")


async def test_redis_restarted_empty_does_not_bring_back_the_rotated_out_token(
    fleet: Fleet,
    private_redis: RedisServer,
) -> None:
    worker = await _rotating_worker(fleet, private_redis)
    assert await fleet.run_all(searches("before", 5)) == ["ok"] * 5
    assert (await fleet.simulator.refresh_tokens(DEFAULT_CLIENT_ID)) != [DEFAULT_REFRESH_TOKEN]

    private_redis.kill()
    assert await fleet.run_all(searches("during", 5)) == ["ok"] * 5  # notices the outage
    await _fallback(worker, 1.0)
    await private_redis.start()  # same port, empty
    await _fallback(worker, 0.0)

    await fleet.simulator.expire_sessions()
    await fleet.simulator.reset_counters()
    assert await fleet.run_all(searches("after", 5)) == ["ok"] * 5
    counters = await fleet.simulator.counters()
    assert counters["token_requests"] == {"refresh_token": 1}
    assert counters["oauth_events"] == {}  # no replay, no revoked chain


async def test_a_rotated_token_whose_write_missed_redis_is_written_back(
    fleet: Fleet,
    private_redis: RedisServer,
) -> None:
    worker = await _rotating_worker(fleet, private_redis, patient=True)
    assert await fleet.run_all(searches("before", 5)) == ["ok"] * 5

    # Redis stops answering (its data kept) while the token request is in flight: the new
    # access and refresh tokens cannot be stored for the fleet.
    await fleet.simulator.hold("token", route="token")
    await fleet.simulator.expire_sessions()
    await fleet.simulator.reset_counters()
    rotating = searches("rotating", 1)
    await fleet.jobs.publish(rotating[0])
    await fleet.simulator.wait_held("token")
    assert private_redis.proc is not None
    os.kill(private_redis.proc.pid, signal.SIGSTOP)
    try:
        await _fallback(worker, 1.0)
        spent = await fleet.simulator.refresh_tokens(DEFAULT_CLIENT_ID)
        await fleet.simulator.release("token")  # rotated now, with Redis out of reach
        assert await fleet.answers(rotating) == ["ok"]
        assert await fleet.simulator.refresh_tokens(DEFAULT_CLIENT_ID) != spent
    finally:
        os.kill(private_redis.proc.pid, signal.SIGCONT)
    await _fallback(worker, 0.0)
    settled = await fleet.run_all(searches("settle", 3))
    assert settled == ["ok"] * 3, [r["error"] for r in fleet.jobs.results[-3:]]

    await fleet.simulator.set_latency(0)
    await fleet.simulator.expire_sessions()
    await fleet.simulator.reset_counters()
    assert await fleet.run_all(searches("after", 5)) == ["ok"] * 5
    counters = await fleet.simulator.counters()
    assert counters["oauth_events"] == {}  # the refresh token Redis had was rotated out
    assert counters["token_requests"] == {"refresh_token": 1}


async def test_a_token_rotated_in_fallback_while_redis_returns_is_not_lost(
    fleet: Fleet,
    private_redis: RedisServer,
) -> None:
    """A worker started while Redis stalls knows nothing of rotation and refreshes alone; Redis
    is back before the token endpoint answers. The fleet waits for that refresh to end and
    takes its rotated token, instead of refreshing at the same time with the same one."""
    rotating = await _rotating_settings(fleet, private_redis)
    rotating = rotating.model_copy(
        update={"token_timeout_seconds": 120}
    )  # the test holds its request
    assert private_redis.proc is not None
    os.kill(private_redis.proc.pid, signal.SIGSTOP)
    try:
        worker: WorkerProcess = fleet.spawn(rotating)
        await worker.wait_ready()
        await _fallback(worker, 1.0)
        await fleet.simulator.hold("token", route="token")
        await fleet.jobs.publish(searches("alone", 1)[0])
        await fleet.simulator.wait_held("token")  # the worker's own token request
    finally:
        os.kill(private_redis.proc.pid, signal.SIGCONT)
    await _fallback(worker, 0.0)
    # Redis is back and the refresh made in fallback has not been answered yet.
    assert (await fleet.simulator.holds())["token"] == {
        "arrived": 1,
        "waiting": 1,
        "released": False,
    }
    settle = searches("settle", 3)
    for body in settle:
        await fleet.jobs.publish(body)
    await fleet.simulator.release("token")
    settled = await fleet.answers(settle)
    assert settled == ["ok"] * 3, (await fleet.simulator.counters())["oauth_events"]

    await fleet.simulator.set_latency(0)
    await fleet.simulator.expire_sessions()
    assert await fleet.run_all(searches("after", 5)) == ["ok"] * 5
    counters = await fleet.simulator.counters()
    assert counters["oauth_events"] == {}  # no concurrent refresh, no replay
    assert len(await fleet.simulator.refresh_tokens(DEFAULT_CLIENT_ID)) == 1  # the chain lives


async def test_with_rotation_workers_cut_off_from_redis_do_not_refresh_alone(
    fleet: Fleet,
    private_redis: RedisServer,
) -> None:
    """Two workers that know the token rotates lose Redis (a stall of a second is enough) just
    as the sessions expire: refreshing alone, each would spend the same refresh token (one
    rejected, or replayed and the chain revoked for the whole fleet). They wait for Redis
    instead, within the jobs' deadlines, and then refresh once for the fleet."""
    rotating = await _rotating_settings(fleet, private_redis)
    first: WorkerProcess = fleet.spawn(rotating)
    second: WorkerProcess = fleet.spawn(rotating)
    for worker in (first, second):
        await worker.wait_ready()
    assert await fleet.run_all(searches("before", 20)) == ["ok"] * 20
    assert private_redis.proc is not None
    os.kill(private_redis.proc.pid, signal.SIGSTOP)
    try:
        assert await fleet.run_all(searches("stopped", 20)) == ["ok"] * 20
        await _fallback(first, 1.0)
        await _fallback(second, 1.0)
        await fleet.simulator.expire_sessions()
        await fleet.simulator.reset_counters()
        batch = searches("expired", 20, timeout_ms=30_000)
        for body in batch:
            await fleet.jobs.publish(body)

        async def both_got_401s() -> bool:
            return int((await fleet.simulator.counters())["responses"].get("401", 0)) >= 2

        await wait_until(both_got_401s, 10, "401s after the expiry")
    finally:
        os.kill(private_redis.proc.pid, signal.SIGCONT)
    statuses = await fleet.answers(batch)
    counters = await fleet.simulator.counters()
    assert counters["oauth_events"] == {}  # no concurrent refresh, no revoked chain
    assert statuses == ["ok"] * 20
    assert counters["token_requests"] == {"refresh_token": 1}
