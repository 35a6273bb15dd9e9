"""Issue 12: tenant isolation the broker vouches for, against the real RabbitMQ with real users
(created with rabbitmqctl for each test and deleted after it): `rt-acme-<run>` and
`rt-globex-<run>` publish for tenants acme and globex, and the worker itself runs as
`sfworker-<run>`, each with the permissions of the recipe in deploy/README.md. Acme's account
`main` and globex's account `globex` talk to two separate simulators (two orgs)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aio_pika
import aiormq
import orjson
import pytest
from pydantic import SecretStr
from sfsim.testing import (
    SimulatorClient,
)

from tests.runtime.helpers import sample, sfworker
from tests.support.job_client import JobClient
from tests.support.settings import settings_env
from tests.support.tenants import Users, client_as, search
from tests.support.waiting import wait_until
from worker.app import Worker
from worker.settings import Settings


def found(result: dict[str, Any]) -> tuple[str, str | None, list[str]]:
    return result["status"], result["account"], [r["Name"] for r in result["records"] or []]


def refusal(result: dict[str, Any]) -> tuple[str, str]:
    assert result["status"] == "failed", result
    return result["error"]["code"], result["error"]["message"]


async def untouched(*sims: SimulatorClient) -> bool:
    """No token request and no REST call reached any of these orgs."""
    for sim in sims:
        counters = await sim.counters()
        if counters["token_requests_total"] or counters["requests_total"]:
            return False
    return True


def jobs_answered(worker: Worker) -> float:
    return sum(
        s.value
        for metric in worker.metrics.registry.collect()
        if metric.name == "sfworker_jobs"
        for s in metric.samples
        if s.name == "sfworker_jobs_total"
    )


async def test_each_tenant_runs_on_its_own_account_and_only_there(
    worker: Worker,
    settings: Settings,
    users: Users,
    simulator: SimulatorClient,
    globex_sim: SimulatorClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await simulator.seed("Contact", [{"FirstName": "Ada", "LastName": "Acme"}])
    await globex_sim.seed("Contact", [{"FirstName": "Grace", "LastName": "Globex"}])
    async with (
        client_as(users.acme_url, settings) as acme,
        client_as(users.globex_url, settings) as globex,
    ):
        assert (acme.user, globex.user) == (users.acme, users.globex)
        assert found(await acme.call(search("acme-1"))) == ("ok", "main", ["Ada Acme"])
        named = await acme.call(search("acme-2", account="main", tenant="acme"))
        assert found(named) == ("ok", "main", ["Ada Acme"])
        theirs = await globex.call(search("same-job-id"))
        assert found(theirs) == ("ok", "globex", ["Grace Globex"])
        # A job_id another tenant used: acme's own job runs, it never gets globex's result.
        reused = await acme.call(search("same-job-id"))
        assert found(reused) == ("ok", "main", ["Ada Acme"])

        await globex_sim.reset_counters()
        caplog.clear()
        foreign = await acme.call(search("acme-3", account="globex"))
        claimed = await acme.call(search("acme-4", tenant="globex"))
    assert refusal(foreign) == (
        "FORBIDDEN_ACCOUNT",
        "account 'globex' does not belong to tenant 'acme'",
    )
    assert refusal(claimed) == (
        "FORBIDDEN_ACCOUNT",
        f"the job claims tenant 'globex' but '{users.acme}' publishes for tenant 'acme'",
    )
    assert await untouched(globex_sim), await globex_sim.counters()

    refusals = "sfworker_tenant_refusals_total"
    assert sample(worker, refusals, reason="foreign_account", tenant="acme") == 1
    assert sample(worker, refusals, reason="tenant_mismatch", tenant="acme") == 1
    assert sample(worker, refusals, reason="foreign_account", tenant="globex") == 0
    forbidden = {"operation": "search", "status": "failed", "code": "FORBIDDEN_ACCOUNT"}
    assert sample(worker, "sfworker_jobs_total", **forbidden) == 2
    logged = [
        (r.__dict__["job_id"], r.__dict__["user_id"], r.__dict__["account"], r.levelno)
        for r in caplog.records
        if r.getMessage().startswith("job refused")
    ]
    assert logged == [
        ("acme-3", users.acme, "globex", logging.WARNING),
        ("acme-4", users.acme, "", logging.WARNING),
    ]


async def test_a_forged_user_id_is_refused_by_the_broker(
    worker: Worker,
    settings: Settings,
    users: Users,
    simulator: SimulatorClient,
    globex_sim: SimulatorClient,
) -> None:
    async with client_as(users.acme_url, settings) as acme:
        with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed) as refused:
            await acme.publish(search("forged", account="globex"), user_id=users.globex)
    assert (
        f"PRECONDITION_FAILED - user_id property set to '{users.globex}' but authenticated "
        f"user was '{users.acme}'"
    ) in str(refused.value)

    # The queue is FIFO: once a job published after it is answered, the forged one would
    # have been taken first. The worker answered exactly one job: the later one.
    async with client_as(users.acme_url, settings) as acme:
        assert found(await acme.call(search("after-forged"))) == ("no_data", "main", [])
    assert jobs_answered(worker) == 1
    assert await untouched(globex_sim)


async def test_no_user_id_or_a_user_of_no_tenant_is_forbidden(
    worker: Worker,
    settings: Settings,
    amqp_url: str,
    users: Users,
    jobs: JobClient,
    amqp: aio_pika.abc.AbstractRobustConnection,
    simulator: SimulatorClient,
    globex_sim: SimulatorClient,
) -> None:
    # `jobs` publishes as guest: a real user, but one no tenant lists. (Its connection is
    # robust: aio-pika names its private queue `amq_...` itself, a name the reply rule does
    # not allow; a plain connection gets a server-named `amq.gen-...` one.)
    assert jobs.user == "guest"
    async with client_as(amqp_url, settings) as guest:
        assert guest.reply_queue.startswith("amq.gen-")
        assert refusal(await guest.call(search("by-guest"))) == (
            "FORBIDDEN_ACCOUNT",
            "RabbitMQ user 'guest' publishes for no tenant",
        )
    async with client_as(users.acme_url, settings) as acme:
        anonymous = await acme.result(await acme.publish(search("anonymous"), user_id=None), 10)
        code, message = refusal(anonymous)
        assert (code, message.startswith("the message has no user_id")) == (
            "FORBIDDEN_ACCOUNT",
            True,
        )
        # Without reply_to nobody can be told: the job goes to the dead-letter queue.
        await acme.publish(search("nobody-to-tell"), user_id=None, reply=False)

    channel = await amqp.channel()
    dead = await channel.get_queue(settings.dead_letter_queue)
    held: list[aio_pika.abc.AbstractIncomingMessage] = []

    async def dead_lettered() -> bool:
        message = await dead.get(no_ack=True, fail=False)
        if message is not None:
            held.append(message)
        return bool(held)

    await wait_until(dead_lettered, 10, "the job without reply_to in the dead-letter queue")
    assert orjson.loads(held[0].body)["job_id"] == "nobody-to-tell"

    refusals = "sfworker_tenant_refusals_total"
    assert sample(worker, refusals, reason="unknown_user", tenant="") == 1
    assert sample(worker, refusals, reason="no_user_id", tenant="") == 2
    assert sample(worker, "sfworker_dead_lettered_total", reason="no_user_id") == 1
    assert await untouched(simulator, globex_sim)


async def test_sfworker_submit_runs_as_the_user_of_its_url(
    worker: Worker,
    settings: Settings,
    users: Users,
    simulator: SimulatorClient,
    globex_sim: SimulatorClient,
) -> None:
    await simulator.seed("Contact", [{"FirstName": "Ada", "LastName": "Acme"}])
    await globex_sim.seed("Contact", [{"FirstName": "Grace", "LastName": "Globex"}])
    env = settings_env(settings)
    args = ("submit", "--operation", "search", "--soql", "SELECT Name FROM Contact", "--json")
    outcomes = []
    for url in (users.acme_url, users.globex_url):
        done = await sfworker(*args, env={**env, "SFWORKER_AMQP_URL": url})
        assert done.returncode == 0, done.stderr
        outcomes.append(found(orjson.loads(done.stdout)))
    assert outcomes == [("ok", "main", ["Ada Acme"]), ("ok", "globex", ["Grace Globex"])]


async def test_the_recipe_keeps_a_tenant_to_the_request_exchange_and_its_own_queues(
    worker: Worker,
    settings: Settings,
    users: Users,
    simulator: SimulatorClient,
    own_queues: list[str],
) -> None:
    connection = await aio_pika.connect(users.acme_url, timeout=10)
    async with connection:
        # Its own named, durable reply queue: declared, read, deleted by the tenant's user.
        own_queues.append(f"{users.acme}.replies")
        client = JobClient(await connection.channel(), settings)
        await client.start(durable_queue=f"{users.acme}.replies")
        assert (await client.call(search("on-a-named-queue")))["status"] == "no_data"
        channel = await connection.channel()
        await channel.queue_delete(f"{users.acme}.replies")

        forbidden = {
            "read the request queue": lambda ch: _get(ch, settings.request_queue),
            "read the dead letters": lambda ch: _get(ch, settings.dead_letter_queue),
            "declare another tenant's queue": lambda ch: ch.declare_queue(
                f"{users.globex}.replies"
            ),
            "publish to the results exchange": lambda ch: _publish(ch, settings.results_exchange),
        }
        refused = {}
        for what, attempt in forbidden.items():
            with pytest.raises(aiormq.exceptions.ChannelAccessRefused) as denied:
                await attempt(await connection.channel())
            refused[what] = "ACCESS_REFUSED" in str(denied.value)
        assert all(refused.values()), refused


async def _get(channel: aio_pika.abc.AbstractChannel, queue: str) -> None:
    await (await channel.get_queue(queue, ensure=False)).get(fail=False)


async def _publish(channel: aio_pika.abc.AbstractChannel, exchange: str) -> None:
    target = await channel.get_exchange(exchange, ensure=False)
    await target.publish(aio_pika.Message(b"{}"), routing_key="ok.search")


async def _publish_raw(
    client: JobClient,
    settings: Settings,
    body: bytes,
    *,
    reply_to: str,
    job_id: str,
    headers: dict[str, Any] | None = None,
) -> None:
    """A job with a reply_to of the publisher's choosing (BlockClient always names its own)."""
    exchange = await client.client.channel.get_exchange(settings.request_exchange, ensure=False)
    await exchange.publish(
        aio_pika.Message(
            body,
            message_id=job_id,
            correlation_id=job_id,
            reply_to=reply_to,
            user_id=client.user,
            headers=headers,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        ),
        routing_key=settings.request_routing_key,
    )


