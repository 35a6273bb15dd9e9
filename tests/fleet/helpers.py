"""What the fleet tests share: `Fleet`, the one fixture object of a fleet test (its broker
topology, its Redis prefix, its simulator, the workers it starts and the jobs it sends), and the
jobs they send."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sfsim.testing import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_REFRESH_TOKEN,
    SimulatorClient,
)

from tests.support.accounts import write_accounts
from tests.support.job_client import JobClient
from tests.support.settings import make_settings
from tests.support.waiting import wait_until
from tests.support.workers import WorkerProcess
from worker.settings import Settings

SOQL = "SELECT Id, Name FROM Account WHERE Name = 'Acme'"


def searches(tag: str, n: int, timeout_ms: int = 60000) -> list[dict[str, Any]]:
    """`n` searches for the account Acme, job ids `tag-0`, `tag-1`, ... Each its own query (a
    LIMIT of its own, far above the one record): identical reads would share one call and
    lookups of one shape one query, and these tests need the fleet's calls in flight."""
    return [
        {
            "v": 1,
            "job_id": f"{tag}-{i}",
            "operation": "search",
            "soql": f"{SOQL} LIMIT {100 + i}",
            "timeout_ms": timeout_ms,
        }
        for i in range(n)
    ]


def insert(job_id: str, timeout_ms: int = 60000) -> dict[str, Any]:
    """An insert of a Case whose Subject is the job id."""
    return {
        "v": 1,
        "job_id": job_id,
        "operation": "insert",
        "object": "Case",
        "fields": {"Subject": job_id},
        "timeout_ms": timeout_ms,
    }


@dataclass
class Fleet:
    """A fleet test's world. `settings` are the fleet's: the test's topology and accounts file,
    the shared Redis under the test's own key prefix. Workers started with `spawn` or `start`
    are stopped, and the topology deleted, after the test."""

    amqp_url: str
    names: dict[str, str]
    redis_url: str
    redis_prefix: str
    accounts_file: Path
    tmp_path: Path
    simulator: SimulatorClient
    jobs: JobClient
    spawn: Callable[..., WorkerProcess]
    settings: Settings

    def settings_with(self, accounts_file: Path | None = None, **kw: Any) -> Settings:
        """Settings of the test's topology with `accounts_file` (else the test's) and exactly
        the keywords given: no Redis unless `redis_url` is one of them."""
        return make_settings(self.amqp_url, self.names, accounts_file or self.accounts_file, **kw)

    def write_accounts(
        self, name: str = "fleet.toml", extra: str = "", flow: str = "client_credentials"
    ) -> Path:
        """An accounts file `name` whose account `main` talks to the test's simulator, with
        `extra` lines (e.g. "max_concurrency = 8") and `flow`."""
        return write_accounts(self.tmp_path / name, self.simulator.base_url, extra=extra, flow=flow)

    def configure(
        self,
        extra: str = "",
        flow: str = "client_credentials",
        accounts: str = "fleet.toml",
        **kw: Any,
    ) -> Settings:
        """The fleet's settings with an accounts file (named `accounts`) whose account `main`
        has `extra` lines (e.g. "max_concurrency = 8") and `flow`; keywords are further settings
        (`redis_url` and `redis_prefix` too, for a Redis of the test's own)."""
        path = self.write_accounts(accounts, extra=extra, flow=flow)
        fleet: dict[str, Any] = {"redis_url": self.redis_url, "redis_prefix": self.redis_prefix}
        return self.settings_with(path, **{**fleet, **kw})

    async def start(
        self, n: int, settings: Settings | None = None, **kw: Any
    ) -> list[WorkerProcess]:
        """`n` workers with `settings` (else the fleet's) and the overrides `kw`, all ready."""
        workers = [self.spawn(settings or self.settings, **kw) for _ in range(n)]
        for worker in workers:
            await worker.wait_ready()
        return workers

    async def rotating_org(self) -> None:
        """The simulator's client rotates refresh tokens (the chain starts at the default
        token), and the org holds the account Acme the searches find."""
        await self.simulator.set_client(
            DEFAULT_CLIENT_ID,
            DEFAULT_CLIENT_SECRET,
            rotation=True,
            refresh_tokens=[DEFAULT_REFRESH_TOKEN],
        )
        await self.simulator.seed("Account", [{"Name": "Acme"}])

    async def answers(self, batch: list[dict[str, Any]]) -> list[str]:
        """Wait for every job of the batch to be answered; the statuses in the batch's order."""
        wanted = {b["job_id"] for b in batch}

        async def answered() -> bool:
            return wanted <= {r["job_id"] for r in self.jobs.results}

        await wait_until(answered, 90, f"{len(batch)} answers")
        by_id = {r["job_id"]: r for r in self.jobs.results}
        return [by_id[b["job_id"]]["status"] for b in batch]

    async def run_all(self, batch: list[dict[str, Any]]) -> list[str]:
        """Publish the batch at once; its statuses once every job is answered."""
        await asyncio.gather(*(self.jobs.publish(body) for body in batch))
        return await self.answers(batch)

    async def expire_mid_flight(self, batch: list[dict[str, Any]]) -> list[str]:
        """Publish the batch, expire every session while many of its calls are in flight."""
        await asyncio.gather(*(self.jobs.publish(body) for body in batch))

        async def busy() -> bool:
            # Coalesced: each request in flight carries up to 5 searches (8 requests: ~40
            # searches).
            return int((await self.simulator.counters())["in_flight"]) >= 8

        await wait_until(busy, 30, "40 searches in flight")
        await self.simulator.expire_sessions()
        return await self.answers(batch)
