"""The commands an admin types: submit (flags and file), accounts, run with a bad accounts file,
and the demo (acceptance 4.7)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from sfsim.testing import SimulatorClient

from tests.runtime.helpers import sfworker
from tests.support.settings import settings_env
from worker.app import Worker
from worker.settings import Settings


async def test_submit_from_flags_and_from_a_file(
    worker: Worker, settings: Settings, simulator: SimulatorClient, tmp_path: Path
) -> None:
    [contact] = await simulator.seed("Contact", [{"LastName": "Lovelace", "Phone": "555-0123"}])
    env = settings_env(settings)
    found = await sfworker(
        "submit",
        "--operation",
        "search",
        "--soql",
        "SELECT Id, Name FROM Contact WHERE Phone = :p",
        "--param",
        "p=555-0123",
        "--json",
        env=env,
    )
    assert found.returncode == 0, found.stderr
    result = json.loads(found.stdout)
    assert (result["status"], result["records"][0]["Id"]) == ("ok", contact)

    job = tmp_path / "job.json"
    job.write_text(
        json.dumps(
            {"v": 1, "job_id": "from-file", "operation": "get", "object": "Contact", "id": contact}
        )
    )
    table = await sfworker("submit", "--file", str(job), env=env)
    assert table.returncode == 0, table.stderr
    assert "from-file" in table.stdout
    assert "Lovelace" in table.stdout

    missing = await sfworker(
        "submit",
        "--operation",
        "get",
        "--object",
        "Contact",
        "--id",
        "003000000000000AAA",
        env=env,
    )
    assert missing.returncode == 0
    assert "no_data" in missing.stdout

    refused = await sfworker(
        "submit", "--operation", "get", "--object", "Contact", "--id", "nope", env=env
    )
    assert refused.returncode == 1
    assert "INVALID_REQUEST" in refused.stdout


async def test_run_with_a_bad_accounts_file_exits_2_naming_account_and_key(
    settings: Settings, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[accounts.acme]\ninstance_url = "https://acme.my.salesforce.com"\n'
        'flow = "client_credentials"\nclient_id = "x"\n'
        'client_secret_file = "/nonexistent/acme-secret"\n'
    )
    env = {**settings_env(settings), "SFWORKER_ACCOUNTS_FILE": str(bad)}
    for command in (["run"], ["accounts"]):
        done = await sfworker(*command, env=env)
        assert done.returncode == 2
        assert "account 'acme'" in done.stderr
        assert "client_secret_file" in done.stderr


async def test_accounts_lists_the_accounts(settings: Settings) -> None:
    done = await sfworker("accounts", env=settings_env(settings))
    assert done.returncode == 0, done.stderr
    assert "main (default): client_credentials" in done.stdout


async def test_the_demo_prints_a_result_for_each_operation(amqp_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFWORKER_")}
    env["SFWORKER_AMQP_URL"] = amqp_url
    done = await sfworker("demo", env=env, limit=120)
    assert done.returncode == 0, done.stderr
    for operation in ("search", "get", "insert", "update", "upsert", "delete"):
        assert f"operation   | {operation}" in done.stdout
    assert done.stdout.count("status      | ok") == 7
    assert "status      | no_data" in done.stdout
    assert "jobs_total" in done.stdout


async def test_an_existing_queue_with_other_arguments_is_a_clear_configuration_error(
    worker: Worker, settings: Settings
) -> None:
    env = {**settings_env(settings), "SFWORKER_DELIVERY_LIMIT": "3", "SFWORKER_HTTP_PORT": "0"}
    done = await sfworker("run", env=env)
    assert done.returncode == 2
    assert "x-delivery-limit" in done.stderr
    assert "SFWORKER_DELIVERY_LIMIT" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


async def test_commands_fail_with_one_line_not_a_traceback(
    settings: Settings, tmp_path: Path
) -> None:
    env = settings_env(settings)
    no_file = await sfworker("submit", "--file", str(tmp_path / "missing.json"), env=env)
    no_dlq = await sfworker("dlq", env=env)  # nothing declared this test's topology
    for done in (no_file, no_dlq):
        assert done.returncode == 2
        assert "Traceback" not in done.stderr
        assert done.stderr.startswith("sfworker: ")
    assert "cannot read" in no_file.stderr
    assert "dead" in no_dlq.stderr
