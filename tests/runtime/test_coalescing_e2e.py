"""Coalescing through the queue: a burst of jobs published to RabbitMQ is answered job by job,
while Salesforce sees Composite requests (one API call for several jobs)."""

from __future__ import annotations

import asyncio

from tests.runtime.conftest import sample
from worker.app import Worker
from worker.simulator.testing import SimulatorClient
from worker.submit import JobClient


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
    carried = sum(counters["subrequests"].values())
    singles = counters["requests"].get("query", 0) + counters["requests"].get("sobject_create", 0)
    assert carried + singles == 40
    assert counters["api_usage"]["used"] < 40
    saved = sample(worker, "sfworker_api_calls_saved_total", account="main")
    assert saved == carried - counters["requests"]["composite"]
