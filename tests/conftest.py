"""Shared fixtures: a real RabbitMQ (env var first, then 127.0.0.1, then testcontainers where
Docker works), the Salesforce simulator on 127.0.0.1, per-test queue names, worker processes.
The helpers behind them live in tests/support/."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import pytest
from sfsim.testing import SimulatorClient, running_simulator

from tests.support.accounts import write_accounts
from tests.support.job_client import JobClient
from tests.support.settings import LOCAL_AMQP, LOCAL_REDIS, make_settings, topology_names
from tests.support.workers import spawning
from worker.runtime import topology
from worker.settings import Settings


def _reachable(url: str) -> bool:
    parts = urlsplit(url)
    default = 6379 if parts.scheme.startswith("redis") else 5672
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default), 2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    """RabbitMQ for the tests: SFWORKER_TEST_AMQP_URL, else the local broker, else a
    testcontainers one. In CI (CI=true) a missing broker fails the run instead of skipping."""
    url = os.environ.get("SFWORKER_TEST_AMQP_URL")
    if url:
        yield url
        return
    if _reachable(LOCAL_AMQP):
        yield LOCAL_AMQP
        return
    try:
        from testcontainers.community.rabbitmq import RabbitMqContainer

        with RabbitMqContainer("rabbitmq:3.13-management") as container:
            host = container.get_container_host_ip()
            port = container.get_exposed_port(5672)
            yield f"amqp://guest:guest@{host}:{port}/"
            return
    except Exception as exc:  # Docker missing or not running
        if os.environ.get("CI"):
            pytest.fail(f"no RabbitMQ for the tests and no Docker: {exc}")
        pytest.skip(f"no RabbitMQ (set SFWORKER_TEST_AMQP_URL): {exc}")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """Redis for the tests: SFWORKER_TEST_REDIS_URL, else the local server, else a
    testcontainers one. In CI (CI=true) a missing Redis fails the run instead of skipping."""
    url = os.environ.get("SFWORKER_TEST_REDIS_URL")
    if url:
        yield url
        return
    if _reachable(LOCAL_REDIS):
        yield LOCAL_REDIS
        return
    try:
        from testcontainers.redis import RedisContainer

        with RedisContainer("redis:7") as container:
            host = container.get_container_host_ip()
            yield f"redis://{host}:{container.get_exposed_port(6379)}/0"
            return
    except Exception as exc:  # Docker missing or not running
        if os.environ.get("CI"):
            pytest.fail(f"no Redis for the tests and no Docker: {exc}")
        pytest.skip(f"no Redis (set SFWORKER_TEST_REDIS_URL): {exc}")


@pytest.fixture
async def redis_prefix(redis_url: str) -> AsyncIterator[str]:
    """A key prefix of the test's own; its keys are deleted afterwards."""
    import redis.asyncio as aioredis

    prefix = f"sfworker-test-{uuid.uuid4().hex[:10]}:"
    yield prefix
    client = aioredis.from_url(redis_url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=500)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
async def simulator() -> AsyncIterator[SimulatorClient]:
    async with running_simulator() as sim:
        yield sim


@pytest.fixture
def names() -> dict[str, str]:
    """Topology names of their own for each test, so tests never see each other's messages."""
    return topology_names()


@pytest.fixture
def accounts_file(tmp_path: Path, simulator: SimulatorClient) -> Path:
    return write_accounts(tmp_path / "accounts.toml", simulator.base_url)


@pytest.fixture
async def settings(
    amqp_url: str, names: dict[str, str], accounts_file: Path
) -> AsyncIterator[Settings]:
    """Settings of the test's own topology; torn down last, so the topology is deleted after
    every worker and client of the test has stopped (a running worker would re-declare it)."""
    made = make_settings(amqp_url, names, accounts_file)
    yield made
    # Every accounts file the test wrote: the lanes and tenant queues of all their accounts
    # and tenants go too (each quorum queue holds files on the broker).
    written = sorted(accounts_file.parent.rglob("*.toml"))
    connection = await aio_pika.connect(amqp_url, timeout=10)
    async with connection:
        await topology.delete(await connection.channel(), made, written)


@pytest.fixture
def spawn_worker(tmp_path: Path, settings: Settings) -> Iterator[Any]:
    with spawning(tmp_path) as spawn:
        yield spawn


@pytest.fixture
async def amqp(amqp_url: str) -> AsyncIterator[aio_pika.abc.AbstractRobustConnection]:
    connection = await aio_pika.connect_robust(amqp_url, reconnect_interval=0.5)
    async with connection:
        yield connection


@pytest.fixture
async def jobs(amqp: aio_pika.abc.AbstractRobustConnection, settings: Settings) -> JobClient:
    """Publishes jobs like the runtime and collects the results on a reply queue."""
    channel = await amqp.channel()
    client = JobClient(channel, settings)
    await client.start()
    return client
