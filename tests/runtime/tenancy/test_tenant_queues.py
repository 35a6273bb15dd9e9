"""Issue 27: a request queue per tenant, authorised and bounded by RabbitMQ. Tenants publish to
the tenant exchange under a routing key of their own user; the broker refuses any other key
(topic permissions), refuses a publish past the tenant queue's bound (a negative confirm to that
publisher alone), and every worker consumes each tenant's queue with its own prefetch, so one
tenant's flood never delays another tenant's callers."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aio_pika
import aiormq
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from sfsim.testing import SimulatorClient

from tests.support.queues import queue_depth
from tests.support.tenants import Users, client_as, search
from tests.support.waiting import wait_until
from tests.support.workers import WorkerProcess
from worker.app import Worker
from worker.client import QueueFull
from worker.runtime.topology import tenant_queue, tenant_routing_key
from worker.settings import Settings


def found(result: dict[str, Any]) -> tuple[str, str | None, list[str]]:
    return result["status"], result["account"], [r["Name"] for r in result["records"] or []]


async def _worker_with(settings: Settings, users: Users, **changes: Any) -> Worker:
    running = Worker(
        settings.model_copy(update={"amqp_url": SecretStr(users.worker_url), **changes})
    )
    await running.start()
    return running


async def test_each_tenant_s_jobs_run_from_its_own_queue(
    worker: Worker,
    settings: Settings,
    users: Users,
    amqp: aio_pika.abc.AbstractRobustConnection,
    simulator: SimulatorClient,
    globex_sim: SimulatorClient,
) -> None:
    await simulator.seed("Contact", [{"FirstName": "Ada", "LastName": "Acme"}])
    await globex_sim.seed("Contact", [{"FirstName": "Grace", "LastName": "Globex"}])
    for tenant in ("acme", "globex"):
        _ready, consumers = await queue_depth(amqp, tenant_queue(settings, tenant))
        assert consumers == 1  # this worker consumes every tenant's queue
    async with (
        client_as(users.acme_url, settings, tenant_queue=True) as acme,
        client_as(users.globex_url, settings, tenant_queue=True) as globex,
    ):
        assert found(await acme.call(search("tq-acme"))) == ("ok", "main", ["Ada Acme"])
        assert found(await globex.call(search("tq-globex"))) == ("ok", "globex", ["Grace Globex"])
        # The shared request queue still serves a tenant that has not moved yet.
        async with client_as(users.acme_url, settings) as shared:
            assert found(await shared.call(search("shared"))) == ("ok", "main", ["Ada Acme"])


async def test_a_tenant_cannot_publish_under_another_tenant_s_key(
    worker: Worker, settings: Settings, users: Users
) -> None:
    body = orjson.dumps(search("forged-route"))
    connection = await aio_pika.connect(users.acme_url, timeout=10)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(settings.tenant_exchange, ensure=False)
        own = tenant_routing_key(settings, users.acme)
        await exchange.publish(aio_pika.Message(body, user_id=users.acme), routing_key=own)
        theirs = tenant_routing_key(settings, users.globex)
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
            await exchange.publish(aio_pika.Message(body, user_id=users.acme), routing_key=theirs)


async def test_a_tenant_over_its_bound_is_refused_and_the_others_are_served(
    settings: Settings,
    users: Users,
    simulator: SimulatorClient,
    globex_sim: SimulatorClient,
) -> None:
    await simulator.set_latency(1500)  # acme's org is slow: its queue fills
    running = await _worker_with(settings, users, tenant_queue_max_length=3, tenant_prefetch=1)
    try:
        async with (
            client_as(users.acme_url, settings, tenant_queue=True) as acme,
            client_as(users.globex_url, settings, tenant_queue=True) as globex,
        ):
            flood = [search(f"flood-{i}", timeout_ms=30_000) for i in range(12)]
            # One after another, each confirmed (a quorum queue applies its bound as it
            # commits: publishes already on their way when it fills may still go in).
            published: list[str | BaseException] = []
            for job in flood:
                try:
                    published.append(await acme.publish(job))
                except QueueFull as exc:
                    published.append(exc)
            refused = [p for p in published if isinstance(p, QueueFull)]
            taken = [p for p in published if isinstance(p, str)]
            assert len(refused) + len(taken) == len(flood), published
            assert refused, "the broker took more than the tenant queue's bound"
            assert "is full" in str(refused[0])
            # Globex is served at once meanwhile, from its own queue.
            started = time.monotonic()
            answers = await asyncio.gather(*(globex.call(search(f"g-{i}")) for i in range(5)))
            assert [a["status"] for a in answers] == ["no_data"] * 5
            assert time.monotonic() - started < 1.5  # less than one of acme's calls
            # Every job the broker took for acme is answered.
            done = await asyncio.gather(*(acme.result(job_id, 60) for job_id in taken))
            assert {d["status"] for d in done} == {"no_data"}
    finally:
        await running.stop()


@pytest.fixture
async def started_flood_worker(
    settings: Settings, users: Users, spawn_worker: Any, simulator: SimulatorClient
) -> WorkerProcess:
    """`sfworker run` in a process of its own, as the worker's user."""
    worker: WorkerProcess = spawn_worker(
        settings.model_copy(update={"amqp_url": SecretStr(users.worker_url)})
    )
    await worker.wait_ready()
    return worker


def _answered(exposition: str) -> float:
    """Jobs the worker answered, by its sfworker_jobs_total."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(exposition)
        if family.name == "sfworker_jobs"
        for sample in family.samples
        if sample.name == "sfworker_jobs_total"
    )


@pytest.mark.slow
async def test_a_flood_of_one_tenant_costs_the_other_nothing(
    started_flood_worker: WorkerProcess,
    settings: Settings,
    users: Users,
) -> None:
    """Tenant A puts 10,000 quick jobs in its queue at once; then tenant B publishes 20 jobs a
    second for 10 s: B's callers are answered as if A were quiet, and all of A's jobs too. (A's
    results go to the results exchange, not back to this process, whose loop times B.)"""
    worker = started_flood_worker
    async with (
        client_as(users.acme_url, settings, tenant_queue=True) as acme,
        client_as(users.globex_url, settings, tenant_queue=True) as globex,
    ):
        flood = [search(f"a-{i}", timeout_ms=60_000) for i in range(10_000)]
        for start in range(0, len(flood), 500):
            await asyncio.gather(
                *(acme.publish(job, reply=False) for job in flood[start : start + 500])
            )
        latencies: list[float] = []

        async def one(i: int) -> dict[str, Any]:
            sent = time.monotonic()
            result = await globex.call(search(f"b-{i}"), 30)
            latencies.append(time.monotonic() - sent)
            return result

        calls = []
        for i in range(200):
            calls.append(asyncio.create_task(one(i)))
            await asyncio.sleep(0.05)
        b_results = await asyncio.gather(*calls)
        assert [r["status"] for r in b_results] == ["no_data"] * 200
        latencies.sort()
        p50, p99 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99) - 1]
        print(f"\ntenant B while A floods: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms")
        assert p99 < 0.25

        async def all_answered() -> bool:
            return _answered(await worker.metrics()) >= len(flood) + 200

        await wait_until(all_answered, 120, "every job of tenant A answered")
