"""The strict-mode fixtures: real broker users for two tenants and the worker, two orgs
(tests/support/tenants.py says who is who)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aio_pika
import pytest
from pydantic import SecretStr
from sfsim.testing import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    SimulatorClient,
    running_simulator,
)

from tests.support.accounts import write_accounts
from tests.support.broker_users import (
    BrokerUsers,
    require_rabbitmqctl,
    tenant_permissions,
    tenant_topic_permission,
    worker_permissions,
)
from tests.support.tenants import Users
from worker.app import Worker
from worker.settings import Settings


@pytest.fixture
def users(amqp_url: str, names: dict[str, str]) -> Iterator[Users]:
    require_rabbitmqctl(amqp_url)
    topology = Settings(**names)
    made = BrokerUsers(amqp_url)
    try:
        acme, globex, worker = (made.name(n) for n in ("rt-acme", "rt-globex", "sfworker"))
        topic = tenant_topic_permission(topology)
        yield Users(
            acme=acme,
            acme_url=made.add(acme, tenant_permissions(topology, acme), topic),
            globex=globex,
            globex_url=made.add(globex, tenant_permissions(topology, globex), topic),
            worker=worker,
            worker_url=made.add(worker, worker_permissions(topology)),
        )
    finally:
        made.delete_all()


@pytest.fixture
async def own_queues(amqp_url: str) -> AsyncIterator[list[str]]:
    """Queues a test declares under its tenants' names (the topology's are the `settings`
    fixture's): the test appends each name before declaring it; they are deleted afterwards as
    the broker's admin, whether the test passed or not (each holds files on the broker)."""
    names: list[str] = []
    yield names
    if names:
        connection = await aio_pika.connect(amqp_url, timeout=10)
        async with connection:
            channel = await connection.channel()
            for name in names:
                await channel.queue_delete(name)  # a queue already gone is no error


@pytest.fixture
async def globex_sim() -> AsyncIterator[SimulatorClient]:
    async with running_simulator() as sim:
        yield sim


@pytest.fixture
def accounts_file(
    tmp_path: Path, simulator: SimulatorClient, globex_sim: SimulatorClient, users: Users
) -> Path:
    """Strict mode: account `main` (tenant acme, default) and `globex` (tenant globex)."""
    return write_accounts(
        tmp_path / "accounts.toml",
        simulator.base_url,
        extra=f"""
[accounts.globex]
tenant = "globex"
default = true
instance_url = "{globex_sim.base_url}"
flow = "client_credentials"
client_id = "{DEFAULT_CLIENT_ID}"
client_secret = "{DEFAULT_CLIENT_SECRET}"

[tenants.acme]
amqp_users = ["{users.acme}"]
reply_to = ['^{users.acme}-ivr\\..*$']

[tenants.globex]
amqp_users = ["{users.globex}"]
""",
    )


@pytest.fixture
async def worker(
    settings: Settings, users: Users, simulator: SimulatorClient, globex_sim: SimulatorClient
) -> AsyncIterator[Worker]:
    """The worker, connected as its own user with the recipe's permissions."""
    running = Worker(settings.model_copy(update={"amqp_url": SecretStr(users.worker_url)}))
    await running.start()
    # Each org's usage is read once at start (/limits): count what the test's jobs do.
    await running.fleet.reserve.primed()
    for sim in (simulator, globex_sim):
        await sim.reset_counters()
    yield running
    await running.stop()
