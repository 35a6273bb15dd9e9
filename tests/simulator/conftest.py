"""Fixtures: a simulator on a free port, a plain aiohttp session, and a logged-in REST helper."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from sfsim.testing import SimulatorClient, running_simulator

from tests.simulator.helpers import Api, client_credentials_token


@pytest.fixture
async def sim() -> AsyncIterator[SimulatorClient]:
    async with running_simulator() as client:
        yield client


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def api(sim: SimulatorClient, http: aiohttp.ClientSession) -> Api:
    return Api(sim, http, await client_credentials_token(http, sim))
