"""Issue 27, point 4: connections per account. Tenant A's slow SOSL searches on three accounts
(each allowed 40 at once: more than the HTTP pool of 100 together) must not take the connections
tenant B's account needs: B's 8 s searches (a few at once, so that they need connections of
their own, not only the one kept alive) are all answered, p99 under 500 ms. A's searches
beyond A's share of the pool wait for one of A's own connections, and are all answered too."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sfsim.testing import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    SimulatorClient,
    running_simulator,
)

from tests.support.accounts import write_accounts
from tests.support.job_client import JobClient
from tests.support.latency import p99, timed
from worker.app import Worker
from worker.settings import Settings

SLOW_ACCOUNTS = ("main", "second", "third")  # tenant acme's
SLOW_JOBS = 100
SLOW_MS = 5000
QUICK_BURSTS = 8  # of 5 searches at once, every half second: each needs fresh connections
QUICK_BURST = 5


def _account(name: str, tenant: str, url: str, cap: int | None = None) -> str:
    return (
        f'\n[accounts.{name}]\ntenant = "{tenant}"\ninstance_url = "{url}"\n'
        f'flow = "client_credentials"\nclient_id = "{DEFAULT_CLIENT_ID}"\n'
        f'client_secret = "{DEFAULT_CLIENT_SECRET}"\n'
        + (f"max_concurrency = {cap}\n" if cap else "")
    )


@pytest.fixture
async def quick_sim() -> AsyncIterator[SimulatorClient]:
    async with running_simulator() as sim:
        yield sim


@pytest.fixture
def accounts_file(tmp_path: Path, simulator: SimulatorClient, quick_sim: SimulatorClient) -> Path:
    """acme's three accounts on the slow org, 40 calls at once each; globex's `quick` on its
    own org, at the default cap (25)."""
    extra = "max_concurrency = 40\n" + "".join(
        _account(name, "acme", simulator.base_url, 40) for name in SLOW_ACCOUNTS[1:]
    )
    extra += _account("quick", "globex", quick_sim.base_url)
    return write_accounts(tmp_path / "accounts.toml", simulator.base_url, extra=extra)


def _sosl(job_id: str, account: str, timeout_ms: int) -> dict[str, Any]:
    return {
        "v": 1,
        "job_id": job_id,
        "account": account,
        "operation": "search",
        "timeout_ms": timeout_ms,
        # A search of its own (identical reads in flight would share one request).
        "sosl": f"FIND {{{job_id.replace('-', '')}}} IN ALL FIELDS RETURNING Contact(Id, Name)",
    }


async def test_one_tenant_s_slow_calls_leave_another_tenant_its_connections(
    settings: Settings, simulator: SimulatorClient, quick_sim: SimulatorClient, jobs: JobClient
) -> None:
    # One queue with room for every job at once, and each call in a request of its own (not
    # several in one Composite request): what is measured is the HTTP pool, not the prefetch
    # (the fair share has its own tests) nor how few requests batching needs.
    alone = {"fair_share": False, "prefetch": 200, "coalesce_wait_ms": 0}
    worker = Worker(settings.model_copy(update=alone))
    await worker.start()
    try:
        # Every account has its token before the measure.
        warm = [_sosl(f"warm-{a}", a, 10_000) for a in (*SLOW_ACCOUNTS, "quick")]
        warmed = await asyncio.gather(*(jobs.call(j) for j in warm))
        assert {r["status"] for r in warmed} == {"no_data"}, warmed
        await simulator.set_latency(SLOW_MS, token_ms=0)
        await quick_sim.set_latency(20, token_ms=0)
        slow = [
            await jobs.publish(_sosl(f"slow-{i}", SLOW_ACCOUNTS[i % 3], 30_000))
            for i in range(SLOW_JOBS)
        ]
        await asyncio.sleep(1.0)  # acme's calls are in flight (and waiting for connections)
        quick: list[asyncio.Task[tuple[float, dict[str, Any]]]] = []
        start = time.monotonic()
        for burst in range(QUICK_BURSTS):
            await asyncio.sleep(max(0.0, start + burst / 2 - time.monotonic()))
            for i in range(QUICK_BURST):
                job = _sosl(f"quick-{burst}-{i}", "quick", 8_000)
                quick.append(asyncio.create_task(timed(jobs, job, 30)))
        quick_done = await asyncio.gather(*quick)
        slow_done = await asyncio.gather(*(jobs.result(job, 40) for job in slow))
    finally:
        await worker.stop()
    failed = [r["error"] for _, r in quick_done if r["status"] == "failed"]
    assert failed == []
    assert p99([seconds for seconds, _ in quick_done]) < 0.5
    # acme's searches beyond its share of the pool waited for acme's own connections.
    assert {r["status"] for r in slow_done} == {"no_data"}, [
        r["error"] for r in slow_done if r["error"]
    ]
