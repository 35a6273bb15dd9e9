"""Issue 29, point 2: every request that reaches Salesforce is counted and timed alike, the
`/limits` reads included (the start-up read here; the reserve's probe is the same read); token
requests have their own family. Checked against the simulator's own count of the requests it saw."""

from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families
from sfsim.testing import SimulatorClient

from tests.support.job_client import JobClient
from tests.support.metrics import exposition
from worker.app import Worker
from worker.settings import Settings


def _total(worker: Worker, sample_name: str) -> float:
    """The sum of `sample_name` over every label set (what `sum(...)` in PromQL reads)."""
    text = exposition(worker.metrics)
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == sample_name
    )


async def test_the_request_histogram_sees_every_request_the_simulator_saw(
    settings: Settings, simulator: SimulatorClient, jobs: JobClient
) -> None:
    await simulator.seed("Contact", [{"FirstName": "Ada", "LastName": "Lovelace"}])
    await simulator.reset_counters()
    worker = Worker(settings)
    await worker.start()  # reads each account's /limits
    try:
        await worker.fleet.reserve.primed()
        soql = {"operation": "search", "soql": "SELECT Id FROM Contact WHERE LastName = 'X'"}
        sosl = {"operation": "search", "sosl": "FIND {Lovelace} RETURNING Contact(Id, Name)"}
        found = await jobs.call({"v": 1, "job_id": "m-sosl", **sosl})
        assert found["status"] == "ok"
        together = [{"v": 1, "job_id": f"m-{i}", **soql} for i in range(6)]  # some coalesce
        answers = await asyncio.gather(*(jobs.call(job) for job in together))
        assert {a["status"] for a in answers} == {"no_data"}
    finally:
        await worker.stop()

    seen = await simulator.counters()
    token_requests = seen["requests"].get("token", 0)
    rest_requests = seen["requests_total"] - token_requests
    assert seen["requests"].get("limits", 0) >= 1  # the start-up read reached Salesforce
    timed = _total(worker, "sfworker_salesforce_request_duration_seconds_count")
    counted = _total(worker, "sfworker_salesforce_requests_total")
    assert (timed, counted) == (rest_requests, rest_requests)
    assert _total(worker, "sfworker_token_request_duration_seconds_count") == token_requests
