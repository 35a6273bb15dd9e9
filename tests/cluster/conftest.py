"""A private three-node RabbitMQ cluster (scripts/rabbit-cluster) on free ports, for failover and
fault-storm tests. It never touches the shared broker on 5672; it is removed at the end of the
session, also when a test fails."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from tests.cluster.helpers import Cluster, free_base_port
from tests.support.redis_server import RedisServer
from tests.support.settings import make_settings
from tests.support.workers import spawning
from worker.runtime import topology
from worker.settings import Settings


@pytest.fixture(scope="session")
def rabbit_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if not shutil.which("epmd") or not Path("/usr/lib/rabbitmq/bin/rabbitmq-server").exists():
        if os.environ.get("CI"):
            pytest.fail("the cluster tests need the installed rabbitmq-server")
        pytest.skip("needs the installed rabbitmq-server")
    # .ci/run names a folder for the clusters, so that it can remove them even if the tests
    # are killed before their finalizers run.
    root = os.environ.get("SFWORKER_TEST_CLUSTER_ROOT")
    directory = (
        Path(tempfile.mkdtemp(prefix="cluster-", dir=root))
        if root
        else tmp_path_factory.mktemp("rabbit-cluster")
    )
    cluster = Cluster(free_base_port(), directory)
    try:
        cluster.run("start")
        yield cluster
    finally:
        with contextlib.suppress(Exception):
            cluster.run("clean", limit=120)


@pytest.fixture
async def cluster_settings(
    rabbit_cluster: Cluster,
    names: dict[str, str],
    accounts_file: Path,
    redis_url: str,
    redis_prefix: str,
) -> AsyncIterator[Settings]:
    """Settings on the cluster (every node listed) and the fleet's Redis (the test's own key
    prefix); the topology is declared here, so its quorum queues exist before any worker
    starts, and deleted after the test."""
    made = make_settings(
        rabbit_cluster.urls(),
        names,
        accounts_file,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
    )
    connection = await aio_pika.connect(rabbit_cluster.url(1), timeout=10)
    async with connection:
        await topology.declare(await connection.channel(), made)
    yield made
    for node in (1, 2, 3):
        try:
            connection = await aio_pika.connect(rabbit_cluster.url(node), timeout=10)
        except (ConnectionError, OSError, aio_pika.exceptions.AMQPError):
            continue
        async with connection:
            await topology.delete(await connection.channel(), made)
        break


@pytest.fixture
def cluster_workers(tmp_path: Path) -> Iterator[Any]:
    """Spawns `sfworker run` processes; kills whatever is left at the end."""
    with spawning(tmp_path) as spawn:
        yield spawn


@pytest.fixture
async def durable_redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A redis-server of the test's own that keeps its data across a restart."""
    if not shutil.which("redis-server"):
        pytest.fail("the fault storm needs redis-server")
    server = RedisServer(tmp_path, durable=True)
    await server.start()
    yield server
    server.kill()
