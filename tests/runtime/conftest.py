"""A worker running in this process (fast), for end-to-end tests through the real RabbitMQ."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest
from sfsim.testing import SimulatorClient

from tests.conftest import ROOT
from tests.metrics import metric
from worker.app import Worker
from worker.settings import Settings


@pytest.fixture
async def worker(settings: Settings, simulator: SimulatorClient) -> AsyncIterator[Worker]:
    running = Worker(settings)
    await running.start()
    # The org's usage is read once at start (/limits): count what the test's jobs do.
    await running.fleet.reserve.primed()
    await simulator.reset_counters()
    yield running
    await running.stop()


def sample(worker: Worker, name: str, **labels: str) -> float:
    """`name{labels}` in the worker's metrics, read as a scraper would (tests.metrics)."""
    return metric(worker.metrics, name, **labels)


async def sfworker(
    *args: str, env: dict[str, str], limit: float = 60
) -> subprocess.CompletedProcess[str]:
    """`python -m worker ARGS` in a subprocess; its output captured as text."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "worker", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=limit,
    )
