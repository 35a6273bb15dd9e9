"""Shared fixtures: a real RabbitMQ (env var first, then 127.0.0.1, then testcontainers where
Docker works), the Salesforce simulator on 127.0.0.1, per-test queue names, worker processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sfsim.testing import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_REFRESH_TOKEN,
    SimulatorClient,
    running_simulator,
)

from tests.job_client import JobClient
from worker.runtime import topology
from worker.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
LOCAL_AMQP = "amqp://guest:guest@127.0.0.1:5672/"
LOCAL_REDIS = "redis://127.0.0.1:6379/0"


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


def topology_names() -> dict[str, str]:
    """Queue and exchange names no other test uses."""
    prefix = f"test.{uuid.uuid4().hex[:10]}"
    return {
        "request_exchange": f"{prefix}.blocks",
        "request_routing_key": f"{prefix}.blocks",
        "request_queue": f"{prefix}.blocks",
        "dead_letter_exchange": f"{prefix}.dlx",
        "dead_letter_queue": f"{prefix}.dead",
        "results_exchange": f"{prefix}.results",
    }


def rsa_key_pair() -> tuple[str, str]:
    """A fresh RSA-2048 key for jwt-bearer: (private key PEM in PKCS8, public key PEM)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private.decode(), public.decode()


def write_accounts(
    path: Path,
    base_url: str,
    *,
    extra: str = "",
    flow: str = "client_credentials",
    credentials: str | None = None,
) -> Path:
    """An accounts file whose account `main` talks to the simulator at `base_url`.
    `credentials` replaces the simulator's default secret lines (a wrong secret, a JWT key)."""
    secret = f'client_secret = "{DEFAULT_CLIENT_SECRET}"\n'
    if flow == "refresh_token":
        secret += f'refresh_token = "{DEFAULT_REFRESH_TOKEN}"\n'
    if credentials is not None:
        secret = credentials
    path.write_text(
        "[accounts.main]\n"
        'tenant = "acme"\n'
        "default = true\n"
        f'instance_url = "{base_url}"\n'
        f'flow = "{flow}"\n'
        f'client_id = "{DEFAULT_CLIENT_ID}"\n' + secret + extra,
        encoding="utf-8",
    )
    return path


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
    connection = await aio_pika.connect(amqp_url, timeout=10)
    async with connection:
        await topology.delete(await connection.channel(), made)


# The fleet's Redis key of the tests (32 bytes, base64): every fleet in the tests seals its
# values, as production does (a worker with Redis and no key refuses to start).
TEST_REDIS_KEY = "t1:c2Z3b3JrZXItdGVzdHMtcmVkaXMta2V5LTMyYnl0ZXM="


def make_settings(amqp_url: str, names: dict[str, str], accounts_file: Path, **kw: Any) -> Settings:
    if kw.get("redis_url") and not {"redis_encryption_key", "redis_plaintext"} & set(kw):
        kw["redis_encryption_key"] = TEST_REDIS_KEY
    values: dict[str, Any] = {
        "amqp_url": amqp_url,
        "accounts_file": accounts_file,
        "http_port": 0,
        "allow_insecure_localhost": True,
        "watchdog_interval_seconds": 0.5,
        "reconnect_interval_seconds": 0.5,
        "startup_timeout_seconds": 10,
        **names,
        **kw,
    }
    return Settings(**values)


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a `sfworker run` process these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFWORKER_")}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        raw = value.get_secret_value() if hasattr(value, "get_secret_value") else value
        env[f"SFWORKER_{name.upper()}"] = str(raw).lower() if isinstance(raw, bool) else str(raw)
    env["SFWORKER_LOG_FORMAT"] = "json"
    return env


async def wait_until(predicate: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    """Poll `predicate` every 50 ms; fail naming `what` if it is still false after `within` s."""
    try:
        async with asyncio.timeout(within):
            while not await predicate():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"still waiting for {what} after {within} s") from None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class WorkerProcess:
    """`python -m worker run` in a subprocess, as Kubernetes would run it."""

    def __init__(self, settings: Settings, log_path: Path, **overrides: Any) -> None:
        self.port = free_port()
        env = settings_env(settings)
        env["SFWORKER_HTTP_PORT"] = str(self.port)
        env["SFWORKER_HTTP_HOST"] = "127.0.0.1"
        for key, value in overrides.items():
            env[f"SFWORKER_{key.upper()}"] = str(value)
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "run"],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def wait_ready(self, within: float = 20.0) -> None:
        async with asyncio.timeout(within), aiohttp.ClientSession() as http:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"worker exited {self.proc.returncode}: {self.logs()}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{self.url}/readyz") as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.05)

    async def metrics(self) -> str:
        async with aiohttp.ClientSession() as http, http.get(f"{self.url}/metrics") as response:
            return await response.text()

    async def wait_exit(self, within: float) -> int:
        async with asyncio.timeout(within):
            while self.proc.poll() is None:
                await asyncio.sleep(0.05)
        return self.proc.returncode

    def logs(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


@contextlib.contextmanager
def spawning(log_dir: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """A function that starts `sfworker run` processes (logs in `log_dir`); every one of them
    is stopped on exit."""
    started: list[WorkerProcess] = []

    def spawn(settings: Settings, **overrides: Any) -> WorkerProcess:
        worker = WorkerProcess(settings, log_dir / f"worker-{len(started)}.log", **overrides)
        started.append(worker)
        return worker

    try:
        yield spawn
    finally:
        for worker in started:
            worker.stop()


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
