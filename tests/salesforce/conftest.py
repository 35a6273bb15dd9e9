"""Fixtures of the Salesforce tests: settings with quick retries, and a `Harness`
(tests/support/harness.py) on the test's simulator."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.harness import Harness, open_harness
from worker.settings import Settings


@pytest.fixture
def sf_settings() -> Settings:
    return Settings(
        http_port=0,
        allow_insecure_localhost=True,
        retry_base_ms=20,
        retry_cap_ms=200,
        token_backoff_initial_seconds=5,
    )


@pytest.fixture
async def sf(sf_settings: Settings, accounts_file: Path) -> AsyncIterator[Harness]:
    async with open_harness(sf_settings, accounts_file) as harness:
        yield harness
