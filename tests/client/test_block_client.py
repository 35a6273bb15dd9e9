"""The runtime's client (worker.client.BlockClient) against the real RabbitMQ: message properties,
typed results by correlation id, timeouts, durable reply queues; and against a real worker."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import aio_pika
import orjson
import pytest
from sfsim.testing import SimulatorClient

from tests.support.waiting import wait_until
from worker.app import Worker
from worker.client import BlockClient, InvalidResult, PublishFailed
from worker.contract import BlockResult, ErrorCode, SearchJob, Status
from worker.runtime.reach import Unreachable
from worker.settings import Settings


@pytest.fixture
async def catcher(
    amqp_url: str, names: dict[str, str]
) -> AsyncIterator[tuple[aio_pika.abc.AbstractChannel, aio_pika.abc.AbstractQueue]]:
    """The request exchange with a plain queue bound, standing in for the worker."""
    connection = await aio_pika.connect(amqp_url, timeout=10)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            names["request_exchange"], aio_pika.ExchangeType.DIRECT, auto_delete=True
        )
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(exchange, routing_key=names["request_routing_key"])
        yield channel, queue


async def take(queue: aio_pika.abc.AbstractQueue) -> aio_pika.abc.AbstractIncomingMessage:
    async with asyncio.timeout(10):
        while (message := await queue.get(no_ack=True, fail=False)) is None:
            await asyncio.sleep(0.05)
    return message


def answer(job_id: str, **fields: object) -> bytes:
    return orjson.dumps({"v": 1, "job_id": job_id, "status": "no_data", **fields})


async def test_a_job_carries_the_properties_and_its_typed_result_comes_back(
    amqp_url: str, names: dict[str, str], catcher: tuple[aio_pika.abc.AbstractChannel, ...]
) -> None:
    channel, queue = catcher
    job = SearchJob(v=1, job_id="bc-1", operation="search", soql="SELECT Id FROM Contact")
    async with BlockClient.connect(
        amqp_url, exchange=names["request_exchange"], routing_key=names["request_routing_key"]
    ) as client:
        before = time.time()
        correlation = await client.publish(job)
        message = await take(queue)
        assert correlation == "bc-1"
        assert message.correlation_id == "bc-1"
        assert message.message_id == "bc-1"
        assert message.reply_to == client.reply_queue
        assert message.user_id == "guest"  # the broker checked it against the login
        assert message.content_type == "application/json"
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert message.timestamp is not None
        assert message.timestamp.timestamp() >= int(before)
        assert orjson.loads(message.body)["soql"] == "SELECT Id FROM Contact"

        await channel.default_exchange.publish(
            aio_pika.Message(answer("bc-1", operation="search"), correlation_id="bc-1"),
            routing_key=message.reply_to or "",
        )
        result = await client.result(correlation, 10)
        assert isinstance(result, BlockResult)
        assert (result.status, result.job_id) == (Status.NO_DATA, "bc-1")

        with pytest.raises(TimeoutError):
            await client.call({"v": 1, "job_id": "bc-never", "operation": "get"}, wait=0.3)

        raw = await client.publish({"v": 1, "job_id": "bc-2"})
        await take(queue)
        await channel.default_exchange.publish(
            aio_pika.Message(b'{"v": 1, "job_id": "bc-2", "status": "maybe"}', correlation_id=raw),
            routing_key=client.reply_queue,
        )
        with pytest.raises(InvalidResult, match="bc-2"):
            await client.result(raw, 10)


async def test_a_result_that_arrives_before_its_caller_asks_for_it_is_kept(
    amqp_url: str, names: dict[str, str], catcher: tuple[aio_pika.abc.AbstractChannel, ...]
) -> None:
    """Publish many, then collect: results that come back while the caller is still publishing
    are there when it asks (a bench run lost them: they went to a future nobody held)."""
    channel, queue = catcher
    async with BlockClient.connect(
        amqp_url, exchange=names["request_exchange"], routing_key=names["request_routing_key"]
    ) as client:
        early = await client.publish({"v": 1, "job_id": "early-1"})
        message = await take(queue)
        await channel.default_exchange.publish(
            aio_pika.Message(answer("early-1"), correlation_id=early),
            routing_key=message.reply_to or "",
        )

        async def arrived() -> bool:
            return not client.awaiting(early)

        await wait_until(arrived, 10, "the result of early-1 at the client")
        result = await client.result(early, 1)
        assert (result.job_id, result.status) == ("early-1", Status.NO_DATA)


async def test_user_id_can_be_left_out_for_tests_of_raw_input(
    amqp_url: str, names: dict[str, str], catcher: tuple[aio_pika.abc.AbstractChannel, ...]
) -> None:
    _, queue = catcher
    async with BlockClient.connect(
        amqp_url,
        exchange=names["request_exchange"],
        routing_key=names["request_routing_key"],
        stamp_user_id=False,
    ) as client:
        await client.publish(b"{not json", expect_reply=False, message_id="raw-1")
        message = await take(queue)
        assert (message.user_id, message.reply_to, message.body) == (None, None, b"{not json")


async def test_a_durable_reply_queue_keeps_results_that_arrive_before_anyone_waits(
    amqp_url: str, names: dict[str, str], catcher: tuple[aio_pika.abc.AbstractChannel, ...]
) -> None:
    channel, queue = catcher
    replies = f"{names['request_queue']}.replies"
    try:
        async with BlockClient.connect(
            amqp_url,
            exchange=names["request_exchange"],
            routing_key=names["request_routing_key"],
            reply_queue=replies,
        ) as client:
            correlation = await client.publish({"v": 1, "job_id": "dur-1"})
            assert client.reply_queue == replies
            message = await take(queue)
        # The caller is gone; the worker answers anyway, into the durable queue.
        await channel.default_exchange.publish(
            aio_pika.Message(answer("dur-1"), correlation_id=correlation),
            routing_key=message.reply_to or "",
        )
        async with BlockClient.connect(
            amqp_url,
            exchange=names["request_exchange"],
            routing_key=names["request_routing_key"],
            reply_queue=replies,
        ) as again:
            result = await again.result("dur-1", 10)
            assert result.job_id == "dur-1"
    finally:
        await channel.queue_delete(replies)


async def test_publishing_where_no_worker_declared_the_topology_fails_clearly(
    amqp_url: str,
) -> None:
    missing = f"test.{uuid.uuid4().hex[:8]}.nowhere"
    async with BlockClient.connect(amqp_url, exchange=missing, routing_key=missing) as client:
        with pytest.raises(PublishFailed, match="does not exist"):
            await client.publish({"v": 1, "job_id": "x"})


async def test_an_unreachable_broker_is_one_line_naming_host_and_port() -> None:
    with pytest.raises(Unreachable) as caught:
        async with BlockClient.connect("amqp://runtime:s3cret-pw@127.0.0.1:1/"):
            pass
    message = str(caught.value)
    assert "127.0.0.1:1" in message
    assert "connection refused" in message
    assert "s3cret-pw" not in message
    assert "runtime" not in message


async def test_results_from_a_running_worker_are_typed(
    settings: Settings, simulator: SimulatorClient, amqp_url: str
) -> None:
    [contact] = await simulator.seed("Contact", [{"LastName": "Hopper", "Phone": "555-0177"}])
    worker = Worker(settings)
    await worker.start()
    try:
        async with BlockClient.connect(
            amqp_url,
            exchange=settings.request_exchange,
            routing_key=settings.request_routing_key,
        ) as client:
            found, unknown = await asyncio.gather(
                client.call(
                    {
                        "v": 1,
                        "job_id": "typed-1",
                        "operation": "search",
                        "soql": "SELECT Id FROM Contact WHERE Phone = :p",
                        "params": {"p": "555-0177"},
                    },
                    wait=20,
                ),
                client.call(
                    {
                        "v": 1,
                        "job_id": "typed-2",
                        "account": "nope",
                        "operation": "get",
                        "object": "Contact",
                        "id": contact,
                    },
                    wait=20,
                ),
            )
    finally:
        await worker.stop()
    assert found.status is Status.OK
    assert found.records is not None
    assert found.records[0]["Id"] == contact
    assert unknown.status is Status.FAILED
    assert unknown.error is not None
    assert unknown.error.code is ErrorCode.UNKNOWN_ACCOUNT
