"""A private three-node RabbitMQ cluster (scripts/rabbit-cluster) on free ports, for failover and
fault-storm tests. It never touches the shared broker on 5672; it is removed at the end of the
session, also when a test fails."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from tests.conftest import ROOT, make_settings, spawning
from tests.redis_server import RedisServer
from worker.runtime import topology
from worker.settings import Settings

SCRIPT = ROOT / "scripts" / "rabbit-cluster"


def _ports_free(ports: list[int]) -> bool:
    for port in ports:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def _free_base() -> int:
    """A base port whose AMQP (base..base+2), epmd (base+3) and distribution (base+20000..)
    ports are free."""
    for _ in range(200):
        base = random.randrange(12000, 19000, 10)
        if _ports_free(
            [base, base + 1, base + 2, base + 3, base + 20000, base + 20001, base + 20002]
        ):
            return base
    raise RuntimeError("no free ports for the test cluster")


class Cluster:
    """Three RabbitMQ nodes, 1..3, driven through scripts/rabbit-cluster."""

    def __init__(self, base: int, directory: Path) -> None:
        self.base = base
        self.directory = directory
        self.env = {
            **os.environ,
            "RABBIT_CLUSTER_PORT": str(base),
            "RABBIT_CLUSTER_DIR": str(directory),
        }

    def url(self, node: int) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.base + node - 1}/"

    def urls(self, first: int = 1) -> str:
        """SFWORKER_AMQP_URL listing every node, starting with `first`."""
        order = [first, *(n for n in (1, 2, 3) if n != first)]
        return ",".join(self.url(n) for n in order)

    def run(self, *args: str, limit: float = 300) -> str:
        done = subprocess.run(
            [str(SCRIPT), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=limit,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"rabbit-cluster {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout.strip()

    async def arun(self, *args: str, limit: float = 300) -> str:
        return await asyncio.to_thread(self.run, *args, limit=limit)

    async def kill(self, node: int) -> None:
        await self.arun("kill", str(node), limit=60)

    async def start(self, node: int) -> None:
        await self.arun("start", str(node))

    async def leader(self, queue: str) -> int:
        return int(await self.arun("leader", queue, limit=60))

    async def members(self, queue: str) -> list[int]:
        return [int(n) for n in (await self.arun("members", queue, limit=60)).split()]

    async def messages(self, queue: str) -> int:
        """Messages in a quorum queue, ready and unacknowledged."""
        return int(await self.arun("info", queue, "messages", limit=60))


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
    cluster = Cluster(_free_base(), directory)
    try:
        cluster.run("start")
        yield cluster
    finally:
        with contextlib.suppress(Exception):
            cluster.run("clean", limit=120)


@pytest.fixture
def cluster_names() -> dict[str, str]:
    prefix = f"cluster.{uuid.uuid4().hex[:10]}"
    return {
        "request_exchange": f"{prefix}.blocks",
        "request_routing_key": f"{prefix}.blocks",
        "request_queue": f"{prefix}.blocks",
        "dead_letter_exchange": f"{prefix}.dlx",
        "dead_letter_queue": f"{prefix}.dead",
        "results_exchange": f"{prefix}.results",
    }


@pytest.fixture
async def cluster_settings(
    rabbit_cluster: Cluster,
    cluster_names: dict[str, str],
    accounts_file: Path,
    redis_url: str,
    redis_prefix: str,
) -> AsyncIterator[Settings]:
    """Settings on the cluster (every node listed) and the fleet's Redis (the test's own key
    prefix); the topology is declared here, so its quorum queues exist before any worker
    starts, and deleted after the test."""
    made = make_settings(
        rabbit_cluster.urls(),
        cluster_names,
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
