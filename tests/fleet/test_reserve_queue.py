"""The API reserve is checked when a call's slot is granted, not only before it queues for one:
calls waiting behind the account's cap when the reserve is reached are not sent."""

from __future__ import annotations

import pytest

from tests.fleet.helpers import Fleet, searches
from tests.support.accounts import write_accounts
from tests.support.waiting import wait_until
from tests.support.workers import WorkerProcess

pytestmark = pytest.mark.slow


async def test_calls_queued_behind_the_cap_are_not_sent_past_the_reserve(
    fleet: Fleet,
) -> None:
    await fleet.simulator.seed("Account", [{"Name": "Acme"}])
    path = write_accounts(
        fleet.tmp_path / "cap1.toml", fleet.simulator.base_url, extra="max_concurrency = 1\n"
    )
    # Coalescing off: one call per job, so "jobs sent" counts calls (coalesced calls are
    # covered in tests/runtime/test_coalescing_e2e.py).
    alone = fleet.settings_with(path, coalesce_wait_ms=0)
    worker: WorkerProcess = fleet.spawn(alone, prefetch=30)
    await worker.wait_ready()

    async def usage_read() -> bool:  # the start-up /limits read, or it may spend one of the 10
        return int((await fleet.simulator.counters())["requests"].get("limits", 0)) >= 1

    await wait_until(usage_read, 20, "the worker's start-up /limits read")
    await fleet.simulator.set_daily_limit(1000, used=940)  # the reserve (95%) is 10 calls away
    await fleet.simulator.set_latency(100)
    statuses = await fleet.run_all(searches("queued", 30))
    used = (await fleet.simulator.counters())["api_usage"]
    sent = statuses.count("ok")
    refused = [r["error"]["code"] for r in fleet.jobs.results if r["status"] == "failed"]
    assert refused == ["RATE_LIMITED"] * (30 - sent)
    assert 10 <= sent <= 11, f"{sent} calls sent; usage {used}"  # all 10 before the reserve
