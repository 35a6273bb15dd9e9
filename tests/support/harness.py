"""A Salesforce client wired to the simulator, and a job runner on it (`Harness`) that runs a job
dict through it as a worker would."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from worker.accounts import Accounts, load_accounts
from worker.app import token_manager
from worker.contract import AnyJob, BlockResult, parse_job
from worker.jobs import Execution, Incoming, admit
from worker.jobs.once import InsertGuard
from worker.observability.metrics import Metrics
from worker.salesforce.client import SalesforceClient
from worker.salesforce.connections import HEADROOM_PER_ACCOUNT, Connections
from worker.salesforce.http import create_session
from worker.settings import Settings
from worker.stores.memory_results import MemoryResultStore
from worker.stores.results import ResultStore


class JobRunner:
    """A job through the pipeline's admission and execution (no job-id binding): what the
    worker does with a job once it is admitted and claimed."""

    def __init__(self, accounts: Accounts, execution: Execution) -> None:
        self._accounts = accounts
        self._execution = execution

    async def run(self, job: AnyJob, incoming: Incoming) -> BlockResult:
        return await self._execution.run(admit(self._accounts, job, incoming.user_id), incoming)


class Harness:
    def __init__(
        self, runner: JobRunner, client: SalesforceClient, metrics: Metrics, accounts: Accounts
    ) -> None:
        self.account = next(iter(accounts.by_name.values()))
        self.runner = runner
        self.client = client
        self.metrics = metrics
        self._n = 0

    async def run(self, **job: Any) -> BlockResult:
        self._n += 1
        body = {"v": 1, "job_id": f"t-{self._n}", **job}
        now = time.time()
        incoming = Incoming(body=b"", received_wall=now, received_mono=time.monotonic())
        return await self.runner.run(parse_job(body), incoming)


@asynccontextmanager
async def open_harness(
    settings: Settings, accounts_file: Path, store: ResultStore | None = None
) -> AsyncIterator[Harness]:
    """A Harness on the accounts of `accounts_file`, wired as in worker.app; closed on exit."""
    accounts = load_accounts(accounts_file, allow_insecure_localhost=True)
    metrics = Metrics()
    metrics.initialise((a.name, a.flow.value) for a in accounts.by_name.values())
    session = create_session(settings, HEADROOM_PER_ACCOUNT * len(accounts))
    tokens = token_manager(session, settings, metrics)
    connections = Connections.of(
        accounts.by_name, settings.http_pool_size, settings.http_connect_timeout_seconds
    )
    client = SalesforceClient(session, tokens, settings, metrics, connections=connections)
    guard = InsertGuard(
        store
        if store is not None
        else MemoryResultStore(
            settings.result_cache_size,
            settings.result_cache_ttl_seconds,
            max_bytes=settings.result_cache_max_bytes,
        )
    )
    runner = JobRunner(accounts, Execution(client, guard, metrics))
    try:
        yield Harness(runner, client, metrics, accounts)
    finally:
        await client.close()
        await tokens.close()
        await session.close()
