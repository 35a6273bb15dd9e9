"""Issue 26, point 4: a worker refuses a Redis that can evict the fleet's keys (rotated refresh
tokens, insert markers, job-id bindings) unless told to start anyway, and starts with a warning
when it cannot read the policy (a managed Redis refusing CONFIG)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fleet.helpers import Fleet
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.slow


def _warnings(logs: str) -> list[str]:
    lines = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    return [line["msg"] for line in lines if line.get("level") == "warning"]


async def test_an_evicting_redis_is_refused_unless_allowed(fleet: Fleet, tmp_path: Path) -> None:
    server = RedisServer(tmp_path, "--maxmemory-policy", "allkeys-lru")
    await server.start()
    try:
        settings = fleet.settings_with(redis_url=server.url, redis_prefix="sfworker-evict:")
        refused = fleet.spawn(settings)
        assert await refused.wait_exit(30) == 2
        logs = refused.logs()
        assert "configuration error" in logs
        assert "maxmemory-policy allkeys-lru" in logs
        assert "noeviction" in logs
        assert "SFWORKER_REDIS_ALLOW_EVICTION=true" in logs

        allowed = fleet.spawn(settings, redis_allow_eviction="true")
        await allowed.wait_ready()
        assert any("maxmemory-policy allkeys-lru" in m for m in _warnings(allowed.logs()))
    finally:
        server.kill()


async def test_a_redis_that_refuses_config_is_used_with_a_warning(
    fleet: Fleet, tmp_path: Path
) -> None:
    server = RedisServer(tmp_path, "--rename-command", "CONFIG", "")
    await server.start()
    try:
        settings = fleet.settings_with(redis_url=server.url, redis_prefix="sfworker-evict:")
        worker = fleet.spawn(settings)
        await worker.wait_ready()
        assert any("could not read Redis's maxmemory-policy" in m for m in _warnings(worker.logs()))
    finally:
        server.kill()
