"""The API reserve is checked when a call's slot is granted, not only before it queues for one:
calls waiting behind the account's cap when the reserve is reached are not sent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sfsim.testing import SimulatorClient

from tests.conftest import WorkerProcess, make_settings, write_accounts
from tests.fleet.test_fleet_tokens import run_all, searches
from tests.job_client import JobClient
from worker.settings import Settings

pytestmark = pytest.mark.slow


async def test_calls_queued_behind_the_cap_are_not_sent_past_the_reserve(
    amqp_url: str,
    names: dict[str, str],
    tmp_path: Path,
    settings: Settings,
    spawn_worker: Any,
    jobs: JobClient,
    simulator: SimulatorClient,
) -> None:
    await simulator.seed("Account", [{"Name": "Acme"}])
    path = write_accounts(tmp_path / "cap1.toml", simulator.base_url, extra="max_concurrency = 1\n")
    # Coalescing off: one call per job, so "jobs sent" counts calls (coalesced calls are
    # covered in tests/runtime/test_coalescing_e2e.py).
    alone = make_settings(amqp_url, names, path, coalesce_wait_ms=0)
    worker: WorkerProcess = spawn_worker(alone, prefetch=30)
    await worker.wait_ready()
    await simulator.set_daily_limit(1000, used=940)  # the reserve (95%) is 10 calls away
    await simulator.set_latency(100)
    statuses = await run_all(jobs, searches("queued", 30))
    used = (await simulator.counters())["api_usage"]
    sent = statuses.count("ok")
    refused = [r["error"]["code"] for r in jobs.results if r["status"] == "failed"]
    assert refused == ["RATE_LIMITED"] * (30 - sent)
    assert 10 <= sent <= 11, f"{sent} calls sent; usage {used}"  # all 10 before the reserve
