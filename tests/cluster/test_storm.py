"""Acceptance (issue 10): the fault storm. Three workers on a three-node cluster with a Redis of
their own take a steady load of all six operations while the simulator does a seeded random mix
of faults to chosen jobs (503s, UNABLE_TO_LOCK_ROW, concurrent-request limits, latency spikes
past the deadline, answers dropped after processing, expired sessions); in the same run Redis is
restarted, a worker is killed with SIGKILL (and replaced) and the broker is restarted; and three
links are stalled (a partition: connections open, nothing goes through) through TCP proxies:
one worker's broker link, another's Redis link, and the Salesforce connections open at the time.

Then, for every job: answered, and as the contract says for what the simulator did to it (a job
a kill, a restart or a stall caught in flight may also have the answers such a crash allows);
several answers only when identical or for such a job; no record written twice; nothing left in
a queue.
The seed is printed (SFWORKER_STORM_SEED=... replays the plan)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from sfsim.testing import SimulatorClient

from tests.cluster.helpers import Cluster
from tests.cluster.storm import (
    OPERATIONS,
    Caller,
    Plan,
    allowed_when_disturbed,
    expected,
    inject,
    job_body,
    make_plans,
)
from tests.support import ROOT
from tests.support.accounts import write_accounts
from tests.support.redis_server import RedisServer
from tests.support.settings import make_settings
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import wait_until
from tests.support.workers import WorkerProcess
from worker.runtime import brokers, topology

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

JOBS = int(os.environ.get("SFWORKER_STORM_JOBS") or 360)
PACE = 0.16  # seconds between two jobs: about 6 jobs a second, the load outlasting every fault
TIMEOUT_MS = 5000
ATTEMPTS = 3  # SFWORKER_MAX_ATTEMPTS of the workers
RESULT_SCHEMA = json.loads((ROOT / "contracts" / "result.schema.json").read_text())


def _seed() -> int:
    given = os.environ.get("SFWORKER_STORM_SEED")
    return int(given) if given else random.SystemRandom().randrange(1, 2**31)


async def _seed_records(simulator: SimulatorClient, plans: list[Plan]) -> list[Plan]:
    """A Case of its own for every get, update and delete job."""
    needing = [p for p in plans if p.operation in ("get", "update", "delete")]
    ids = await simulator.seed("Case", [{"Subject": f"seed-{p.marker}"} for p in needing])
    by_index = {p.index: record_id for p, record_id in zip(needing, ids, strict=True)}
    return [
        Plan(p.index, p.operation, p.kind, p.count, p.marker, by_index.get(p.index)) for p in plans
    ]


async def test_fault_storm(
    rabbit_cluster: Cluster,
    names: dict[str, str],
    durable_redis: RedisServer,
    cluster_workers: Any,
    simulator: SimulatorClient,
    tmp_path: Path,
) -> None:
    seed = _seed()
    print(f"\nfault storm seed {seed} (replay: SFWORKER_STORM_SEED={seed})")
    rng = random.Random(seed)
    plans = await _seed_records(simulator, make_plans(rng, JOBS, ATTEMPTS))
    # When the three infrastructure faults strike, seconds after the load starts; apart by
    # more than a job's life, so that one job meets at most one of them.
    # The link stalls in between: worker 2's broker link (its first address goes through a
    # proxy), worker 3's Redis link, the open Salesforce connections; each a few seconds. Each
    # fault ends more than a job's life (5 s) before the next begins: two faults on one job (an
    # insert sent during a Redis fallback, redelivered by a broker restart before the fallback's
    # write-back) are a known limit of the fallback (docs/runbook.md, Redis down), not a storm.
    redis_at, kill_at, restart_at = 3 + rng.random(), 23 + rng.random(), 41 + rng.random()
    stalls = {
        "broker link stall": 10 + rng.random(),
        "Redis link stall": 30 + rng.random(),
        "Salesforce link stall": 51 + rng.random(),
    }
    # Long enough for the broker stall to be noticed (two heartbeats of 2 s, then the close).
    stall_for = {name: 2.5 + rng.random() for name in stalls}
    stall_for["broker link stall"] = 5 + rng.random()

    sim_port = int(simulator.base_url.rsplit(":", 1)[1])
    proxies = {
        "broker link stall": TcpProxy("127.0.0.1", rabbit_cluster.base + 1),  # node 2
        "Redis link stall": TcpProxy("127.0.0.1", durable_redis.port),
        "Salesforce link stall": TcpProxy("127.0.0.1", sim_port),
    }
    for proxy in proxies.values():
        await proxy.start()
    port_of = {name: proxy.port for name, proxy in proxies.items()}
    # Every worker reaches the org through the Salesforce proxy: the fleet's tokens, results
    # and insert claims are scoped to the org's address, so workers of one fleet share it.
    # The oracle (storm.expected) gives each job the answer to its own faults, so each job's
    # call travels alone: no Composite coalescing (a latency spike on one subrequest delays the
    # whole Composite answer, as on Salesforce, and every job in it), no merged lookups or
    # shared reads. Those mechanisms have their own tests (tests/salesforce/test_coalescing.py,
    # test_lookup_oracle.py, tests/unit/test_coalesce.py).
    proxied_accounts = write_accounts(
        tmp_path / "proxied-accounts.toml",
        f"http://127.0.0.1:{port_of['Salesforce link stall']}",
        extra="coalesce = false\nmerge_lookups = false\nshare_reads = false\n",
    )
    settings = make_settings(
        rabbit_cluster.urls(),
        names,
        proxied_accounts,
        redis_url=durable_redis.url,
        redis_prefix=f"sfworker-storm-{uuid.uuid4().hex[:8]}:",
        redis_retry_seconds=0.5,
        max_attempts=ATTEMPTS,
        retry_base_ms=50,
        retry_cap_ms=300,
        prefetch=20,
        coalesce_policy="window",
    )
    connection = await brokers.connect_robust(
        rabbit_cluster.urls().split(","), attempt_timeout=10, reconnect_interval=0.5
    )
    through_proxy = {
        # Worker 2: node 2 through the proxy first, then the others directly.
        2: {
            "amqp_url": ",".join(
                [
                    f"amqp://guest:guest@127.0.0.1:{port_of['broker link stall']}/",
                    rabbit_cluster.url(3),
                    rabbit_cluster.url(1),
                ]
            ),
        },
        3: {"redis_url": f"redis://127.0.0.1:{port_of['Redis link stall']}/0"},
    }
    try:
        await topology.declare(await connection.channel(), settings)
        await simulator.set_latency(30, jitter_ms=40)
        workers: list[WorkerProcess] = [
            cluster_workers(
                settings,
                **{"amqp_url": rabbit_cluster.urls(first=n), **through_proxy.get(n, {})},
            )
            for n in (1, 2, 3)
        ]
        await asyncio.gather(*(w.wait_ready(60) for w in workers))

        caller = Caller(await connection.channel(), settings, f"{settings.request_queue}.replies")
        await caller.start()
        events: dict[str, tuple[float, float]] = {}
        started = time.monotonic()

        async def load() -> None:
            for plan in plans:
                await inject(simulator, plan, TIMEOUT_MS)
                await caller.publish(job_body(plan, TIMEOUT_MS))
                await asyncio.sleep(PACE)

        async def storm() -> None:
            await asyncio.sleep(max(0.0, started + redis_at - time.monotonic()))
            begin = time.monotonic()
            durable_redis.kill()
            await durable_redis.start()
            events["redis restart"] = (begin, time.monotonic())

            await asyncio.sleep(max(0.0, started + kill_at - time.monotonic()))
            begin = time.monotonic()
            workers[0].proc.kill()
            await workers[0].wait_exit(10)
            events["worker SIGKILL"] = (begin, time.monotonic())
            replacement = cluster_workers(settings, amqp_url=rabbit_cluster.urls(first=1))
            await replacement.wait_ready(60)
            workers.append(replacement)

            await asyncio.sleep(max(0.0, started + restart_at - time.monotonic()))
            begin = time.monotonic()
            await rabbit_cluster.arun("restart")
            events["broker restart"] = (begin, time.monotonic())

        async def stall(name: str) -> None:
            proxy = proxies[name]
            await asyncio.sleep(max(0.0, started + stalls[name] - time.monotonic()))
            begin = time.monotonic()
            # Salesforce: the connections open now hang, new ones go through.
            proxy.stall(new_connections=name != "Salesforce link stall")
            await asyncio.sleep(stall_for[name])
            proxy.resume()
            events[name] = (begin, time.monotonic())

        await asyncio.wait_for(
            asyncio.gather(load(), storm(), *(stall(name) for name in stalls)), 240
        )
        job_ids = {p.job_id for p in plans}

        async def all_answered() -> bool:
            return job_ids <= set(caller.answers())

        await wait_until(all_answered, 120, "every job answered")
        # Latency spikes finish on the simulator after the worker gave up: wait them out.
        await asyncio.sleep(TIMEOUT_MS / 1000 + 2)
        queue_left = await rabbit_cluster.messages(settings.request_queue)
        dead_left = await rabbit_cluster.messages(settings.dead_letter_queue)
        cases = Counter(r["Subject"] for r in await simulator.records("Case"))
        accounts = Counter(r.get("External_Id__c") for r in await simulator.records("Account"))
        fault_rules = await simulator.faults()
    finally:
        with contextlib.suppress(Exception):
            channel = await connection.channel()
            await channel.queue_delete(f"{settings.request_queue}.replies")
            await topology.delete(channel, settings)
        await connection.close()
        for proxy in proxies.values():
            await proxy.cut()

    # --- judge every job -----------------------------------------------------------------
    disturbing = [
        window
        for name, window in events.items()
        if name in ("worker SIGKILL", "broker restart", *stalls)
    ]

    def disturbed(job_id: str) -> bool:
        if job_id in caller.publish_retried:
            return True
        sent, answered = caller.published_at[job_id], caller.answered_at[job_id]
        # The aftermath of a fault lasts up to a job's life: workers reconnect, and the jobs
        # redelivered by it share Composite requests (and their faults) with the jobs sent next.
        after = TIMEOUT_MS / 1000
        return any(sent <= end + after and answered >= begin for begin, end in disturbing)

    by_job: dict[str, list[dict[str, Any]]] = {}
    for result in caller.results:
        jsonschema.validate(result, RESULT_SCHEMA)
        by_job.setdefault(str(result["job_id"]), []).append(result)
    wrong: list[str] = []
    differing: list[str] = []
    outcome_unknown = 0
    shifted = 0  # caught by a kill, restart or stall, and answered otherwise than undisturbed
    for plan in plans:
        answers = by_job[plan.job_id]
        got = {(r["status"], (r["error"] or {}).get("code")) for r in answers}
        shaken = disturbed(plan.job_id)
        allowed = allowed_when_disturbed(plan, ATTEMPTS) if shaken else {expected(plan, ATTEMPTS)}
        if shaken and got != {expected(plan, ATTEMPTS)}:
            shifted += 1
        if not got <= allowed:
            why = [(r["error"] or {}).get("message") for r in answers]
            wrong.append(f"{plan} disturbed={shaken}: got {sorted(got, key=str)} {why}")
        if any(r != answers[0] for r in answers) and not shaken:
            differing.append(plan.job_id)
        if ("failed", "OUTCOME_UNKNOWN") in got:
            outcome_unknown += 1
    twice = [s for s, n in cases.items() if n > 1] + [e for e, n in accounts.items() if e and n > 1]
    inserts_ok = [
        p for p in plans if p.operation == "insert" and by_job[p.job_id][0]["status"] == "ok"
    ]
    missing = [p.job_id for p in inserts_ok if cases[p.marker] != 1]

    answered = Counter(
        f"{r['status']}{'/' + r['error']['code'] if r['error'] else ''}" for r in caller.results
    )
    injected = Counter()
    for plan in plans:
        if plan.kind != "none":
            injected[plan.kind] += plan.count
    infrastructure = ", ".join(
        f"{name} at {b - started:.1f}-{e - started:.1f} s" for name, (b, e) in events.items()
    )
    print(
        f"fault storm seed {seed}: {len(plans)} jobs {dict(Counter(p.operation for p in plans))}"
        f"\n  jobs per planned fault: {dict(Counter(p.kind for p in plans))}"
        f"\n  fault answers injected per kind: {dict(injected)}"
        f"\n  infrastructure: {infrastructure}"
        f"\n  answers per status/code: {dict(sorted(answered.items()))}"
        f"\n  duplicate answers {sum(len(a) - 1 for a in by_job.values())}, jobs caught by a "
        f"kill, restart or stall {sum(disturbed(p.job_id) for p in plans)} (answered "
        f"otherwise than undisturbed: {shifted}), publish retries "
        f"{len(caller.publish_retried)}, OUTCOME_UNKNOWN inserts {outcome_unknown}, fault rules "
        f"left unused {len(fault_rules)}"
    )
    context = f"(seed {seed})"
    assert not wrong, f"{len(wrong)} wrong answers {context}: {wrong[:5]}"
    assert not differing, f"differing duplicate answers {context}: {differing[:5]}"
    assert not twice, f"records written twice {context}: {twice[:5]}"
    assert not missing, f"inserts answered ok without exactly one record {context}: {missing[:5]}"
    assert (queue_left, dead_left) == (0, 0), f"messages left {context}"
    for operation in OPERATIONS:
        assert any(p.operation == operation for p in plans)
