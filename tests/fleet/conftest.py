"""Fleet fixtures: settings that share the test's own Redis key prefix, a private redis-server
that a test may kill and restart, and readers of the workers' metrics and the simulator."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError

from tests.conftest import free_port, make_settings, wait_until
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


class PrivateRedis:
    """A redis-server of the test's own on a free port, to kill and start again."""

    def __init__(self, workdir: Path, *extra: str) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def launch(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    async def start(self) -> None:
        """Launch it and wait until it answers."""
        self.launch()
        client = aioredis.from_url(self.url)

        async def answers() -> bool:
            try:
                return bool(await client.ping())
            except AuthenticationError:
                return True  # it answers: it wants a password
            except Exception:
                return False

        try:
            await wait_until(answers, 10, f"redis-server on port {self.port}")
        finally:
            await client.aclose()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    async def keys(self, pattern: str) -> list[bytes]:
        client = aioredis.from_url(self.url)
        try:
            return [key async for key in client.scan_iter(match=pattern, count=500)]
        finally:
            await client.aclose()


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
