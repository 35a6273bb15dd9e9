"""Acceptance 4.1 and 4.3: every operation end to end through the queue, every error code of
the contract from a real cause, and a job expired on arrival never touches Salesforce."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aio_pika
import pytest
from sfsim.testing import DEFAULT_CLIENT_ID, SimulatorClient

from tests.runtime.helpers import sample
from tests.support.accounts import write_accounts
from tests.support.job_client import JobClient
from tests.support.settings import make_settings
from worker.app import Worker
from worker.settings import Settings

LOCKED = [{"errorCode": "SERVER_UNAVAILABLE", "message": "server too busy"}]


def job(job_id: str, **fields: object) -> dict[str, object]:
    return {"v": 1, "job_id": job_id, **fields}


async def test_every_operation_through_the_queue(
    worker: Worker, jobs: JobClient, simulator: SimulatorClient
) -> None:
    [contact] = await simulator.seed(
        "Contact", [{"FirstName": "Ada", "LastName": "Lovelace", "Phone": "555-0123"}]
    )
    search = await jobs.call(
        job(
            "e2e-search",
            operation="search",
            soql="SELECT Id, Name FROM Contact WHERE Phone = :p",
            params={"p": "555-0123"},
        )
    )
    assert (search["status"], search["count"], search["records"][0]["Id"]) == ("ok", 1, contact)
    assert search["account"] == "main"
    assert search["operation"] == "search"
    assert search["duration_ms"] >= 0

    sosl = await jobs.call(
        job(
            "e2e-sosl",
            operation="search",
            sosl="FIND :t RETURNING Contact(Id, Name)",
            params={"t": "Lovelace"},
        )
    )
    assert (sosl["status"], sosl["records"][0]["Name"]) == ("ok", "Ada Lovelace")

    inserted = await jobs.call(
        job(
            "e2e-insert",
            operation="insert",
            object="Case",
            fields={"Subject": "Callback", "ContactId": contact},
        )
    )
    assert inserted["status"] == "ok"
    assert inserted["http_status"] == 201
    case_id = inserted["id"]

    got = await jobs.call(job("e2e-get", operation="get", object="Case", id=case_id))
    assert (got["status"], got["records"][0]["Subject"]) == ("ok", "Callback")

    updated = await jobs.call(
        job(
            "e2e-update", operation="update", object="Case", id=case_id, fields={"Priority": "High"}
        )
    )
    assert (updated["status"], updated["http_status"]) == ("ok", 204)

    upserted = await jobs.call(
        job(
            "e2e-upsert",
            operation="upsert",
            object="Contact",
            external_id_field="Ext_Id__c",
            external_id="IVR-1",
            fields={"LastName": "Caller"},
        )
    )
    assert (upserted["status"], upserted["created"]) == ("ok", True)

    deleted = await jobs.call(job("e2e-delete", operation="delete", object="Case", id=case_id))
    assert deleted["status"] == "ok"
    gone = await jobs.call(job("e2e-get-gone", operation="get", object="Case", id=case_id))
    assert gone["status"] == "no_data"
    assert gone["error"] is None

    assert sample(worker, "sfworker_jobs_total", operation="get", status="ok", code="") == 1
    assert (
        sample(
            worker,
            "sfworker_token_requests_total",
            account="main",
            flow="client_credentials",
            outcome="ok",
        )
        == 1
    )


async def test_result_properties_follow_the_contract(
    worker: Worker, jobs: JobClient, amqp: aio_pika.abc.AbstractRobustConnection, settings: Settings
) -> None:
    channel = await amqp.channel()
    replies = await channel.declare_queue(exclusive=True)
    exchange = await channel.get_exchange(settings.request_exchange)
    await exchange.publish(
        aio_pika.Message(
            body=b'{"v":1,"job_id":"props-1","operation":"search","soql":"SELECT Id FROM Case"}',
            content_type="application/json",
            message_id="props-1",
            correlation_id="corr-9",
            reply_to=replies.name,
        ),
        routing_key=settings.request_routing_key,
    )
    async with replies.iterator(timeout=10) as it:
        async for message in it:
            assert message.correlation_id == "corr-9"
            assert message.message_id == "props-1"
            assert message.content_type == "application/json"
            await message.ack()
            break


async def test_without_reply_to_results_go_to_the_results_exchange(
    worker: Worker, jobs: JobClient, amqp: aio_pika.abc.AbstractRobustConnection, settings: Settings
) -> None:
    channel = await amqp.channel()
    results = await channel.get_exchange(settings.results_exchange)
    queue = await channel.declare_queue(exclusive=True)
    await queue.bind(results, routing_key="#")
    await jobs.publish(
        job("no-reply-1", operation="search", soql="SELECT Id FROM Case"), reply=False
    )
    async with queue.iterator(timeout=10) as it:
        async for message in it:
            assert message.routing_key == "no_data.search"
            assert message.correlation_id == "no-reply-1"
            await message.ack()
            break


async def test_a_job_published_twice_runs_once(
    worker: Worker, jobs: JobClient, simulator: SimulatorClient
) -> None:
    body = job("twice-1", operation="insert", object="Case", fields={"Subject": "Twice"})
    first = await jobs.call(body)
    second = await jobs.result(await jobs.publish(body, correlation_id="twice-again"), 10)
    assert first["id"] == second["id"]
    assert len([r for r in await simulator.records("Case") if r["Subject"] == "Twice"]) == 1
    assert sample(worker, "sfworker_results_replayed_total") == 1


async def test_expired_on_arrival_is_timeout_without_touching_salesforce(
    worker: Worker, jobs: JobClient, simulator: SimulatorClient
) -> None:
    result = await jobs.call(
        job(
            "late-1",
            operation="search",
            soql="SELECT Id FROM Case",
            timeout_ms=1000,
            sent_at=time.time() - 5,
        )
    )
    assert result["status"] == "failed"
    assert result["error"]["code"] == "TIMEOUT"
    assert result["error"]["retryable"] is True  # as every TIMEOUT: sent again, it may succeed
    assert result["attempts"] == 0
    counters = await simulator.counters()
    assert counters["requests_total"] == 0
    assert counters["token_requests_total"] == 0


async def test_the_amqp_timestamp_starts_the_budget_without_sent_at(
    worker: Worker, jobs: JobClient, simulator: SimulatorClient
) -> None:
    search = {"operation": "search", "soql": "SELECT Id FROM Case", "timeout_ms": 2000}
    stale = await jobs.result(
        await jobs.publish(job("ts-old", **search), timestamp=time.time() - 10), 10
    )
    assert stale["error"]["code"] == "TIMEOUT"
    assert (await simulator.counters())["requests_total"] == 0
    # A whole-second timestamp never cuts a short budget by its rounding: send 0.9 s or more
    # into a second, so the truncated timestamp is older than the job's 900 ms budget. Read as
    # is, the budget would be spent on receipt and Salesforce never called.
    assert (await jobs.call(job("ts-warm", **search)))["status"] == "no_data"
    queries = (await simulator.counters())["requests"]["query"]
    now = time.time()
    while now % 1 < 0.9:
        await asyncio.sleep(0.95 - now % 1)
        now = time.time()
    fresh = await jobs.result(
        await jobs.publish(job("ts-fresh", **{**search, "timeout_ms": 900}), timestamp=now), 10
    )
    assert (await simulator.counters())["requests"]["query"] == queries + 1, fresh
    assert "when it was received" not in str(fresh["error"])


@pytest.fixture
def error_settings(
    amqp_url: str, names: dict[str, str], tmp_path: Path, simulator: SimulatorClient
) -> Settings:
    extra = (
        "\n[accounts.broken]\n"
        'tenant = "acme"\n'
        f'instance_url = "{simulator.base_url}"\n'
        'flow = "client_credentials"\n'
        f'client_id = "{DEFAULT_CLIENT_ID}"\n'
        'client_secret = "not-the-secret"\n'
    )
    path = write_accounts(tmp_path / "accounts-errors.toml", simulator.base_url, extra=extra)
    return make_settings(amqp_url, names, path, retry_base_ms=10, retry_cap_ms=50)


async def test_each_error_code_from_a_real_cause(
    error_settings: Settings, jobs: JobClient, simulator: SimulatorClient
) -> None:
    worker = Worker(error_settings)
    await worker.start()
    try:
        codes = {}
        search = {"operation": "search", "soql": "SELECT Id FROM Case"}
        codes["INVALID_REQUEST"] = await jobs.call(
            job("c1", operation="get", object="Case", id="x")
        )
        codes["UNKNOWN_ACCOUNT"] = await jobs.call(job("c2", account="nope", **search))
        codes["FORBIDDEN_ACCOUNT"] = await jobs.call(
            job("c3", account="main", tenant="globex", **search)
        )
        codes["AUTH_FAILED"] = await jobs.call(job("c4", account="broken", **search))
        codes["SALESFORCE_ERROR"] = await jobs.call(
            job("c5", operation="search", soql="SELECT Nope FROM Case")
        )
        await simulator.add_fault(status=503, body=LOCKED, route="query", count=100)
        codes["SALESFORCE_UNAVAILABLE"] = await jobs.call(job("c6", **search))
        await simulator.clear_faults()
        await simulator.add_fault(action="drop_after", route="sobject_create")
        codes["OUTCOME_UNKNOWN"] = await jobs.call(
            job("c7", operation="insert", object="Case", fields={"Subject": "x"})
        )
        await simulator.set_latency(2000)
        codes["TIMEOUT"] = await jobs.call(job("c8", timeout_ms=300, **search))
        await simulator.set_latency(0)
        await simulator.set_daily_limit(10, used=10)
        codes["RATE_LIMITED"] = await jobs.call(job("c9", **search))
    finally:
        await worker.stop()
    for code, result in codes.items():
        assert result["status"] == "failed", (code, result)
        assert result["error"]["code"] == code, (code, result)
    assert codes["AUTH_FAILED"]["error"]["salesforce_errors"][0]["errorCode"] == "invalid_client"
    assert "not-the-secret" not in str(codes["AUTH_FAILED"])
    assert codes["UNKNOWN_ACCOUNT"]["error"]["message"] == "no account named 'nope'"
    assert codes["UNKNOWN_ACCOUNT"]["account"] == "nope"
    assert codes["INVALID_REQUEST"]["operation"] == "get"
