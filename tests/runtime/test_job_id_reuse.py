"""Issue 16.1: a job id is bound to the job it was first used for. The same job again (a
redelivery, a re-send with another timeout_ms or sent_at) gets the same answer; another job
with that id, while the id is kept, is answered JOB_ID_REUSED without calling Salesforce, and
the first job's stored result stays as it was. Through the real queue."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sfsim.testing import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, SimulatorClient

from tests.runtime.helpers import sample
from tests.support.accounts import write_accounts
from tests.support.job_client import JobClient
from tests.support.settings import make_settings
from worker.app import Worker
from worker.settings import Settings


def two_accounts(path: Path, base_url: str) -> Path:
    other = (
        "\n[accounts.other]\n"
        'tenant = "acme"\n'
        f'instance_url = "{base_url}"\n'
        'flow = "client_credentials"\n'
        f'client_id = "{DEFAULT_CLIENT_ID}"\n'
        f'client_secret = "{DEFAULT_CLIENT_SECRET}"\n'
    )
    return write_accounts(path, base_url, extra=other)


@pytest.fixture
async def two_account_worker(
    amqp_url: str,
    names: dict[str, str],
    tmp_path: Path,
    simulator: SimulatorClient,
    settings: Settings,  # owns the topology teardown
) -> AsyncIterator[Worker]:
    accounts = two_accounts(tmp_path / "two.toml", simulator.base_url)
    running = Worker(make_settings(amqp_url, names, accounts))
    await running.start()
    yield running
    await running.stop()


def search(job_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "v": 1,
        "job_id": job_id,
        "operation": "search",
        "soql": "SELECT Id, LastName FROM Contact WHERE LastName = :n",
        "params": {"n": "Lovelace"},
        **extra,
    }


def sf_writes(counters: dict[str, Any]) -> int:
    names = ("sobject_update", "sobject_delete", "sobject_create", "sobject_upsert")
    return sum(
        counters[kind].get(name, 0) for kind in ("requests", "subrequests") for name in names
    )


async def test_an_update_reusing_a_search_id_is_refused_not_answered_with_its_records(
    worker: Worker, jobs: JobClient, simulator: SimulatorClient
) -> None:
    [contact] = await simulator.seed("Contact", [{"FirstName": "Ada", "LastName": "Lovelace"}])
    first = await jobs.call(search("call-1"))
    assert (first["status"], first["operation"], first["count"]) == ("ok", "search", 1)

    update = {
        "v": 1,
        "job_id": "call-1",
        "operation": "update",
        "object": "Contact",
        "id": contact,
        "fields": {"LastName": "Byron"},
    }
    second = await jobs.call(update)
    assert second["status"] == "failed"
    assert second["operation"] == "update"
    assert second["records"] is None
    assert second["http_status"] is None
    assert second["error"]["code"] == "JOB_ID_REUSED"
    assert "operation" in second["error"]["message"]
    assert "Byron" not in second["error"]["message"]
    assert sf_writes(await simulator.counters()) == 0
    assert [r["LastName"] for r in await simulator.records("Contact")] == ["Lovelace"]
    assert sample(worker, "sfworker_job_id_reused_total") == 1

    # The first job's result is kept as it was: its re-send (another budget, another sent_at)
    # is still answered with it.
    again = await jobs.call(search("call-1", timeout_ms=9000, sent_at=time.time()))
    assert again == first
    assert sample(worker, "sfworker_results_replayed_total") == 1


async def test_a_delete_on_another_account_reusing_the_id_never_runs(
    two_account_worker: Worker, jobs: JobClient, simulator: SimulatorClient
) -> None:
    [contact] = await simulator.seed("Contact", [{"FirstName": "Ada", "LastName": "Lovelace"}])
    first = await jobs.call(search("call-1", account="main"))
    assert (first["status"], first["account"]) == ("ok", "main")
    delete = {
        "v": 1,
        "job_id": "call-1",
        "operation": "delete",
        "account": "other",
        "object": "Contact",
        "id": contact,
    }
    second = await jobs.call(delete)
    assert (second["status"], second["error"]["code"]) == ("failed", "JOB_ID_REUSED")
    assert (second["operation"], second["account"], second["records"]) == ("delete", "other", None)
    assert "operation, account" in second["error"]["message"]
    assert sf_writes(await simulator.counters()) == 0
    assert [r["Id"] for r in await simulator.records("Contact")] == [contact]
    # Redelivered or re-sent, the delete is still refused; the search still answered.
    assert (await jobs.call(delete))["error"]["code"] == "JOB_ID_REUSED"
    assert await jobs.call(search("call-1", account="main")) == first


async def test_the_same_operation_with_other_fields_names_the_part_not_the_value(
    worker: Worker, jobs: JobClient, simulator: SimulatorClient
) -> None:
    [contact] = await simulator.seed("Contact", [{"LastName": "Lovelace"}])
    update = {
        "v": 1,
        "job_id": "call-7f3a-update",
        "operation": "update",
        "object": "Contact",
        "id": contact,
        "fields": {"LastName": "Byron"},
        "timeout_ms": 5000,
    }
    assert (await jobs.call(update))["status"] == "ok"
    other = {**update, "fields": {"LastName": "Secret-Value"}, "timeout_ms": 6000}
    refused = await jobs.call(other)
    assert refused["error"]["code"] == "JOB_ID_REUSED"
    assert "(it differs in: fields)" in refused["error"]["message"]
    assert "Secret-Value" not in refused["error"]["message"]
    assert [r["LastName"] for r in await simulator.records("Contact")] == ["Byron"]
    # The same update with another budget is the same job: answered, not sent again.
    again = await jobs.call({**update, "timeout_ms": 7000})
    assert again["status"] == "ok"
    assert (await simulator.counters())["requests"].get("sobject_update", 0) + (
        await simulator.counters()
    )["subrequests"].get("sobject_update", 0) == 1
