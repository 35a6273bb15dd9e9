"""Issue 27, point 5, for real: a strict-mode fleet whose RabbitMQ users log in with client
certificates (EXTERNAL authentication, `ssl_cert_login_from = common_name`), on a private node of
its own (tests/support/tls_broker.py: TLS listener, the rabbitmq_auth_mechanism_ssl plugin, a CA
and a certificate per user made with openssl). The users have no password and the permissions of
the recipe in deploy/README.md. The worker's URL names no user, so it is told its own
(SFWORKER_AMQP_LOGIN_USER): the jobs it moves to the lanes beyond an account's direct share are
trusted there and answered for their publisher's tenant; without it the worker does not start."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sfsim.testing import SimulatorClient

from tests.support.broker_users import (
    BrokerUsers,
    tenant_permissions,
    tenant_topic_permission,
    worker_permissions,
)
from tests.support.metrics import metric
from tests.support.settings import TEST_REDIS_KEY
from tests.support.tenants import Users, client_as, search
from tests.support.tls_broker import TlsBroker, missing, tls_broker
from tests.support.waiting import wait_until
from tests.support.workers import WorkerProcess
from worker.client import UnknownUser
from worker.runtime.direct_share import direct_limits
from worker.settings import Settings

pytestmark = pytest.mark.slow  # a RabbitMQ node of its own, worker processes: 30 to 50 s

BURST = 40  # acme's jobs at once: beyond its direct share of the default prefetch (16 of 32)


@pytest.fixture(scope="module")
def tls_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    lacking = missing()
    if lacking:
        if os.environ.get("CI"):
            pytest.fail(f"the EXTERNAL-authentication tests need {lacking}")
        pytest.skip(f"the EXTERNAL-authentication tests need {lacking}, not on this machine")
    # .ci/run names a folder for private nodes, so that it can remove them even if the tests
    # are killed before this fixture's cleanup runs.
    root = os.environ.get("SFWORKER_TEST_CLUSTER_ROOT")
    directory = (
        Path(tempfile.mkdtemp(prefix="tls-", dir=root))
        if root
        else tmp_path_factory.mktemp("tls-node")
    )
    with tls_broker(directory) as node:
        yield node


@pytest.fixture(scope="module")
def amqp_url(tls_node: TlsBroker) -> str:
    """The suite's broker fixtures (`settings` declares and deletes the topology with it) go to
    the private node, as its admin (guest over the plain listener)."""
    return tls_node.admin_url


@pytest.fixture
def users(tls_node: TlsBroker, names: dict[str, str]) -> Iterator[Users]:
    """Certificate users with the recipe's permissions; each URL carries its certificate."""
    topology = Settings(**names)
    made = BrokerUsers(tls_node.admin_url, ctl=tls_node.ctl)
    acme, globex, worker = (made.name(n) for n in ("rt-acme", "rt-globex", "sfworker"))
    topic = tenant_topic_permission(topology)
    try:
        made.add_certificate_user(acme, tenant_permissions(topology, acme), topic)
        made.add_certificate_user(globex, tenant_permissions(topology, globex), topic)
        made.add_certificate_user(worker, worker_permissions(topology))
        yield Users(
            acme=acme,
            acme_url=tls_node.url_for(tls_node.identity(acme)),
            globex=globex,
            globex_url=tls_node.url_for(tls_node.identity(globex)),
            worker=worker,
            worker_url=tls_node.url_for(tls_node.identity(worker)),
        )
    finally:
        made.delete_all()


@pytest.fixture
def fleet(settings: Settings, users: Users, redis_url: str, redis_prefix: str) -> Settings:
    """The workers' settings: the worker's certificate URL and the fleet's Redis; at the
    defaults otherwise (prefetch 32, fair share on with the two accounts)."""
    return settings.model_copy(
        update={
            "amqp_url": SecretStr(users.worker_url),
            "amqp_login_user": users.worker,
            "redis_url": SecretStr(redis_url),
            "redis_prefix": redis_prefix,
            "redis_encryption_key": SecretStr(TEST_REDIS_KEY),
        }
    )


