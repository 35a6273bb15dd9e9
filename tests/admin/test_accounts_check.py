"""Acceptance 8.1: `sfworker accounts check` against the simulator: user, org, API usage and
object access of a working account; AUTH_FAILED with Salesforce's error and a hint for a wrong
secret (never printing it); the blocks that will fail for a user without delete permission."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from sfsim.testing import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_USERNAME,
    SimulatorClient,
)

from tests.runtime.helpers import sfworker
from tests.support.accounts import write_accounts
from tests.support.eavesdropper import eavesdropper
from tests.support.ports import free_port
from tests.support.settings import TEST_REDIS_KEY


def env_for(accounts: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFWORKER_")}
    env["SFWORKER_ACCOUNTS_FILE"] = str(accounts)
    env["SFWORKER_TOKEN_TIMEOUT_SECONDS"] = "5"
    return env


def assert_no_secret(text: str) -> None:
    assert DEFAULT_CLIENT_SECRET not in text
    assert "!AQ" not in text  # the simulator's access tokens look like Salesforce's: ORGID!AQ...
    assert "Traceback" not in text


async def test_a_working_account_shows_user_org_and_api_usage(
    simulator: SimulatorClient, tmp_path: Path
) -> None:
    assert simulator.state is not None
    await simulator.set_daily_limit(67_890, used=12_345)
    accounts = write_accounts(tmp_path / "accounts.toml", simulator.base_url)
    done = await sfworker("accounts", "check", "main", env=env_for(accounts))
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    # Usage as it stood before the check's own /limits call.
    assert "12,345 of 67,890 (18%)" in out
    assert DEFAULT_USERNAME in out
    assert simulator.state.org_id in out
    assert "client_credentials" in out
    assert "| OK" in out
    assert_no_secret(out + done.stderr)

    as_json = await sfworker("accounts", "check", "--json", env=env_for(accounts))
    assert as_json.returncode == 0
    [report] = json.loads(as_json.stdout)
    # The first check's /limits call is part of the org's usage now.
    assert report["api_usage"] == {"used": 12_346, "limit": 67_890, "percent": 18}
    assert (report["username"], report["org_id"]) == (DEFAULT_USERNAME, simulator.state.org_id)
    assert report["user_id"].startswith("005")


async def test_a_wrong_secret_is_auth_failed_with_salesforces_error_and_a_hint(
    simulator: SimulatorClient, tmp_path: Path
) -> None:
    wrong = "wrong-secret-4f9a"
    accounts = write_accounts(
        tmp_path / "accounts.toml",
        simulator.base_url,
        credentials=f'client_secret = "{wrong}"\n',
    )
    done = await sfworker("accounts", "check", "main", env=env_for(accounts))
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "AUTH_FAILED" in done.stdout
    assert "invalid_client" in done.stdout
    assert "hint: the consumer secret does not match" in done.stdout
    assert wrong not in output
    assert_no_secret(output)


async def test_the_run_as_user_missing_and_an_unreachable_org_get_their_own_hints(
    simulator: SimulatorClient, tmp_path: Path
) -> None:
    await simulator.set_client(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, run_as=False)
    accounts = write_accounts(tmp_path / "accounts.toml", simulator.base_url)
    done = await sfworker("accounts", "check", env=env_for(accounts))
    assert done.returncode == 1
    assert "no client credentials user enabled" in done.stdout
    assert "Run As" in done.stdout

    port = free_port()
    closed = write_accounts(tmp_path / "closed.toml", f"http://127.0.0.1:{port}")
    done = await sfworker("accounts", "check", env=env_for(closed))
    assert done.returncode == 1
    assert "UNREACHABLE" in done.stdout
    assert f"127.0.0.1:{port}" in done.stdout
    assert_no_secret(done.stdout + done.stderr)


async def test_objects_name_the_blocks_that_will_fail(
    simulator: SimulatorClient, tmp_path: Path
) -> None:
    await simulator.set_user(DEFAULT_USERNAME, objects={"Case": {"delete": False}})
    accounts = write_accounts(tmp_path / "accounts.toml", simulator.base_url)
    done = await sfworker(
        "accounts", "check", "main", "--objects", "Contact,Case", env=env_for(accounts)
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "main Case: no delete permission: Delete blocks on Case will fail" in done.stdout
    assert "main Contact: every block works" in done.stdout

    await simulator.set_user(DEFAULT_USERNAME, "Read Only")
    done = await sfworker("accounts", "check", "--objects", "Case", "--json", env=env_for(accounts))
    [report] = json.loads(done.stdout)
    [case] = report["objects"]
    assert case["failing_blocks"] == ["Insert", "Update", "Upsert", "Delete"]
    assert case["verdict"] == (
        "read only: Insert, Update, Upsert and Delete blocks on Case will fail"
    )


async def test_a_check_of_a_rotating_fleet_account_never_spends_the_fleets_refresh_token(
    simulator: SimulatorClient, tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    """With refresh-token rotation and a fleet whose workers already rotated the token, a check
    refreshes with the fleet's newest token under its lock and stores the rotated one: the
    chain is never revoked, and the fleet can go on refreshing."""
    from sfsim.testing import DEFAULT_REFRESH_TOKEN

    await simulator.set_client(
        DEFAULT_CLIENT_ID,
        DEFAULT_CLIENT_SECRET,
        rotation=True,
        refresh_tokens=[DEFAULT_REFRESH_TOKEN],
    )
    accounts = write_accounts(tmp_path / "accounts.toml", simulator.base_url, flow="refresh_token")
    env = {
        **env_for(accounts),
        "SFWORKER_REDIS_URL": redis_url,
        "SFWORKER_REDIS_PREFIX": redis_prefix,
        "SFWORKER_REDIS_ENCRYPTION_KEY": TEST_REDIS_KEY,
    }
    for _ in range(3):  # the file's token is rotated out after the first
        done = await sfworker("accounts", "check", "main", env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        assert_no_secret(done.stdout + done.stderr)
    counters = await simulator.counters()
    assert counters["token_requests"] == {"refresh_token": 3}
    assert counters["oauth_events"] == {}  # no replay, no revocation
    valid = await simulator.refresh_tokens(DEFAULT_CLIENT_ID)
    assert len(valid) == 1
    assert valid != [DEFAULT_REFRESH_TOKEN]


@pytest.mark.parametrize("shape", ["foreign_host", "plain_http_elsewhere", "userinfo"])
async def test_a_foreign_identity_url_never_gets_the_token(
    simulator: SimulatorClient, tmp_path: Path, shape: str
) -> None:
    """Issue 16.3: the token response's `id` is data from outside: the token goes to it only
    on https to Salesforce's or the account's own host."""
    async with eavesdropper() as spy:
        host = spy.base_url.removeprefix("http://")
        identity_url = {
            "foreign_host": f"https://{host}/id/00D000000000001AAA/005000000000001AAA",
            "plain_http_elsewhere": f"{spy.base_url}/id/00D000000000001AAA/005000000000001AAA",
            "userinfo": f"{simulator.base_url}@{host}/id/00D000000000001AAA/005000000000001AAA",
        }[shape]
        grant = {
            "access_token": "00D000000000001!AQfaketoken",
            "instance_url": simulator.base_url,
            "id": identity_url,
            "token_type": "Bearer",
            "issued_at": "1700000000000",
        }
        await simulator.add_fault(status=200, body=grant, route="token", count=1)
        accounts = write_accounts(tmp_path / "accounts.toml", simulator.base_url)
        done = await sfworker("accounts", "check", "main", env=env_for(accounts))
        assert done.returncode != 0, done.stdout
        assert "identity URL" in done.stdout + done.stderr
        assert "the token was not sent" in done.stdout + done.stderr
        assert spy.seen == []
