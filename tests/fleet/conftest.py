"""Fleet fixtures: `fleet`, the one object a fleet test asks for (tests/fleet/helpers.py), and a
private redis-server that a test may kill and restart."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sfsim.testing import SimulatorClient

from tests.fleet.helpers import Fleet
from tests.support.job_client import JobClient
from tests.support.redis_server import RedisServer
from tests.support.sentinel_cluster import SentinelCluster
from tests.support.settings import make_settings
from worker.settings import Settings


@pytest.fixture
def fleet(
    amqp_url: str,
    names: dict[str, str],
    accounts_file: Path,
    redis_url: str,
    redis_prefix: str,
    tmp_path: Path,
    simulator: SimulatorClient,
    settings: Settings,  # owns the topology teardown
    spawn_worker: Any,
    jobs: JobClient,
) -> Fleet:
    return Fleet(
        amqp_url=amqp_url,
        names=names,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        accounts_file=accounts_file,
        tmp_path=tmp_path,
        simulator=simulator,
        jobs=jobs,
        spawn=spawn_worker,
        settings=make_settings(
            amqp_url, names, accounts_file, redis_url=redis_url, redis_prefix=redis_prefix
        ),
    )


@pytest.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A redis-server of the test's own, on a free port."""
    if not shutil.which("redis-server"):
        pytest.fail("redis-server is needed for the Redis outage tests")
    server = RedisServer(tmp_path)
    await server.start()
    yield server
    server.kill()


@pytest.fixture
async def sentinel_cluster(tmp_path: Path) -> AsyncIterator[SentinelCluster]:
    """A primary, its replica and three sentinels of the test's own, on free ports."""
    if not shutil.which("redis-server"):
        pytest.fail("redis-server is needed for the Sentinel tests")
    cluster = SentinelCluster(tmp_path / "redis")
    try:
        await cluster.start()
        yield cluster
    finally:
        cluster.stop()
