"""A Redis that refuses the worker's password: the log says so (not "unreachable"), names
host:port, and never prints the password; the worker falls back and keeps working."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.support.redis_server import RedisServer
from worker.observability.metrics import Metrics
from worker.stores.link import RedisLink


async def test_a_wrong_redis_password_is_named_as_such_without_the_password(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = RedisServer(tmp_path, "--requirepass", "right-horse-battery")
    await server.start()
    metrics = Metrics()
    link = RedisLink(f"redis://:wrong-staple-4711@127.0.0.1:{server.port}/0", "sfw-cred:", metrics)
    caplog.set_level(logging.DEBUG)
    try:
        await link.start()
        assert not link.available
        assert metrics.registry.get_sample_value("sfworker_redis_fallback") == 1
    finally:
        await link.close()
        server.kill()
    [record] = [r for r in caplog.records if "refused the user or password" in r.getMessage()]
    assert record.__dict__["redis"] == f"127.0.0.1:{server.port}/0"
    everything = caplog.text + " ".join(str(r.__dict__) for r in caplog.records)
    assert "wrong-staple-4711" not in everything
    assert "right-horse-battery" not in everything
