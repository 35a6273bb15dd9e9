"""Properties other AMQP clients may send and pamqp could not decode (a timestamp past the year
9999, short strings that are not UTF-8): the worker answers the message and keeps its
connection; before, the connection broke at each delivery until the message was dead-lettered."""

from __future__ import annotations

from typing import Any

import aio_pika
import orjson
import pytest

from tests.runtime.helpers import sample
from tests.support.job_client import JobClient
from tests.support.raw_amqp import RawStr, RawTimestamp, raw_encoding
from tests.support.waiting import wait_until
from worker.app import Worker
from worker.settings import Settings

JOB = {"v": 1, "operation": "search", "soql": "SELECT Id FROM Case"}

CASES: list[tuple[str, dict[str, Any], str]] = [
    ("timestamp past 9999", {"timestamp": RawTimestamp(2**63 - 1)}, "no_data"),
    ("timestamp of 2^64-1", {"timestamp": RawTimestamp(2**64 - 1)}, "no_data"),
    ("message_id not UTF-8", {"message_id": RawStr(b"\xff\xfe-id")}, "no_data"),
    ("type not UTF-8", {"type": RawStr(b"\xc3\x28")}, "no_data"),
    ("app_id not UTF-8", {"app_id": RawStr(b"\xed\xa0\x80")}, "no_data"),
    ("header name not UTF-8", {"headers": {RawStr(b"k\xff"): "v"}}, "no_data"),
    ("header timestamp past 9999", {"headers": {"t": RawTimestamp(2**63 - 1)}}, "no_data"),
]


@pytest.mark.parametrize(("case", "properties", "status"), CASES, ids=[c[0] for c in CASES])
async def test_odd_properties_are_answered_without_losing_the_connection(
    worker: Worker,
    jobs: JobClient,
    amqp: aio_pika.abc.AbstractRobustConnection,
    settings: Settings,
    case: str,
    properties: dict[str, Any],
    status: str,
) -> None:
    channel = await amqp.channel()
    exchange = await channel.get_exchange(settings.request_exchange)
    job_id = f"odd-{case.replace(' ', '-')}"
    message = aio_pika.Message(
        orjson.dumps({**JOB, "job_id": job_id}), reply_to=jobs.reply_queue, correlation_id=job_id
    )
    for name, value in properties.items():
        setattr(message, name, value)  # as given: Message() would turn a RawStr into a str
    with raw_encoding():
        await exchange.publish(message, routing_key=settings.request_routing_key)

    async def answered() -> bool:
        return any(r["job_id"] == job_id for r in jobs.results)

    await wait_until(answered, 10, "the answer")
    (result,) = [r for r in jobs.results if r["job_id"] == job_id]
    assert result["status"] == status
    assert sample(worker, "sfworker_amqp_reconnects_total") == 0
    assert (await jobs.call({**JOB, "job_id": f"{job_id}-after"}))["status"] == "no_data"
