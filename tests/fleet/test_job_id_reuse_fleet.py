"""Issue 16.1 across the fleet: a job id is bound fleet-wide. A different job reusing the id
reaches a second worker process while the first job still runs on the first one (held in the
simulator, so the window cannot be missed): it is refused JOB_ID_REUSED, Salesforce never sees
it, and the first job is answered with its own result."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from sfsim.testing import SimulatorClient

from tests.conftest import WorkerProcess
from tests.job_client import JobClient
from tests.metrics import metric
from worker.config import Settings

pytestmark = pytest.mark.slow


async def scrape(worker: WorkerProcess) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"{worker.url}/metrics") as response:
        return await response.text()


async def test_a_reused_id_on_another_worker_while_the_first_job_runs_is_refused(
    fleet_settings: Settings, spawn_worker: Any, jobs: JobClient, simulator: SimulatorClient
) -> None:
    [contact] = await simulator.seed("Contact", [{"FirstName": "Ada", "LastName": "Lovelace"}])
    await simulator.hold("first-job", route="query")
    # prefetch 1: while the first worker holds the search, the broker can only hand the next
    # job to the second worker.
    first: WorkerProcess = spawn_worker(fleet_settings, prefetch=1)
    await first.wait_ready()
    search = {
        "v": 1,
        "job_id": "call-1",
        "operation": "search",
        "soql": "SELECT Id, LastName FROM Contact",
    }
    await jobs.publish(search, correlation_id="the-search")
    await simulator.wait_held("first-job")

    second: WorkerProcess = spawn_worker(fleet_settings, prefetch=1)
    await second.wait_ready()
    update = {
        "v": 1,
        "job_id": "call-1",
        "operation": "update",
        "object": "Contact",
        "id": contact,
        "fields": {"LastName": "Byron"},
    }
    await jobs.publish(update, correlation_id="the-update")
    refused = await jobs.result("the-update", 20)
    assert (refused["status"], refused["operation"]) == ("failed", "update")
    assert refused["error"]["code"] == "JOB_ID_REUSED"
    assert refused["http_status"] is None
    assert metric(await scrape(second), "sfworker_job_id_reused_total") == 1
    assert (await simulator.holds())["first-job"]["waiting"] == 1  # the search still runs

    await simulator.release("first-job")
    answered = await jobs.result("the-search", 20)
    assert (answered["status"], answered["operation"], answered["count"]) == ("ok", "search", 1)
    counters = await simulator.counters()
    assert "sobject_update" not in counters["requests"]
    assert "sobject_update" not in counters["subrequests"]
    assert [r["LastName"] for r in await simulator.records("Contact")] == ["Lovelace"]
