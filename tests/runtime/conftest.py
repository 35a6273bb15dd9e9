"""A worker running in this process (fast), for end-to-end tests through the real RabbitMQ."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sfsim.testing import SimulatorClient

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