async def moved(worker: WorkerProcess, jobs: int) -> bool:
    """The worker's /metrics say it moved `jobs` of acme's account to its lane."""
    text = await worker.metrics()
    return metric(text, "sfworker_lane_moves_total", account="main") == jobs


def found(result: dict[str, Any]) -> tuple[str, str | None, list[str]]:
    return result["status"], result["account"], [r["Name"] for r in result["records"] or []]


async def test_a_fleet_on_client_certificates_answers_the_jobs_it_moved_to_lanes(
    fleet: Settings,
    settings: Settings,
    users: Users,
    simulator: SimulatorClient,
    globex_sim: SimulatorClient,
    spawn_worker: Any,
) -> None:
    """Globex's job waits at its org on a direct slot, so acme has company: of acme's burst,
    the direct share (16) runs off the request queue and waits at acme's org, and the other 24
    are moved to acme's lane by the worker's certificate user. Every job is answered ok for
    acme (none FORBIDDEN_ACCOUNT), with a result the worker's user signed (the clients drop any
    other); globex's job too, and a job on acme's own tenant queue."""
    await simulator.seed("Contact", [{"FirstName": "Ada", "LastName": "Acme"}])
    await globex_sim.seed("Contact", [{"FirstName": "Grace", "LastName": "Globex"}])
    worker: WorkerProcess = spawn_worker(fleet)
    await worker.wait_ready(within=60)
    share, _ = direct_limits(fleet.prefetch)
    acme_as, globex_as = (
        {"worker_user": users.worker, "login_user": user} for user in (users.acme, users.globex)
    )
    async with (
        client_as(users.acme_url, settings, **acme_as) as acme,
        client_as(users.globex_url, settings, **globex_as) as globex,
        client_as(users.acme_url, settings, tenant_queue=True, **acme_as) as own,
    ):
        await globex_sim.hold("globex", path_contains="/query")
        company = asyncio.create_task(globex.call(search("company", timeout_ms=60_000), 60))
        await globex_sim.wait_held("globex")
        # Acme's calls wait at its org: its direct share stays held, the rest must move.
        await simulator.hold("acme", count=BURST, path_contains="/query")
        burst = [await acme.publish(search(f"acme-{i}", timeout_ms=60_000)) for i in range(BURST)]
        await wait_until(lambda: moved(worker, BURST - share), 60, "acme's jobs beyond its share")
        await simulator.release("acme")
        answers = [await acme.result(job_id, 60) for job_id in burst]
        await globex_sim.release("globex")
        keeps = await company
        # The tenant's own queue, on its certificate user's routing key.
        queued = await own.call(search("own-queue", timeout_ms=30_000), 30)
    assert [found(r) for r in answers] == [("ok", "main", ["Ada Acme"])] * BURST
    assert found(keeps) == ("ok", "globex", ["Grace Globex"])
    assert found(queued) == ("ok", "main", ["Ada Acme"])
    assert await moved(worker, BURST - share), worker.logs()
    refused = metric(
        await worker.metrics(), "sfworker_tenant_refusals_total", reason="no_user_id", tenant=""
    )
    assert refused == 0


async def test_a_fleet_on_client_certificates_needs_its_login_user(
    fleet: Settings, settings: Settings, users: Users, spawn_worker: Any
) -> None:
    """docs/configuration.md, SFWORKER_AMQP_LOGIN_USER: without it (tenant tables, fair share
    on) the worker does not start, rather than refuse every job it moves; a wrong one (a
    tenant's user) is refused by the broker at start. A runtime's client on a certificate must
    be given its user too (it would stamp `guest`, and RabbitMQ would close its channel)."""
    for login, says in (
        (None, "SFWORKER_AMQP_LOGIN_USER is not set"),
        (users.acme, f"SFWORKER_AMQP_LOGIN_USER={users.acme!r} is not the RabbitMQ user"),
    ):
        worker: WorkerProcess = spawn_worker(fleet.model_copy(update={"amqp_login_user": login}))
        assert await worker.wait_exit(within=60) == 2, worker.logs()
        assert says in worker.logs(), worker.logs()
    with pytest.raises(UnknownUser, match="login_user"):
        async with client_as(users.acme_url, settings):
            pass