async def _drain(
    queue: aio_pika.abc.AbstractQueue, count: int, within: float, what: str
) -> list[aio_pika.abc.AbstractIncomingMessage]:
    held: list[aio_pika.abc.AbstractIncomingMessage] = []

    async def got_all() -> bool:
        message = await queue.get(no_ack=True, fail=False)
        if message is not None:
            held.append(message)
        return len(held) >= count

    await wait_until(got_all, within, what)
    return held


async def test_a_result_addressed_to_another_tenant_s_queue_never_arrives_there(
    worker: Worker,
    settings: Settings,
    users: Users,
    amqp: aio_pika.abc.AbstractRobustConnection,
    simulator: SimulatorClient,
    globex_sim: SimulatorClient,
    caplog: pytest.LogCaptureFixture,
    own_queues: list[str],
) -> None:
    await globex_sim.seed("Contact", [{"FirstName": "Grace", "LastName": "Globex"}])
    victim = f"{users.globex}.replies"
    own_queues.append(victim)
    targets = {
        "into-globex": victim,
        "into-requests": settings.request_queue,
        "into-dead-letters": settings.dead_letter_queue,
    }
    async with (
        client_as(users.globex_url, settings, durable_queue=victim) as globex,
        client_as(users.acme_url, settings) as acme,
    ):
        for job_id, target in targets.items():
            await _publish_raw(
                acme, settings, orjson.dumps(search(job_id)), reply_to=target, job_id=job_id
            )
        # Not even a refusal goes there: bad input, or a job naming globex's account.
        await _publish_raw(acme, settings, b"not json", reply_to=victim, job_id="bad-input")
        foreign = orjson.dumps(search("foreign", account="globex"))
        await _publish_raw(acme, settings, foreign, reply_to=victim, job_id="foreign")

        channel = await amqp.channel()
        dead = await channel.get_queue(settings.dead_letter_queue)
        moved = await _drain(dead, 5, 20, "the five jobs in the dead-letter queue")
        # Every one of them is in the dead letters, so none will ever be answered; globex's
        # own job, published now, is the only message its queue ever receives.
        mine = await globex.call(search("globex-own"))
    assert found(mine) == ("ok", "globex", ["Grace Globex"])
    assert [r["job_id"] for r in globex.results] == ["globex-own"]
    left = await (await channel.get_queue(victim)).get(fail=False)
    await channel.queue_delete(victim)
    assert left is None

    assert sorted(m.message_id or "" for m in moved) == sorted([*targets, "bad-input", "foreign"])
    assert {
        (
            (m.headers or {}).get("x-sfworker-dead-letter-reason"),
            (m.headers or {}).get("x-sfworker-user-id"),
        )
        for m in moved
    } == {("forbidden_reply_to", users.acme)}
    assert {m.message_id: m.reply_to for m in moved}["into-globex"] == victim
    assert await untouched(simulator)
    assert sample(worker, "sfworker_dead_lettered_total", reason="forbidden_reply_to") == 5
    refusals = "sfworker_tenant_refusals_total"
    assert sample(worker, refusals, reason="forbidden_reply_to", tenant="acme") == 5
    assert sample(worker, refusals, reason="foreign_account", tenant="acme") == 0
    logged = [
        (r.__dict__["job_id"], r.__dict__["user_id"], r.__dict__["reply_to"])
        for r in caplog.records
        if r.getMessage().startswith("job refused: reply_to")
    ]
    assert sorted(logged) == sorted((m.message_id, users.acme, m.reply_to) for m in moved)


