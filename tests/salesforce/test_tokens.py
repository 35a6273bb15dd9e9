"""Acceptance 3.2 and the token manager's rules: one token request however many jobs wait,
compare-and-invalidate after 401s, rotation without revocation, errors without secrets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sfsim.testing import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_REFRESH_TOKEN,
    DEFAULT_USERNAME,
    SimulatorClient,
)

from tests.support.accounts import rsa_key_pair, write_accounts
from tests.support.harness import Harness, open_harness
from worker.settings import Settings

SOQL = "SELECT Id, Name FROM Account WHERE Name = :n"


async def burst(sf: Harness, n: int) -> list[str]:
    results = await asyncio.gather(
        *(sf.run(operation="search", soql=SOQL, params={"n": "Acme"}) for _ in range(n))
    )
    return [r.status.value for r in results]


async def token_requests(sim: SimulatorClient) -> int:
    counters = await sim.counters()
    return int(counters["token_requests_total"])


async def test_500_concurrent_searches_cause_one_token_request_each_time(
    sf: Harness, simulator: SimulatorClient
) -> None:
    await simulator.seed("Account", [{"Name": "Acme"}])
    await simulator.set_latency(0, token_ms=50)
    assert await burst(sf, 500) == ["ok"] * 500
    assert await token_requests(simulator) == 1

    await simulator.expire_sessions()
    assert await burst(sf, 500) == ["ok"] * 500
    assert await token_requests(simulator) == 2
    invalidated = sf.metrics.registry.get_sample_value(
        "sfworker_token_invalidations_total", {"account": "main"}
    )
    assert invalidated == 1


@pytest.fixture
async def sf_alone(
    sf_settings: Settings, tmp_path: Path, simulator: SimulatorClient
) -> AsyncIterator[Harness]:
    """Coalescing and read sharing off: every job makes its own call (and reads the token
    itself)."""
    path = write_accounts(
        tmp_path / "alone.toml", simulator.base_url, extra="share_reads = false\n"
    )
    async with open_harness(sf_settings.model_copy(update={"coalesce_wait_ms": 0}), path) as h:
        yield h


async def test_jobs_that_join_another_jobs_token_request_are_counted_as_waits(
    sf_alone: Harness, simulator: SimulatorClient
) -> None:
    sf = sf_alone
    waits = {"account": "main"}
    assert sf.metrics.registry.get_sample_value("sfworker_token_waits_total", waits) == 0
    await simulator.set_latency(0, token_ms=500)
    assert await burst(sf, 20) == ["no_data"] * 20
    assert await token_requests(simulator) == 1
    # One job made the request; the other 19 joined it while it was in flight.
    assert sf.metrics.registry.get_sample_value("sfworker_token_waits_total", waits) == 19
    assert await burst(sf, 5) == ["no_data"] * 5  # the token is cached now: nobody waits
    assert sf.metrics.registry.get_sample_value("sfworker_token_waits_total", waits) == 19


async def test_refresh_token_flow_with_rotation_never_revokes(
    sf_settings: Settings, tmp_path: Path, simulator: SimulatorClient
) -> None:
    await simulator.set_client(
        DEFAULT_CLIENT_ID,
        DEFAULT_CLIENT_SECRET,
        rotation=True,
        refresh_tokens=[DEFAULT_REFRESH_TOKEN],
    )
    await simulator.seed("Account", [{"Name": "Acme"}])
    await simulator.set_latency(0, token_ms=50)
    path = write_accounts(tmp_path / "a.toml", simulator.base_url, flow="refresh_token")
    async with open_harness(sf_settings, path) as sf:
        assert await burst(sf, 500) == ["ok"] * 500
        await simulator.expire_sessions()
        assert await burst(sf, 500) == ["ok"] * 500
        await simulator.expire_sessions()
        assert await burst(sf, 50) == ["ok"] * 50
    counters = await simulator.counters()
    assert counters["token_requests"] == {"refresh_token": 3}
    # The chain is alive: exactly one valid refresh token, and it is not the first one.
    valid = await simulator.refresh_tokens(DEFAULT_CLIENT_ID)
    assert len(valid) == 1
    assert valid != [DEFAULT_REFRESH_TOKEN]


async def test_a_401_with_another_error_code_does_not_refresh(
    sf: Harness, simulator: SimulatorClient
) -> None:
    await simulator.add_fault(
        status=401,
        body=[{"errorCode": "INVALID_AUTH_HEADER", "message": "bad header"}],
        route="query",
    )
    result = await sf.run(operation="search", soql="SELECT Id FROM Account")
    assert result.status.value == "failed"
    assert result.error is not None
    assert result.error.code.value == "SALESFORCE_ERROR"
    assert await token_requests(simulator) == 1


async def test_a_second_invalid_session_after_refresh_is_auth_failed(
    sf: Harness, simulator: SimulatorClient
) -> None:
    body = [{"errorCode": "INVALID_SESSION_ID", "message": "Session expired or invalid"}]
    await simulator.add_fault(status=401, body=body, route="query", count=2)
    result = await sf.run(operation="search", soql="SELECT Id FROM Account")
    assert result.error is not None
    assert result.error.code.value == "AUTH_FAILED"
    assert result.attempts == 2
    assert await token_requests(simulator) == 2


async def test_token_errors_are_auth_failed_without_secrets_and_back_off(
    sf_settings: Settings, tmp_path: Path, simulator: SimulatorClient
) -> None:
    wrong = "wrong-secret-never-shown"
    path = write_accounts(
        tmp_path / "a.toml", simulator.base_url, credentials=f'client_secret = "{wrong}"\n'
    )
    async with open_harness(sf_settings, path) as sf:
        first = await sf.run(operation="search", soql="SELECT Id FROM Account")
        burst_results = await asyncio.gather(
            *(sf.run(operation="search", soql="SELECT Id FROM Account") for _ in range(20))
        )
    assert first.error is not None
    assert first.error.code.value == "AUTH_FAILED"
    assert first.http_status == 400
    assert first.error.salesforce_errors[0].errorCode == "invalid_client"
    assert "invalid client credentials" in first.error.message
    assert wrong not in first.model_dump_json()
    assert all(r.error is not None and r.error.code.value == "AUTH_FAILED" for r in burst_results)
    assert "paused" in burst_results[0].error.message  # type: ignore[union-attr]
    assert await token_requests(simulator) == 1  # no hammering of the token endpoint


async def test_jwt_bearer_flow(
    sf_settings: Settings, tmp_path: Path, simulator: SimulatorClient
) -> None:
    private_pem, public_pem = rsa_key_pair()
    await simulator.set_client(
        DEFAULT_CLIENT_ID,
        DEFAULT_CLIENT_SECRET,
        usernames=[DEFAULT_USERNAME],
        jwt_public_key_pem=public_pem,
    )
    (tmp_path / "key.pem").write_text(private_pem)
    path = write_accounts(
        tmp_path / "a.toml",
        simulator.base_url,
        flow="jwt_bearer",
        credentials=f'username = "{DEFAULT_USERNAME}"\nprivate_key_file = "key.pem"\n',
    )
    async with open_harness(sf_settings, path) as sf:
        result = await sf.run(operation="search", soql="SELECT Id FROM Account")
    assert result.status.value == "no_data"
    counters = await simulator.counters()
    assert counters["token_requests"] == {"urn:ietf:params:oauth:grant-type:jwt-bearer": 1}


@pytest.mark.parametrize("concurrency", [3])
async def test_max_concurrency_caps_calls_per_account(
    sf_settings: Settings, tmp_path: Path, simulator: SimulatorClient, concurrency: int
) -> None:
    path = write_accounts(
        tmp_path / "a.toml",
        simulator.base_url,
        extra=f"max_concurrency = {concurrency}\nshare_reads = false\n",
    )
    await simulator.set_latency(30)
    async with open_harness(sf_settings, path) as sf:
        results = await asyncio.gather(
            *(sf.run(operation="search", soql="SELECT Id FROM Account") for _ in range(30))
        )
    assert {r.status.value for r in results} == {"no_data"}
    assert (await simulator.counters())["max_concurrency"] == concurrency


@pytest.mark.parametrize("coalesce_wait_ms", [0, 10], ids=["alone", "coalesced"])
async def test_no_call_starts_with_a_token_a_401_has_invalidated(
    sf_settings: Settings, tmp_path: Path, simulator: SimulatorClient, coalesce_wait_ms: int
) -> None:
    """Issue 18, point 4: 500 concurrent jobs, a cap of 50, every session expired while they
    run: only the requests already in flight (at most the cap) carry the dead token; a call
    whose slot is granted after the first 401 waits for the new one."""
    path = write_accounts(tmp_path / "a.toml", simulator.base_url, extra="max_concurrency = 50\n")
    await simulator.seed("Account", [{"Name": "Acme"}])
    settings = sf_settings.model_copy(update={"coalesce_wait_ms": coalesce_wait_ms})
    async with open_harness(settings, path) as sf:
        assert await burst(sf, 5) == ["ok"] * 5  # the token is held
        await simulator.set_latency(50, token_ms=50)
        await simulator.expire_sessions()
        await simulator.reset_counters()
        assert await burst(sf, 500) == ["ok"] * 500
    counters = await simulator.counters()
    assert counters["token_requests_total"] == 1
    assert counters["max_concurrency"] <= 50
    assert 1 <= counters["responses"].get("401", 0) <= 50, counters["responses"]
