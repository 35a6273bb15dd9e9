"""Acceptance 4.2: bad input never kills the worker; each is answered INVALID_REQUEST (or, with
nobody to answer, dead-lettered), and the next good job succeeds."""

from __future__ import annotations

from typing import Any

import aio_pika
import orjson
import pytest

from tests.runtime.helpers import sample
from tests.support.job_client import JobClient
from tests.support.waiting import wait_until
from worker.app import Worker
from worker.settings import Settings

GOOD = {"v": 1, "operation": "search", "soql": "SELECT Id FROM Case"}
BAD: list[tuple[str, bytes, str]] = [
    ("not json", b"{not json", "not JSON"),
    ("json array", b'[{"v": 1}]', "not an object"),
    ("missing job_id", orjson.dumps(GOOD), "job_id"),
    ("unknown operation", orjson.dumps({"v": 1, "job_id": "b4", "operation": "merge"}), "merge"),
    ("v=2", orjson.dumps({**GOOD, "v": 2, "job_id": "b5"}), "v=2"),
    ("5 MB body", orjson.dumps({**GOOD, "job_id": "b6", "soql": "x" * 5_000_000}), "larger"),
    (
        "bad sObject name",
        orjson.dumps(
            {
                "v": 1,
                "job_id": "b7",
                "operation": "get",
                "object": "Case; DROP",
                "id": "500000000000001",
            }
        ),
        "object: ",
    ),
    (
        "bad id",
        orjson.dumps(
            {"v": 1, "job_id": "b8", "operation": "get", "object": "Case", "id": "500' OR 1=1"}
        ),
        "id: ",
    ),
    ("soql and sosl", orjson.dumps({**GOOD, "job_id": "b9", "sosl": "FIND {x}"}), "exactly one"),
    ("operation array", orjson.dumps({"v": 1, "job_id": "b10", "operation": []}), "operation"),
    ("operation object", orjson.dumps({"v": 1, "job_id": "b11", "operation": {}}), "operation"),
    ("v true", orjson.dumps({**GOOD, "v": True, "job_id": "b12"}), "v=True"),
    (
        "timeout string",
        orjson.dumps({**GOOD, "timeout_ms": "900", "job_id": "b13"}),
        "timeout_ms: ",
    ),
]


@pytest.mark.parametrize(("case", "body", "hint"), BAD, ids=[b[0] for b in BAD])
async def test_bad_input_is_answered_and_the_worker_stays_up(
    worker: Worker, jobs: JobClient, case: str, body: bytes, hint: str
) -> None:
    correlation = await jobs.publish(body, correlation_id=f"bad-{case}")
    result = await jobs.result(correlation, 10)
    assert result["status"] == "failed"
    assert result["error"]["code"] == "INVALID_REQUEST"
    assert result["error"]["retryable"] is False
    assert hint in result["error"]["message"]
    good = await jobs.call({**GOOD, "job_id": f"good-after-{case}"})
    assert good["status"] == "no_data"


async def test_bad_input_without_reply_to_is_dead_lettered(
    worker: Worker, jobs: JobClient, amqp: aio_pika.abc.AbstractRobustConnection, settings: Settings
) -> None:
    await jobs.publish(b"{broken", reply=False, message_id="dead-1")
    channel = await amqp.channel()
    dead = await channel.get_queue(settings.dead_letter_queue)
    async with dead.iterator(timeout=10) as it:
        async for message in it:
            assert message.body == b"{broken"
            deaths = (message.headers or {}).get("x-death")
            assert isinstance(deaths, list)
            assert deaths[0]["reason"] == "rejected"
            await message.ack()
            break
    assert (await jobs.call({**GOOD, "job_id": "good-after-dead"}))["status"] == "no_data"
    assert sample(worker, "sfworker_dead_lettered_total", reason="not_json") == 1


async def test_an_unroutable_reply_is_counted_and_the_request_acked(
    worker: Worker, jobs: JobClient, amqp: aio_pika.abc.AbstractRobustConnection, settings: Settings
) -> None:
    channel = await amqp.channel()
    exchange = await channel.get_exchange(settings.request_exchange)
    await exchange.publish(
        aio_pika.Message(
            body=orjson.dumps({**GOOD, "job_id": "hung-up"}),
            reply_to="amq.gen-caller-has-hung-up",
            message_id="hung-up",
        ),
        routing_key=settings.request_routing_key,
    )
    assert (await jobs.call({**GOOD, "job_id": "after-hang-up"}))["status"] == "no_data"

    async def returned() -> bool:  # the two jobs run concurrently: either may finish first
        return sample(worker, "sfworker_replies_unroutable_total") > 0

    await wait_until(returned, 10, "the returned reply to be counted")
    assert sample(worker, "sfworker_replies_unroutable_total") == 1
    queue = await channel.declare_queue(settings.request_queue, passive=True)
    assert queue.declaration_result.message_count == 0


FORGED = [["not a table"], [{"queue": "q", "reason": "rejected"}, None]]


@pytest.mark.parametrize("deaths", FORGED, ids=["string entry", "null entry"])
async def test_a_forged_x_death_header_is_refused(
    worker: Worker,
    jobs: JobClient,
    amqp: aio_pika.abc.AbstractRobustConnection,
    settings: Settings,
    deaths: list[Any],
) -> None:
    channel = await amqp.channel()
    exchange = await channel.get_exchange(settings.request_exchange)
    await exchange.publish(
        aio_pika.Message(
            body=orjson.dumps({**GOOD, "job_id": "forged"}),
            headers={"x-death": deaths},
            reply_to=jobs.reply_queue,
            correlation_id="forged",
        ),
        routing_key=settings.request_routing_key,
    )

    async def answered() -> bool:
        return any(r["job_id"] == "forged" for r in jobs.results)

    await wait_until(answered, 10, "the answer to the forged message")
    (result,) = [r for r in jobs.results if r["job_id"] == "forged"]
    assert result["error"]["code"] == "INVALID_REQUEST"
    assert "x-death" in result["error"]["message"]
    assert result["operation"] == "search"


async def test_a_forged_x_death_without_reply_to_is_moved_to_the_dead_letters(
    worker: Worker, jobs: JobClient, amqp: aio_pika.abc.AbstractRobustConnection, settings: Settings
) -> None:
    """RabbitMQ 3.10 crashes the queue and loses the message when it dead-letters one whose
    x-death has an entry that is not a table: the worker moves a clean copy itself."""
    channel = await amqp.channel()
    exchange = await channel.get_exchange(settings.request_exchange)
    await exchange.publish(
        aio_pika.Message(body=b"{broken", headers={"x-death": ["x"], "k": "v"}, message_id="f1"),
        routing_key=settings.request_routing_key,
    )
    dead = await channel.get_queue(settings.dead_letter_queue)
    async with dead.iterator(timeout=10) as it:
        async for message in it:
            assert message.body == b"{broken"
            headers = message.headers or {}
            assert "x-death" not in headers
            assert headers["x-sfworker-dead-letter-reason"] == "forged_x_death"
            assert headers["k"] == "v"
            assert message.message_id == "f1"
            await message.ack()
            break
    assert (await jobs.call({**GOOD, "job_id": "good-after-forged"}))["status"] == "no_data"
    assert sample(worker, "sfworker_dead_lettered_total", reason="forged_x_death") == 1