async def test_results_reach_the_publisher_s_own_queues_signed_by_the_worker(
    worker: Worker,
    settings: Settings,
    users: Users,
    amqp: aio_pika.abc.AbstractRobustConnection,
    simulator: SimulatorClient,
    own_queues: list[str],
) -> None:
    await simulator.seed("Contact", [{"FirstName": "Ada", "LastName": "Acme"}])
    # A queue the tenant table's pattern allows (the operator declared it, and lets the
    # tenant's IVR read it). Not auto-delete: read by basic.get, it never had a consumer to
    # lose, so the broker would have kept it for ever (one left behind per run).
    ivr = f"{users.acme}-ivr.flows"
    own_queues.append(ivr)
    admin = await amqp.channel()
    ivr_queue = await admin.declare_queue(ivr)
    async with client_as(users.acme_url, settings, worker_user=users.worker) as acme:
        # A message someone else (here the broker admin) put in acme's reply queue is no
        # result: the client drops it.
        await admin.default_exchange.publish(
            aio_pika.Message(orjson.dumps({"v": 1, "job_id": "fake"}), correlation_id="fake"),
            routing_key=acme.reply_queue,
        )
        assert found(await acme.call(search("on-amq-gen"))) == ("ok", "main", ["Ada Acme"])
        await wait_until(
            lambda: _true(acme.client.foreign_replies == 1), 10, "the fake reply dropped"
        )
        assert [r["job_id"] for r in acme.results] == ["on-amq-gen"]

        await _publish_raw(
            acme, settings, orjson.dumps(search("on-ivr")), reply_to=ivr, job_id="on-ivr"
        )
        (answer,) = await _drain(ivr_queue, 1, 20, "the result in the IVR's queue")
        assert orjson.loads(answer.body)["job_id"] == "on-ivr"
        assert answer.user_id == users.worker

        # RabbitMQ direct reply-to: the pseudo-queue of the publishing channel.
        channel = acme.client.channel
        direct: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage] = asyncio.Queue()
        pseudo = await channel.get_queue("amq.rabbitmq.reply-to", ensure=False)
        await pseudo.consume(direct.put, no_ack=True)
        await _publish_raw(
            acme,
            settings,
            orjson.dumps(search("direct")),
            reply_to="amq.rabbitmq.reply-to",
            job_id="direct",
        )
        async with asyncio.timeout(20):
            reply = await direct.get()
        assert (orjson.loads(reply.body)["job_id"], reply.user_id) == ("direct", users.worker)
    await admin.close()
    assert sample(worker, "sfworker_dead_lettered_total", reason="forbidden_reply_to") == 0


