"""A flood of one tenant beside another tenant's callers (issue 27), through real broker users.

One `sfworker run` process at its default settings in strict mode, logged in as a RabbitMQ user
of its own; two tenants, `flooder` (account `a`) and `caller` (account `b`), each with a RabbitMQ
user of its own and an org of its own (a simulator process each, answering at once). The users
are made with `rabbitmqctl` with the permissions of deploy/README.md's recipe (the same code the
tenancy tests use, tests/support/broker_users.py), and deleted after the trial.

Each trial, on fresh processes, after one warm-up job of each tenant (the tokens):
- tenant A (`flooder`, a process of its own: bench/e2e/flooder.py) publishes `jobs` quick
  searches at once (timeout 60 s) and collects their results;
- once the broker has confirmed them all, tenant B (`caller`, this process) publishes 20
  searches a second for 10 s with the contract's default deadline (`timeout_ms` 8,000) and
  times each from its publish to its result.

*before*: both tenants publish to the shared request queue (the request exchange), where the
fair share's lanes are all that separates them, as before issue 27; *after*: each publishes to
its own tenant queue (the tenant exchange, under the routing key of its user). The worker is
the same in both: only where the tenants publish differs.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
from sfsim.testing import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, SimulatorClient

from bench.e2e.broker import Broker
from bench.e2e.burst import lane_moves
from bench.e2e.jobs import ACME, search_job
from bench.e2e.procs import Child, start_simulator
from bench.e2e.report import Trial, _f, _select, table
from bench.e2e.runs import percentile
from bench.e2e.systems import Context, Sfworker, SfworkerOptions, free_port
from tests.support.broker_users import (
    BrokerUsers,
    tenant_permissions,
    tenant_topic_permission,
    worker_permissions,
)
from worker.client import BlockClient
from worker.runtime import topology
from worker.settings import Settings

TENANTS = {"flooder": "a", "caller": "b"}  # tenant -> its account
B_RATE = 20.0  # jobs/s of tenant B
B_SECONDS = 10
B_TIMEOUT_MS = 8000  # the contract's default deadline
A_TIMEOUT_MS = 60_000
A_WAIT = 240.0  # seconds after A's last confirm to wait for A's results
B_WAIT = 30.0  # seconds to wait for one of B's results
EXPECTED = 3  # records of the right answer
TARGET = {False: "shared request queue (before)", True: "own tenant queue (after)"}


def rabbitmqctl_missing(amqp_url: str) -> str | None:
    """Why the section cannot run here (its users are made with rabbitmqctl), or None."""
    if shutil.which("rabbitmqctl") is None:
        return "rabbitmqctl is not on PATH (the flood's broker users are made with it)"
    if "127.0.0.1" not in amqp_url:
        return "the broker is not the local one"
    return None


class TwoTenants(Sfworker):
    """sfworker in strict mode: two tenants, an account and an org each; it logs in as its own
    user and keeps its /metrics port (the lane moves are read from it)."""

    def __init__(self, ctx: Context, tag: str) -> None:
        super().__init__(ctx, tag, SfworkerOptions(label="sfworker, strict mode, 2 tenants"))
        self.names["TENANT_EXCHANGE"] = f"{self.queue}.tenants"
        self.port = 0
        self.worker_url = ctx.amqp_url

    @property
    def settings(self) -> Settings:
        return Settings(amqp_url=self.ctx.amqp_url, **{k.lower(): v for k, v in self.names.items()})

    def write_accounts(self, orgs: dict[str, str], users: dict[str, str]) -> None:
        lines = []
        for tenant, account in TENANTS.items():
            lines += [
                f"[accounts.{account}]",
                f'tenant = "{tenant}"',
                "default = true",
                f'instance_url = "{orgs[tenant]}"',
                'flow = "client_credentials"',
                f'client_id = "{DEFAULT_CLIENT_ID}"',
                f'client_secret = "{DEFAULT_CLIENT_SECRET}"',
                "",
                f"[tenants.{tenant}]",
                f'amqp_users = ["{users[tenant]}"]',
                "",
            ]
        self.accounts.write_text("\n".join(lines), encoding="utf-8")

    def start(self) -> None:
        self.port = free_port()
        env = {
            **self.settings_env(),
            "SFWORKER_AMQP_URL": self.worker_url,
            "SFWORKER_HTTP_PORT": str(self.port),
        }
        self.children.append(Child("sfworker-1", [sys.executable, "-m", "worker", "run"], env))

    def queues(self) -> list[str]:
        s = self.settings
        return [
            s.request_queue,
            s.dead_letter_queue,
            *(topology.lane_queue(s, account) for account in TENANTS.values()),
            *(topology.tenant_queue(s, tenant) for tenant in TENANTS),
        ]

    async def cleanup(self, broker: Any) -> None:
        await super().cleanup(broker)
        await broker.delete(self.queues(), [self.names["TENANT_EXCHANGE"]])


def _outcome(result: dict[str, Any]) -> str:
    code = (result.get("error") or {}).get("code")
    if code:
        return str(code)
    if result.get("status") == "ok" and len(result.get("records") or []) == EXPECTED:
        return "ok"
    return f"wrong ({result.get('status')})"


async def _wait_line(child: Child, prefix: str, within: float) -> str:
    give_up = time.monotonic() + within
    while True:
        for line in child.tail(10_000).splitlines():
            if line.startswith(prefix):
                return line
        if not child.alive() or time.monotonic() > give_up:
            raise RuntimeError(f"{child.name} never said {prefix!r}:\n{child.tail()}")
        await asyncio.sleep(0.05)


async def _tenant_b(client: BlockClient, tag: str) -> list[tuple[float, float, str]]:
    """20 jobs a second for 10 s, each timed from its publish to its result: (seconds since
    B's first publish, latency in seconds, outcome) per job."""
    start = time.monotonic()

    async def one(i: int) -> tuple[float, float, str]:
        sent = time.monotonic()
        try:
            job_id = await client.publish(
                search_job(f"{tag}-b-{i}", TENANTS["caller"], B_TIMEOUT_MS)
            )
            result = await client.raw_result(job_id, B_WAIT)
        except TimeoutError:
            return sent - start, time.monotonic() - sent, "unanswered"
        return sent - start, time.monotonic() - sent, _outcome(result)

    tasks = []
    for i in range(int(B_RATE * B_SECONDS)):
        await asyncio.sleep(max(0.0, start + i / B_RATE - time.monotonic()))
        tasks.append(asyncio.create_task(one(i)))
    return await asyncio.gather(*tasks)


async def flood_trial(ctx: Context, broker: Broker, tenant_queues: bool, jobs: int) -> Trial:
    """One trial; every user, queue and process it made is gone when it returns."""
    tag = f"flood-{'after' if tenant_queues else 'before'}-{uuid.uuid4().hex[:4]}"
    sims = {tenant: start_simulator(f"sim-{tenant}") for tenant in TENANTS}
    orgs = {tenant: SimulatorClient(url) for tenant, (_, url) in sims.items()}
    system = TwoTenants(ctx, tag)
    made = BrokerUsers(ctx.amqp_url)
    flooder: Child | None = None
    out: Trial = {
        "system": system.label,
        "tenant_queues": tenant_queues,
        "target": TARGET[tenant_queues],
        "a_jobs": jobs,
        "load_at_start": os.getloadavg(),
    }
    try:
        for org in orgs.values():
            await org.seed("Account", [{"Name": "Acme"}] * EXPECTED + [{"Name": "Globex"}])
            await org.set_latency(0, token_ms=0)
            await org.set_daily_limit(1_000_000_000)
        s = system.settings
        topic = tenant_topic_permission(s)
        users = {tenant: made.name(f"bench-{tenant}") for tenant in TENANTS}
        urls = {t: made.add(u, tenant_permissions(s, u), topic) for t, u in users.items()}
        system.worker_url = made.add(made.name("bench-sfworker"), worker_permissions(s))
        system.write_accounts({t: url for t, (_, url) in sims.items()}, users)
        await system.prepare(broker)
        system.start()
        for queue in (s.request_queue, *(topology.tenant_queue(s, t) for t in TENANTS)):
            try:
                await broker.wait_consumers(queue, 1, 90, declared=False)
            except RuntimeError:
                raise RuntimeError(f"{system.label} did not start:\n{system.logs()}") from None

        def client(tenant: str, own: bool) -> Any:
            return BlockClient.connect(
                urls[tenant],
                exchange=s.request_exchange,
                routing_key=s.request_routing_key,
                tenant_queue=own,
                tenant_exchange=s.tenant_exchange,
            )

        # Warm-up: one job of each tenant by each way in (the tokens; the topology is right).
        for tenant, account in TENANTS.items():
            for own in (False, True):
                async with client(tenant, own) as warm:
                    result = await warm.raw_result(
                        await warm.publish(
                            search_job(f"{tag}-warm-{tenant}-{own}", account, 30_000)
                        ),
                        60,
                    )
                    if _outcome(result) != "ok":
                        raise RuntimeError(f"warm-up of {tenant} answered {result}")

        a_out = Path(ctx.workdir) / f"{tag}-a.json"
        env = {
            "BENCH_AMQP_URL": urls["flooder"],
            "BENCH_EXCHANGE": s.request_exchange,
            "BENCH_ROUTING_KEY": s.request_routing_key,
            "BENCH_TENANT_QUEUE": "1" if tenant_queues else "0",
            "BENCH_TENANT_EXCHANGE": s.tenant_exchange,
            "BENCH_ACCOUNT": TENANTS["flooder"],
            "BENCH_SOQL": ACME,
            "BENCH_EXPECTED": str(EXPECTED),
            "BENCH_JOBS": str(jobs),
            "BENCH_WAIT": str(A_WAIT),
            "BENCH_TAG": tag,
            "BENCH_OUT": str(a_out),
        }
        async with client("caller", tenant_queues) as b:
            cpu_before = system.cpu()
            flooder = Child("flooder", [sys.executable, "-m", "bench.e2e.flooder"], env)
            await _wait_line(flooder, "published ", 300)
            b_started = time.time()
            b_done = await _tenant_b(b, tag)
        await _wait_line(flooder, "done", A_WAIT + 60)
        worker_cpu = system.cpu() - cpu_before  # A's jobs and B's, from A's first publish
        a = orjson.loads(a_out.read_bytes())
        latencies = sorted(seconds * 1000 for _, seconds, _ in b_done)
        b_outcomes = Counter(outcome for _, _, outcome in b_done)
        a_answered = sum(n for k, n in a["outcomes"].items() if k != "unanswered")
        out.update(
            {
                "b_jobs": len(b_done),
                "b_p50_ms": percentile(latencies, 50),
                "b_p99_ms": percentile(latencies, 99),
                "b_max_ms": latencies[-1],
                "b_outcomes": dict(b_outcomes),
                # Each of B's jobs: [s after B's first publish, latency ms], to tell a stall of
                # the machine (a clump) from a steady cost.
                "b_jobs_ms": [[round(at, 3), round(lat * 1000, 1)] for at, lat, _ in b_done],
                "b_timeouts": b_outcomes.get("TIMEOUT", 0),
                "a_outcomes": a["outcomes"],
                "a_answered": a_answered,
                "a_refused": a["refused"],
                "a_publish_failed": a["publish_failed"],
                "a_publish_s": a["published"] - a["started"],
                "a_drain_s": (a["last_result"] or a["published"]) - a["started"],
                "b_started_after_a_s": b_started - a["started"],
                "worker_cpu_s_per_1000": worker_cpu / (jobs + len(b_done)) * 1000,
                "lane_moves": await lane_moves(system.port),
                "dead_lettered": await broker.depth(s.dead_letter_queue),
            }
        )
    finally:
        if flooder is not None:
            flooder.stop()
        system.stop()
        await system.cleanup(broker)
        made.delete_all()
        for org in orgs.values():
            await org.close()
        for child, _ in sims.values():
            child.stop()
        out["load_at_end"] = os.getloadavg()
    return out


def render_flood(trials: list[Trial]) -> str:
    """One row per trial: the flood is read trial by trial, not as a median."""
    flood = _select(trials, "flood")
    if not flood:
        return ""
    rows = []
    for t in sorted(flood, key=lambda t: (t["tenant_queues"], t["rep"])):
        others = sum(n for k, n in t["b_outcomes"].items() if k not in ("ok", "TIMEOUT"))
        rows.append(
            [
                t["target"],
                str(t["rep"]),
                _f(t["b_p50_ms"], 0),
                _f(t["b_p99_ms"], 0),
                _f(t["b_max_ms"], 0),
                f"{t['b_timeouts']} of {t['b_jobs']}",
                str(others),
                f"{t['a_answered']:,} of {t['a_jobs']:,}",
                str(t["a_refused"]),
                _f(t["a_publish_s"], 1),
                _f(t["a_drain_s"], 1),
                f"{t['lane_moves']:,}",
                _f(t.get("worker_cpu_s_per_1000"), 2),
                f"{t['load_at_start'][0]:.2f} / {t['load_at_end'][0]:.2f}",
            ]
        )
    jobs = flood[0]["a_jobs"]
    return (
        "### A flood of one tenant beside another's callers (strict mode, real broker users)\n\n"
        f"Tenant A publishes {jobs:,} searches at once; then tenant B publishes "
        f"{B_RATE:.0f} a second for {B_SECONDS} s (deadline {B_TIMEOUT_MS:,} ms); B's latency "
        "is from its publish to its result.\n\n"
        + table(
            [
                "tenants publish to",
                "rep",
                "B p50 ms",
                "B p99 ms",
                "B max ms",
                "B TIMEOUT",
                "B other failures",
                "A answered",
                "A refused",
                "A published in s",
                "A drained in s",
                "lane moves",
                "worker CPU s / 1000 jobs",
                "load 1 min start / end",
            ],
            rows,
        )
    )
