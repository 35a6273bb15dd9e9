"""Several broker addresses in SFWORKER_AMQP_URL: the worker starts on the first that answers,
and when its connection is lost it resumes on the next one. The second "node" here is a TCP
proxy in front of the same broker, so a node can be cut without touching the shared broker."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from pydantic import ValidationError

from tests.runtime.helpers import sample
from tests.support.job_client import JobClient
from tests.support.ports import free_port
from tests.support.settings import make_settings
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import wait_until
from worker.app import Worker
from worker.runtime.amqp_urls import node_of
from worker.runtime.reach import Unreachable, connect_amqp
from worker.settings import Settings

SEARCH = {"v": 1, "operation": "search", "soql": "SELECT Id FROM Case"}


def test_each_address_is_checked_and_the_error_never_shows_a_password() -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(amqp_url="amqp://u:pw-secret@a:5672/, http://u:pw-secret@b/")
    text = str(caught.value.errors(include_input=False))
    assert "address 2 of 2" in text
    assert "pw-secret" not in text
    settings = Settings(amqp_url="amqp://u:p@a:5681/, amqps://u:p@b/vhost?heartbeat=10")
    # The heartbeat default goes to every address that does not set its own.
    assert settings.amqp_urls() == [
        "amqp://u:p@a:5681/?heartbeat=2",
        "amqps://u:p@b/vhost?heartbeat=10",
    ]
    assert [node_of(u) for u in settings.amqp_urls()] == ["a:5681", "b:5671"]
    odd = Settings(amqp_url="amqp://u:p%2Cw@a/?name=x&frame_max=8192", amqp_heartbeat_seconds=5)
    assert odd.amqp_urls() == ["amqp://u:p%2Cw@a/?name=x&frame_max=8192&heartbeat=5"]


def _with_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=f"{parts.netloc.rsplit(':', 1)[0]}:{port}").geturl()


@pytest.fixture
async def proxy(amqp_url: str) -> AsyncIterator[TcpProxy]:
    parts = urlsplit(amqp_url)
    running = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5672)
    await running.start()
    yield running
    await running.cut()


async def test_the_worker_starts_on_the_first_address_that_answers(
    amqp_url: str,
    names: dict[str, str],
    accounts_file: Path,
    settings: Settings,
    jobs: JobClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    dead = _with_port(amqp_url, free_port())
    two = make_settings(f"{dead},{amqp_url}", names, accounts_file)
    worker = Worker(two)
    with caplog.at_level(logging.INFO):
        await worker.start()
    try:
        assert (await jobs.call({**SEARCH, "job_id": "first-answering"}))["status"] == "no_data"
    finally:
        await worker.stop()
    nodes = [r.node for r in caplog.records if hasattr(r, "node")]
    assert nodes[:1] == [f"127.0.0.1:{urlsplit(dead).port}"]  # the dead node was tried first
    assert nodes[-1] == node_of(amqp_url)  # then the one that answered
    credentials = urlsplit(amqp_url).netloc.rsplit("@", 1)[0]
    assert credentials not in caplog.text


async def test_a_lost_connection_resumes_on_the_next_address_that_answers(
    amqp_url: str,
    names: dict[str, str],
    accounts_file: Path,
    settings: Settings,
    jobs: JobClient,
    proxy: TcpProxy,
) -> None:
    through_proxy = _with_port(amqp_url, proxy.port)
    dead = _with_port(amqp_url, free_port())
    # After the cut, the attempt on the next address fails too: the one after must be tried.
    three = make_settings(f"{through_proxy},{dead},{amqp_url}", names, accounts_file)
    worker = Worker(three)
    await worker.start()
    try:
        assert proxy.open_connections == 1  # on the first address
        assert (await jobs.call({**SEARCH, "job_id": "before-cut"}))["status"] == "no_data"
        await proxy.cut()  # the first "node" dies and stays dead

        async def resumed() -> bool:
            return sample(worker, "sfworker_amqp_reconnects_total") >= 1

        await wait_until(resumed, 30, "the worker reconnected on the second address")
        result = await jobs.call({**SEARCH, "job_id": "after-cut"}, wait=30)
        assert result["status"] == "no_data"

        async def ready() -> bool:  # the watchdog confirms the consumer at its next check
            return all(worker.service.readiness().values())

        await wait_until(ready, 10, "/readyz ready again")
    finally:
        await worker.stop()


async def test_commands_reach_the_first_node_that_answers(amqp_url: str) -> None:
    dead = _with_port(amqp_url, free_port())
    connection = await connect_amqp(f"{dead},{amqp_url}", within=5)
    await connection.close()
    other = _with_port(amqp_url, free_port())
    with pytest.raises(Unreachable) as caught:
        await connect_amqp(f"{dead}, {other}", within=5)
    message = str(caught.value)
    assert node_of(dead) in message
    assert node_of(other) in message
    assert urlsplit(amqp_url).netloc.rsplit("@", 1)[0] not in message
