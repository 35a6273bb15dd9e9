"""A worker running in this process (fast), for end-to-end tests through the real RabbitMQ."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from worker.app import Worker
from worker.config import Settings


@pytest.fixture
async def worker(settings: Settings) -> AsyncIterator[Worker]:
    running = Worker(settings)
    await running.start()
    yield running
    await running.stop()


def sample(worker: Worker, name: str, **labels: str) -> float:
    value = worker.metrics.registry.get_sample_value(name, labels)
    return value or 0.0
