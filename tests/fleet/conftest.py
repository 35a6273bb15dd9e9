"""Fleet fixtures: settings that share the test's own Redis key prefix, a private redis-server
that a test may kill and restart, and readers of the workers' metrics and the simulator."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from sfsim.testing import SimulatorClient

from tests.conftest import make_settings, write_accounts
from tests.metrics import metric
from tests.redis_server import RedisServer
from worker.settings import Settings


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


FleetConfig = Callable[..., Settings]


@pytest.fixture
def fleet_config(
    amqp_url: str,
    names: dict[str, str],
    tmp_path: Path,
    redis_url: str,
    redis_prefix: str,
    simulator: SimulatorClient,
    settings: Settings,  # owns the topology teardown
) -> FleetConfig:
    """Settings of a fleet (the test's Redis prefix and topology) whose account `main` has
    `extra` lines (e.g. "max_concurrency = 8") and `flow`; keywords are further settings."""

    def configure(extra: str = "", flow: str = "client_credentials", **kw: Any) -> Settings:
        path = write_accounts(tmp_path / "fleet.toml", simulator.base_url, extra=extra, flow=flow)
        return make_settings(
            amqp_url, names, path, redis_url=redis_url, redis_prefix=redis_prefix, **kw
        )

    return configure


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


def gauge(metrics_text: str, name: str, **labels: str) -> float:
    """`name{labels}` in a /metrics page (tests.metrics.metric: fails when not exported)."""
    return metric(metrics_text, name, **labels)
