"""Fleet fixtures: settings that share the test's own Redis key prefix, a private redis-server
that a test may kill and restart, and readers of the workers' metrics and the simulator."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_settings
from tests.redis_server import RedisServer
from worker.config import Settings
from worker.simulator.testing import SimulatorClient


@pytest.fixture
async def fleet_settings(
    amqp_url: str,
    names: dict[str, str],
    accounts_file: Path,
    redis_url: str,
    redis_prefix: str,
    settings: Settings,  # owns the topology teardown
) -> Settings:
    return make_settings(
        amqp_url, names, accounts_file, redis_url=redis_url, redis_prefix=redis_prefix
    )


PrivateRedis = RedisServer  # a redis-server of the test's own


@pytest.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[PrivateRedis]:
    if not shutil.which("redis-server"):
        pytest.fail("redis-server is needed for the Redis outage tests")
    server = PrivateRedis(tmp_path)
    await server.start()
    yield server
    server.kill()


async def counters(simulator: SimulatorClient) -> dict[str, Any]:
    return await simulator.counters()


def gauge(metrics_text: str, name: str) -> float | None:
    """The value of an unlabelled sample in Prometheus text, or None when absent."""
    for line in metrics_text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None
