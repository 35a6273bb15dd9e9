"""No secret in any log line: a worker process at DEBUG, through token fetches, a refresh after
expiry and a refused secret. Cheap (one worker, three jobs): part of the fast run."""

from __future__ import annotations

import signal
from typing import Any

from sfsim.testing import DEFAULT_CLIENT_SECRET, SimulatorClient

from tests.support.job_client import JobClient
from tests.support.workers import WorkerProcess
from worker.settings import Settings

SEARCH = {"v": 1, "operation": "search", "soql": "SELECT Id FROM Case"}


async def test_no_secret_or_token_in_any_log_line(
    settings: Settings,
    spawn_worker: Any,
    jobs: JobClient,
    simulator: SimulatorClient,
) -> None:
    """DEBUG logs of a worker that fetched tokens, refreshed them after expiry and met a wrong
    secret hold neither the client secrets, the refresh token, the AMQP password nor any access
    token the simulator issued."""
    worker: WorkerProcess = spawn_worker(settings, log_level="DEBUG")
    await worker.wait_ready()
    assert simulator.state is not None
    issued: set[str] = set()
    assert (await jobs.call({**SEARCH, "job_id": "s1"}))["status"] == "no_data"
    issued |= set(simulator.state.auth.access)
    await simulator.expire_sessions()
    assert (await jobs.call({**SEARCH, "job_id": "s2"}))["status"] == "no_data"
    issued |= set(simulator.state.auth.access)
    await simulator.set_client("sim-client-id", "rotated-secret-xyz")  # ours is now wrong
    await simulator.expire_sessions()
    failed = await jobs.call({**SEARCH, "job_id": "s3"})
    assert failed["error"]["code"] == "AUTH_FAILED"
    worker.proc.send_signal(signal.SIGTERM)
    assert await worker.wait_exit(30) == 0
    assert len(issued) == 2
    logs = worker.log_path.read_text()
    assert "job answered" in logs  # the log is not empty
    secrets = [DEFAULT_CLIENT_SECRET, "rotated-secret-xyz", "guest:guest", *issued]
    leaked = [s for s in secrets if s in logs]
    assert not leaked
