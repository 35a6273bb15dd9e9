"""Coalescing through the queue: a burst of jobs published to RabbitMQ is answered job by job,
while Salesforce sees Composite requests (one API call for several jobs)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sfsim.testing import SimulatorClient

from tests.runtime.helpers import sample
from tests.support.accounts import write_accounts
from tests.support.job_client import JobClient
from tests.support.settings import make_settings
from worker.app import Worker
from worker.settings import Settings


async def test_a_burst_through_the_queue_shares_composite_requests(
    worker: Worker, jobs: JobClient, simulator: SimulatorClient
) -> None:
    phones = [f"555-01{i:02d}" for i in range(20)]
    ids = await simulator.seed(
        "Contact", [{"LastName": f"Caller{i}", "Phone": p} for i, p in enumerate(phones)]
    )
    await simulator.set_latency(50)
    searches = [
        {
            "v": 1,
            "job_id": f"burst-search-{i}",
            "operation": "search",
            "soql": "SELECT Id FROM Contact WHERE Phone = :p",
            "params": {"p": phone},
        }
        for i, phone in enumerate(phones)
    ]
    inserts = [
        {
            "v": 1,
            "job_id": f"burst-insert-{i}",
            "operation": "insert",
            "sobject": "Case",
            "fields": {"Subject": f"call {i}", "ContactId": ids[i]},
        }
        for i in range(20)
    ]
    results = await asyncio.gather(*(jobs.call(job) for job in searches + inserts))
    for i, result in enumerate(results[:20]):
        assert result["job_id"] == f"burst-search-{i}"
        assert [r["Id"] for r in result["records"]] == [ids[i]]
    cases = {c["Id"]: c for c in await simulator.records("Case")}
    for i, result in enumerate(results[20:]):
        assert result["status"] == "ok"
        assert cases[result["id"]]["ContactId"] == ids[i]
    counters = await simulator.counters()
    assert counters["requests"].get("composite", 0) >= 1
    requests = counters["requests"]
    sent = sum(requests.get(k, 0) for k in ("composite", "query", "sobject_create"))
    assert sent < 40
    # Every call not spent is counted, by the mechanism that saved it (issue 28: the 20
    # lookups of one shape travel merged into IN queries).
    saved = sample(worker, "sfworker_api_calls_saved_total", account="main")
    assert saved == 40 - sent
    by = {
        m: sample(
            worker, "sfworker_api_calls_saved_by_mechanism_total", account="main", mechanism=m
        )
        for m in ("composite", "lookup", "shared_read")
    }
    assert sum(by.values()) == saved
    assert by["lookup"] > 0


async def test_coalesced_calls_stop_at_the_api_reserve(
    amqp_url: str,
    names: dict[str, str],
    tmp_path: Path,
    settings: Settings,  # owns the topology teardown
    jobs: JobClient,
    simulator: SimulatorClient,
) -> None:
    """The reserve counts API calls, not jobs: Composite requests queued behind the account's
    cap are checked again when their slot is granted, so no call goes past the reserve."""
    await simulator.seed("Account", [{"Name": "Acme"}])
    # Identical reads not shared nor merged: each job's call is its own, in Composite requests.
    path = write_accounts(
        tmp_path / "cap1.toml",
        simulator.base_url,
        extra="max_concurrency = 1\nshare_reads = false\nmerge_lookups = false\n",
    )
    worker = Worker(make_settings(amqp_url, names, path))
    await worker.start()
    try:
        await simulator.set_daily_limit(1000, used=940)  # the reserve (95 %) is 10 calls away
        await simulator.set_latency(100)
        batch = [
            {
                "v": 1,
                "job_id": f"reserve-{i}",
                "operation": "search",
                "soql": "SELECT Id FROM Account WHERE Name = 'Acme'",
            }
            for i in range(150)
        ]
        results = await asyncio.gather(*(jobs.call(job) for job in batch))
    finally:
        await worker.stop()
    counters = await simulator.counters()
    calls = int(counters["api_usage"]["used"]) - 940
    ok = [r for r in results if r["status"] == "ok"]
    limited = [r for r in results if r["error"] and r["error"]["code"] == "RATE_LIMITED"]
    assert len(ok) + len(limited) == 150
    assert calls <= 11, calls
    assert len(ok) > calls  # several jobs per call
    assert counters["requests"].get("composite", 0) >= 1
