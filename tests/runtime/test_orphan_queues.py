"""Issue 27, point 2: a lane or tenant queue whose account or tenant left the accounts file is
reported at start (a warning and `sfworker_orphan_queue_messages`), never silently left with
jobs nobody will answer; one that was deleted leaves the fleet's register."""

from __future__ import annotations

import logging
from pathlib import Path

import aio_pika
import pytest
from sfsim.testing import SimulatorClient

from tests.support.accounts import write_accounts
from tests.support.metrics import metric
from tests.support.settings import make_settings
from worker.app import Worker
from worker.runtime.topology import lane_queue
from worker.settings import Settings

OTHER = """
[accounts.other]
instance_url = "{url}"
flow = "client_credentials"
client_id = "3MVG9-other"
client_secret = "s3cr3t"
"""


async def _started(settings: Settings) -> Worker:
    worker = Worker(settings)
    await worker.start()
    return worker


async def test_a_lane_whose_account_is_gone_is_reported_then_forgotten_once_deleted(
    tmp_path: Path,
    amqp_url: str,
    names: dict[str, str],
    settings: Settings,
    simulator: SimulatorClient,
    redis_url: str,
    redis_prefix: str,
    amqp: aio_pika.abc.AbstractRobustConnection,
    caplog: pytest.LogCaptureFixture,
) -> None:
    both = write_accounts(
        tmp_path / "both.toml", simulator.base_url, extra=OTHER.format(url=simulator.base_url)
    )
    fleet = {"redis_url": redis_url, "redis_prefix": redis_prefix}
    first = await _started(make_settings(amqp_url, names, both, **fleet))
    await first.stop()
    lane = lane_queue(settings, "other")
    channel = await amqp.channel()
    for _ in range(3):  # jobs that were moved to the lane and never ran
        await channel.default_exchange.publish(aio_pika.Message(b"{}"), routing_key=lane)

    caplog.set_level(logging.WARNING, logger="worker.runtime.orphans")
    only_main = make_settings(amqp_url, names, settings.accounts_file, **fleet)
    second = await _started(only_main)
    try:
        assert metric(second.metrics, "sfworker_orphan_queue_messages", queue=lane) == 3
        reported = {
            r.queue: r.messages  # type: ignore[attr-defined]
            for r in caplog.records
            if r.name == "worker.runtime.orphans"
        }
        # main's lane too: with one account left there is no fair share, and no lane consumer.
        assert reported == {lane: 3, lane_queue(settings, "main"): 0}
    finally:
        await second.stop()

    await channel.queue_delete(lane)
    await channel.queue_delete(lane_queue(settings, "main"))
    caplog.clear()
    third = await _started(only_main)
    await third.stop()
    assert not [r for r in caplog.records if r.name == "worker.runtime.orphans"]
    await channel.close()
