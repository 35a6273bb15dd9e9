"""Acceptance 3.3: what is retried, what is not, and the deadline."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sfsim.testing import SimulatorClient

from tests.support.harness import Harness, open_harness
from worker.settings import Settings

UNAVAILABLE = [{"errorCode": "SERVER_UNAVAILABLE", "message": "server too busy"}]
LOCKED = [{"errorCode": "UNABLE_TO_LOCK_ROW", "message": "unable to obtain exclusive access"}]
DAILY = [{"errorCode": "REQUEST_LIMIT_EXCEEDED", "message": "TotalRequests Limit exceeded."}]
CONCURRENT = [
    {"errorCode": "REQUEST_LIMIT_EXCEEDED", "message": "ConcurrentPerOrgLongTxn Limit exceeded"}
]


async def test_503_twice_then_success(sf: Harness, simulator: SimulatorClient) -> None:
    await simulator.add_fault(status=503, body=UNAVAILABLE, route="query", count=2)
    result = await sf.run(operation="search", soql="SELECT Id FROM Account")
    assert result.status.value == "no_data"
    assert result.attempts == 3
    assert (await simulator.counters())["requests"]["query"] == 3


async def test_503_until_attempts_run_out_is_salesforce_unavailable(
    sf: Harness, simulator: SimulatorClient
) -> None:
    await simulator.add_fault(status=503, body=UNAVAILABLE, route="query", count=50)
    result = await sf.run(operation="search", soql="SELECT Id FROM Account")
    assert result.error is not None
    assert (result.error.code.value, result.error.retryable) == ("SALESFORCE_UNAVAILABLE", True)
    assert result.attempts == 4  # SFWORKER_MAX_ATTEMPTS default
    assert result.http_status == 503


async def test_unable_to_lock_row_is_retried(sf: Harness, simulator: SimulatorClient) -> None:
    [case] = await simulator.seed("Case", [{"Subject": "x"}])
    await simulator.add_fault(status=400, body=LOCKED, route="sobject_update")
    nested = [
        {
            "errorCode": "CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY",
            "message": "UNABLE_TO_LOCK_ROW, unable to obtain exclusive access to this record",
        }
    ]
    await simulator.add_fault(status=400, body=nested, route="sobject_update")
    result = await sf.run(operation="update", object="Case", id=case, fields={"Priority": "High"})
    assert (result.status.value, result.attempts) == ("ok", 3)


async def test_concurrent_request_limit_is_retried(sf: Harness, simulator: SimulatorClient) -> None:
    await simulator.add_fault(status=403, body=CONCURRENT, route="query")
    result = await sf.run(operation="search", soql="SELECT Id FROM Account")
    assert (result.status.value, result.attempts) == ("no_data", 2)


async def test_daily_limit_is_rate_limited_after_one_call(
    sf: Harness, simulator: SimulatorClient
) -> None:
    await simulator.set_daily_limit(100, used=100)
    result = await sf.run(operation="search", soql="SELECT Id FROM Account")
    assert result.error is not None
    assert (result.error.code.value, result.error.retryable) == ("RATE_LIMITED", False)
    assert (result.attempts, result.http_status) == (1, 403)
    assert result.error.salesforce_errors[0].errorCode == "REQUEST_LIMIT_EXCEEDED"
    assert (await simulator.counters())["requests"]["query"] == 1


async def test_lost_answer_to_an_insert_is_outcome_unknown_and_never_resent(
    sf: Harness, simulator: SimulatorClient
) -> None:
    await simulator.add_fault(action="drop_after", route="sobject_create")
    result = await sf.run(operation="insert", object="Case", fields={"Subject": "Only once"})
    assert result.error is not None
    assert result.error.code.value == "OUTCOME_UNKNOWN"
    assert result.attempts == 1
    created = [r for r in await simulator.records("Case") if r["Subject"] == "Only once"]
    assert len(created) == 1


async def test_lost_answer_to_an_update_is_retried(sf: Harness, simulator: SimulatorClient) -> None:
    [case] = await simulator.seed("Case", [{"Subject": "x"}])
    await simulator.add_fault(action="drop_after", route="sobject_update")
    result = await sf.run(operation="update", object="Case", id=case, fields={"Priority": "Low"})
    assert (result.status.value, result.attempts) == ("ok", 2)
    [record] = [r for r in await simulator.records("Case") if r["Id"] == case]
    assert record["Priority"] == "Low"


async def test_connection_dropped_before_processing_is_retried_even_for_get(
    sf: Harness, simulator: SimulatorClient
) -> None:
    await simulator.add_fault(action="drop_before", route="query")
    result = await sf.run(operation="search", soql="SELECT Id FROM Account")
    assert (result.status.value, result.attempts) == ("no_data", 2)


async def test_latency_past_the_deadline_is_timeout_within_budget(
    sf: Harness, simulator: SimulatorClient
) -> None:
    await sf.run(operation="search", soql="SELECT Id FROM Account")  # token fetched
    await simulator.hold("slow", route="query")  # Salesforce does not answer until released
    async with asyncio.timeout(30):
        result = await sf.run(operation="search", soql="SELECT Id FROM Account", timeout_ms=500)
    assert result.error is not None
    assert (result.error.code.value, result.error.retryable) == ("TIMEOUT", True)
    assert result.attempts == 1
    # The job ended on its deadline, not on an answer: the request is still held.
    assert (await simulator.holds())["slow"]["waiting"] == 1
    await simulator.release("slow")


async def test_retries_never_sleep_past_the_deadline(
    sf_settings: Settings, accounts_file: Path, simulator: SimulatorClient
) -> None:
    """A backoff pause that would end after the deadline is not taken: the job answers at once
    with Salesforce's error instead of sleeping into a TIMEOUT."""
    days = sf_settings.model_copy(update={"retry_base_ms": 10**9, "retry_cap_ms": 10**9})
    await simulator.add_fault(status=503, body=UNAVAILABLE, route="query", count=1000)
    async with open_harness(days, accounts_file) as sf, asyncio.timeout(30):
        result = await sf.run(operation="search", soql="SELECT Id FROM Account", timeout_ms=5000)
    assert result.error is not None
    assert (result.error.code.value, result.http_status) == ("SALESFORCE_UNAVAILABLE", 503)
    assert result.attempts == 1
    assert (await simulator.counters())["requests"]["query"] == 1
