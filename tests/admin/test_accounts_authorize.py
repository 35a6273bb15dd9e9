"""Acceptance 8.2: `sfworker accounts authorize` runs the web-server flow against the simulator
while this test plays the browser (opens the printed URL, follows the redirect to the callback):
the refresh token lands in a 0600 file and works, nothing prints it, PKCE was verified; a denied
consent exits non-zero with access_denied."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from pathlib import Path

import aiohttp
from sfsim.testing import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, SimulatorClient

from tests.runtime.helpers import sfworker
from tests.support import ROOT
from tests.support.accounts import write_accounts
from tests.support.ports import free_port

ADMIN = "admin@acme.example"


async def setup(simulator: SimulatorClient, tmp_path: Path) -> tuple[dict[str, str], int, Path]:
    port = free_port()
    await simulator.set_client(
        DEFAULT_CLIENT_ID,
        DEFAULT_CLIENT_SECRET,
        callback_urls=[f"http://localhost:{port}/callback"],
        require_pkce=True,
    )
    out = tmp_path / "secrets" / "main-refresh-token"
    out.parent.mkdir()
    # The accounts file already points at the file the command is about to write.
    accounts = write_accounts(
        tmp_path / "accounts.toml",
        simulator.base_url,
        flow="refresh_token",
        credentials=f'client_secret = "{DEFAULT_CLIENT_SECRET}"\nrefresh_token_file = "{out}"\n',
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFWORKER_")}
    env["SFWORKER_ACCOUNTS_FILE"] = str(accounts)
    return env, port, out


async def authorize_playing_the_browser(
    simulator: SimulatorClient, env: dict[str, str], port: int, out: Path
) -> tuple[int, str, str, str]:
    """Run the command; open the URL it prints like a browser would. Returns (exit code,
    stdout, stderr, the text of the page the browser ended on)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "worker", "accounts", "authorize", "main"),
        *("--port", str(port), "--out", str(out), "--no-browser", "--wait", "30"),
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(30):
            while True:
                line = (await proc.stdout.readline()).decode()
                assert line, f"no URL printed: {lines}"
                lines.append(line)
                if line.startswith(f"{simulator.base_url}/services/oauth2/authorize?"):
                    break
            async with aiohttp.ClientSession() as browser, browser.get(line.strip()) as page:
                landed = await page.text()
            rest, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, "".join(lines) + rest.decode(), err.decode(), landed


async def test_the_web_server_flow_writes_a_working_refresh_token(
    simulator: SimulatorClient, tmp_path: Path
) -> None:
    await simulator.set_consent(approve=True, username=ADMIN)
    env, port, out = await setup(simulator, tmp_path)
    code, stdout, stderr, page = await authorize_playing_the_browser(simulator, env, port, out)
    assert code == 0, stdout + stderr
    assert "you can close this tab" in page
    url_line = next(line for line in stdout.splitlines() if "/services/oauth2/authorize?" in line)
    assert f"redirect_uri=http%3A%2F%2Flocalhost%3A{port}%2Fcallback" in url_line
    assert "code_challenge_method=S256" in url_line
    assert "scope=api%20refresh_token" in url_line
    assert f"Authorized by {ADMIN}" in stdout

    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    refresh_token = out.read_text().strip()
    assert refresh_token in await simulator.refresh_tokens(DEFAULT_CLIENT_ID)
    assert refresh_token not in stdout + stderr
    assert DEFAULT_CLIENT_SECRET not in stdout + stderr
    assert (await simulator.counters())["pkce_verified"] == 1

    # The account now works with the file the command wrote.
    checked = await sfworker("accounts", "check", "main", env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert ADMIN in checked.stdout
    assert "refresh_token" in checked.stdout


async def test_a_denied_consent_exits_non_zero_with_access_denied(
    simulator: SimulatorClient, tmp_path: Path
) -> None:
    await simulator.set_consent(approve=False)
    env, port, out = await setup(simulator, tmp_path)
    code, _stdout, stderr, page = await authorize_playing_the_browser(simulator, env, port, out)
    assert code == 1
    assert "access_denied" in stderr
    assert "end-user denied authorization" in stderr
    assert "Traceback" not in stderr
    assert "refused" in page
    assert not out.exists()
    assert (await simulator.counters())["pkce_verified"] == 0


async def test_a_refused_code_exchange_prints_salesforces_error(
    simulator: SimulatorClient, tmp_path: Path
) -> None:
    env, port, out = await setup(simulator, tmp_path)
    wrong = "not-the-secret-81c2"
    env["SFWORKER_ACCOUNTS_FILE"] = str(
        write_accounts(
            tmp_path / "wrong.toml",
            simulator.base_url,
            flow="refresh_token",
            credentials=f'client_secret = "{wrong}"\nrefresh_token_file = "{out}"\n',
        )
    )
    code, stdout, stderr, _ = await authorize_playing_the_browser(simulator, env, port, out)
    assert code == 1
    assert "invalid_client" in stderr
    assert wrong not in stdout + stderr
    assert not out.exists()
