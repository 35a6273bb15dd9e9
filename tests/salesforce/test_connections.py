"""Issue 27, point 4: each account draws on connections of its own, and a call that waits for
one is answered for what happened: RATE_LIMITED (retryable), saying that no connection of its
account was free, never "the job's deadline passed"."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sfsim.testing import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, SimulatorClient

from tests.support.accounts import write_accounts
from tests.support.harness import open_harness
from worker.accounts import ConfigError
from worker.salesforce.connections import shares
from worker.settings import Settings


def test_the_budgets_share_the_pool_out_and_never_exceed_it() -> None:
    assert shares({"a": 25, "b": 25}, 100) == {"a": 25, "b": 25}  # every cap fits
    # Three accounts allowed 40 and one 25, a pool of 100: 25 each, never more than the pool.
    assert shares({"a": 40, "b": 40, "c": 40, "d": 25}, 100) == dict.fromkeys("abcd", 25)
    # A small cap leaves the rest of its even part to the others.
    assert shares({"a": 5, "b": 100, "c": 100}, 100) == {"a": 5, "b": 47, "c": 48}
    with pytest.raises(ConfigError, match="SFWORKER_HTTP_POOL_SIZE is 2"):
        shares({"a": 1, "b": 1, "c": 1}, 2)


@pytest.fixture
def two_accounts(tmp_path: Path, simulator: SimulatorClient) -> Path:
    """`main` and `other`, 5 calls at once each: a pool of 2 gives each one connection."""
    other = (
        f'max_concurrency = 5\n\n[accounts.other]\ninstance_url = "{simulator.base_url}"\n'
        f'flow = "client_credentials"\nclient_id = "{DEFAULT_CLIENT_ID}"\n'
        f'client_secret = "{DEFAULT_CLIENT_SECRET}"\nmax_concurrency = 5\n'
    )
    return write_accounts(tmp_path / "accounts.toml", simulator.base_url, extra=other)


def _search(n: int, account: str, timeout_ms: int) -> dict[str, object]:
    # Searches of their own: identical reads in flight would share one request.
    soql = f"SELECT Id FROM Account WHERE Name = 'n{n}'"  # noqa: S608 - a test's own
    return {"operation": "search", "account": account, "soql": soql, "timeout_ms": timeout_ms}


async def test_a_wait_for_a_connection_is_reported_as_such_and_spares_the_other_account(
    sf_settings: Settings, two_accounts: Path, simulator: SimulatorClient
) -> None:
    settings = sf_settings.model_copy(
        update={"http_pool_size": 2, "http_connect_timeout_seconds": 0.2, "coalesce_wait_ms": 0}
    )
    async with open_harness(settings, two_accounts) as sf:
        for account in ("main", "other"):  # tokens first
            assert (await sf.run(**_search(0, account, 5000))).status.value == "no_data"
        await simulator.set_latency(2000, token_ms=0)
        first = asyncio.create_task(sf.run(**_search(1, "main", 10_000)))
        await asyncio.sleep(0.2)
        # main's one connection is held for 2 s: main's next calls wait for it and are answered
        # for that (one after its retries, one whose deadline comes before the connect
        # timeout); `other` is not held up by main.
        second, third, late = await asyncio.gather(
            sf.run(**_search(2, "main", 10_000)),
            sf.run(**_search(3, "other", 10_000)),
            sf.run(**_search(4, "main", 150)),
        )
        assert (await first).status.value == "no_data"
    assert third.status.value == "no_data"
    for result in (second, late):
        assert result.error is not None
        assert (result.error.code.value, result.error.retryable) == ("RATE_LIMITED", True)
        assert "no connection to Salesforce was free for account 'main'" in result.error.message
        assert "deadline passed" not in result.error.message
    assert second.error is not None
    assert second.error.message.endswith("for 0.2 s")
    assert late.error is not None
    assert late.error.message.endswith("until the job's deadline")
    waited = sf.metrics.registry.get_sample_value(
        "sfworker_rate_limited_total", {"account": "main", "kind": "connections"}
    )
    assert waited is not None
    assert waited >= 2
