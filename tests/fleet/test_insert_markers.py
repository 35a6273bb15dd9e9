"""Insert markers across the fleet: a redelivered insert whose first delivery is still being
answered by a live worker waits for that worker's result; one whose worker died is
OUTCOME_UNKNOWN at once; neither is POSTed again."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sfsim.testing import SimulatorClient

from tests.support.accounts import write_accounts
from tests.support.harness import Harness, open_harness
from worker.contract import BlockResult, Status
from worker.observability.metrics import Metrics
from worker.settings import Settings
from worker.stores.link import RedisLink
from worker.stores.memory_results import MemoryResultStore
from worker.stores.redis_results import RedisResultStore


async def fleet_store(redis_url: str, prefix: str) -> tuple[RedisLink, RedisResultStore]:
    link = RedisLink(redis_url, prefix, Metrics())
    await link.start()
    store = RedisResultStore(link, MemoryResultStore(100, 60), 60)
    await store.start()
    return link, store


@pytest.fixture
async def other_worker(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisResultStore]:
    """The store of another (live) worker of the fleet."""
    link, store = await fleet_store(redis_url, redis_prefix)
    yield store
    await store.close()
    await link.close()


@pytest.fixture
async def here(
    tmp_path: Path, simulator: SimulatorClient, redis_url: str, redis_prefix: str
) -> AsyncIterator[Harness]:
    """A job runner of this worker, on the same fleet store."""
    link, store = await fleet_store(redis_url, redis_prefix)
    settings = Settings(http_port=0, allow_insecure_localhost=True)
    accounts = write_accounts(tmp_path / "accounts.toml", simulator.base_url)
    async with open_harness(settings, accounts, store=store) as harness:
        yield harness
    await store.close()
    await link.close()


INSERT = {"operation": "insert", "object": "Case", "fields": {"Subject": "marked"}}


async def test_a_live_senders_result_is_awaited_not_resent(
    here: Harness, other_worker: RedisResultStore, simulator: SimulatorClient
) -> None:
    key = f"{here.account.scope}/m-1"  # the result store's key: the account's org, the job id
    await other_worker.mark_insert_sent(key)
    result = BlockResult(job_id="m-1", operation="insert", status=Status.OK, id="500000000000001")

    async def answer_later() -> None:
        await asyncio.sleep(0.3)
        await other_worker.put(key, result.model_dump_json().encode())

    later = asyncio.create_task(answer_later())
    got = await here.run(job_id="m-1", timeout_ms=5000, **INSERT)
    await later
    assert (got.status, got.id) == (Status.OK, "500000000000001")
    assert (await simulator.counters())["requests"].get("sobject_create", 0) == 0


async def test_a_dead_senders_insert_is_outcome_unknown_at_once(
    here: Harness, redis_url: str, redis_prefix: str, simulator: SimulatorClient
) -> None:
    link, dead = await fleet_store(redis_url, redis_prefix)
    await dead.mark_insert_sent(f"{here.account.scope}/m-2")
    await dead.close()  # its worker stops: no heartbeat any more
    await link.close()
    started = time.monotonic()
    got = await here.run(job_id="m-2", timeout_ms=30000, **INSERT)
    assert got.error is not None
    assert got.error.code == "OUTCOME_UNKNOWN"
    assert time.monotonic() - started < 10  # not kept waiting for the 30 s deadline
    assert (await simulator.counters())["requests"].get("sobject_create", 0) == 0
