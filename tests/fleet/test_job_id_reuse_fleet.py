"""Issue 16.1 across the fleet: a job id is bound fleet-wide. A different job reusing the id
reaches a second worker process while the first job still runs on the first one (held in the
simulator, so the window cannot be missed): it is refused JOB_ID_REUSED, Salesforce never sees
it, and the first job is answered with its own result."""

from __future__ import annotations

import signal

import aiohttp
import pytest

from tests.fleet.helpers import Fleet
from tests.support.metrics import metric
from tests.support.workers import WorkerProcess

pytestmark = pytest.mark.slow


async def scrape(worker: WorkerProcess) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"{worker.url}/metrics") as response:
        return await response.text()


async def test_a_reused_id_on_another_worker_while_the_first_job_runs_is_refused(
    fleet: Fleet,
) -> None:
    [contact] = await fleet.simulator.seed(
        "Contact", [{"FirstName": "Ada", "LastName": "Lovelace"}]
    )
    await fleet.simulator.hold("first-job", route="query")
    # prefetch 1: while the first worker holds the search, the broker can only hand the next
    # job to the second worker.
    first: WorkerProcess = fleet.spawn(fleet.settings, prefetch=1)
    await first.wait_ready()
    search = {
        "v": 1,
        "job_id": "call-1",
        "operation": "search",
        "soql": "SELECT Id, LastName FROM Contact",
    }
    await fleet.jobs.publish(search, correlation_id="the-search")
    await fleet.simulator.wait_held("first-job")

    second: WorkerProcess = fleet.spawn(fleet.settings, prefetch=1)
    await second.wait_ready()
    update = {
        "v": 1,
        "job_id": "call-1",
        "operation": "update",
        "object": "Contact",
        "id": contact,
        "fields": {"LastName": "Byron"},
    }
    await fleet.jobs.publish(update, correlation_id="the-update")
    refused = await fleet.jobs.result("the-update", 20)
    assert (refused["status"], refused["operation"]) == ("failed", "update")
    assert refused["error"]["code"] == "JOB_ID_REUSED"
    assert refused["http_status"] is None
    assert metric(await scrape(second), "sfworker_job_id_reused_total") == 1
    assert (await fleet.simulator.holds())["first-job"]["waiting"] == 1  # the search still runs

    await fleet.simulator.release("first-job")
    answered = await fleet.jobs.result("the-search", 20)
    assert (answered["status"], answered["operation"], answered["count"]) == ("ok", "search", 1)
    counters = await fleet.simulator.counters()
    assert "sobject_update" not in counters["requests"]
    assert "sobject_update" not in counters["subrequests"]
    assert [r["LastName"] for r in await fleet.simulator.records("Contact")] == ["Lovelace"]


async def test_a_reused_id_of_an_insert_whose_worker_died_is_refused_not_outcome_unknown(
    fleet: Fleet,
) -> None:
    """The insert claim (its marker in Redis) outlives its worker; a different job with the id
    is refused JOB_ID_REUSED, while the insert's own redelivery is OUTCOME_UNKNOWN as before."""
    await fleet.simulator.hold("insert", route="sobject_create")
    first: WorkerProcess = fleet.spawn(fleet.settings, prefetch=1)
    await first.wait_ready()
    insert = {
        "v": 1,
        "job_id": "ins-1",
        "operation": "insert",
        "object": "Case",
        "fields": {"Subject": "first"},
        "timeout_ms": 30000,
    }
    await fleet.jobs.publish(insert, correlation_id="the-insert")
    await fleet.simulator.wait_held("insert")  # marked, sent, and held in Salesforce
    first.proc.kill()
    assert await first.wait_exit(10) == -signal.SIGKILL

    second: WorkerProcess = fleet.spawn(fleet.settings, prefetch=4)
    await second.wait_ready()
    other = {**insert, "fields": {"Subject": "another job"}}
    await fleet.jobs.publish(other, correlation_id="the-other")
    refused = await fleet.jobs.result("the-other", 20)
    assert (refused["status"], refused["error"]["code"]) == ("failed", "JOB_ID_REUSED")
    assert "(it differs in: fields)" in refused["error"]["message"]
    unknown = await fleet.jobs.result("the-insert", 30)
    assert (unknown["status"], unknown["error"]["code"]) == ("failed", "OUTCOME_UNKNOWN")

    await fleet.simulator.release("insert")
    counters = await fleet.simulator.counters()
    assert counters["requests"].get("sobject_create", 0) == 1
    assert "sobject_create" not in counters["subrequests"]