async def _true(value: bool) -> bool:
    return value


async def test_jobs_moved_to_their_lane_keep_their_publisher_s_tenant(
    settings: Settings,
    users: Users,
    simulator: SimulatorClient,
    globex_sim: SimulatorClient,
) -> None:
    """Fair share with real users: at prefetch 2 (one job per account straight off the request
    queue) most jobs of a burst are moved to their account's lane by the worker's user, and
    still run for the tenant whose user published them; a publisher's own
    `x-sfworker-publisher` header (naming another tenant's user) is ignored. Deadlines of 30 s:
    acme's 16 jobs of 1 s each run at most three at a time, near the default 8 s on a busy
    machine, and this test is about whose jobs they are, not how fast."""
    await simulator.seed("Contact", [{"FirstName": "Ada", "LastName": "Acme"}])
    await globex_sim.seed("Contact", [{"FirstName": "Grace", "LastName": "Globex"}])
    # Each job holds its account's one direct slot for a second: the rest of a burst moves.
    for sim in (simulator, globex_sim):
        await sim.set_latency(1000, token_ms=0)
    small = settings.model_copy(update={"amqp_url": SecretStr(users.worker_url), "prefetch": 2})
    running = Worker(small)
    await running.start()
    try:
        async with (
            client_as(users.acme_url, settings) as acme,
            client_as(users.globex_url, settings) as globex,
        ):
            forged = [f"forged-{i}" for i in range(8)]
            # No account: the job gets its tenant's default, which would be globex's account
            # if the header were believed.
            await asyncio.gather(
                *(
                    _publish_raw(
                        acme,
                        settings,
                        orjson.dumps(search(job_id, timeout_ms=30_000)),
                        reply_to=acme.reply_queue,
                        job_id=job_id,
                        headers={"x-sfworker-publisher": users.globex},
                    )
                    for job_id in forged
                )
            )
            burst = await asyncio.gather(
                *(acme.call(search(f"acme-{i}", timeout_ms=30_000)) for i in range(8)),
                *(globex.call(search(f"globex-{i}", timeout_ms=30_000)) for i in range(8)),
            )
            tricked = [await acme.result(job_id, 30) for job_id in forged]
    finally:
        await running.stop()
    assert [found(r) for r in burst] == [("ok", "main", ["Ada Acme"])] * 8 + [
        ("ok", "globex", ["Grace Globex"])
    ] * 8
    assert [found(r) for r in tricked] == [("ok", "main", ["Ada Acme"])] * 8
    moves = "sfworker_lane_moves_total"
    assert sample(running, moves, account="main") >= 8
    assert sample(running, moves, account="globex") >= 4
