"""Acceptance 8.4: commands that cannot reach RabbitMQ say so on one line (host and port, never
credentials, what to do), exit non-zero, and print no traceback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.runtime.helpers import sfworker
from tests.support.accounts import write_accounts
from tests.support.ports import free_port

PASSWORD = "s3cret-pw"


def closed_port_env(tmp_path: Path) -> tuple[dict[str, str], int]:
    port = free_port()  # bound once and released: nothing listens there
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFWORKER_")}
    env["SFWORKER_AMQP_URL"] = f"amqp://runtime:{PASSWORD}@127.0.0.1:{port}/"
    env["SFWORKER_ACCOUNTS_FILE"] = str(
        write_accounts(tmp_path / "accounts.toml", "https://acme.my.salesforce.com")
    )
    return env, port


@pytest.mark.parametrize(
    "command",
    [
        ["demo"],
        ["submit", "--operation", "search", "--soql", "SELECT Id FROM Contact"],
        ["dlq"],
    ],
    ids=["demo", "submit", "dlq"],
)
async def test_a_closed_port_is_one_line_and_a_non_zero_exit(
    command: list[str], tmp_path: Path
) -> None:
    env, port = closed_port_env(tmp_path)
    done = await sfworker(*command, env=env, limit=60)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "Traceback" not in output
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"sfworker: cannot reach RabbitMQ at 127.0.0.1:{port}")
    assert "SFWORKER_AMQP_URL" in lines[0]
    assert PASSWORD not in output
    assert "runtime" not in lines[0]
