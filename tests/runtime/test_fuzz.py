"""Acceptance (issue 10): fuzzing through the real queue. Hypothesis publishes whole messages
(fuzz_messages.py) to a worker process; after each one a sentinel follows (prefetch 1: the
worker takes one message at a time, so when the sentinel is answered the example was handled).

For every example: the worker is still running; a message with our reply_to got exactly one
result, which validates against contracts/result.schema.json; a body that is not a valid job by
contracts/request.schema.json was refused INVALID_REQUEST and the simulator received no request
meanwhile; one without reply_to went to the dead-letter queue (invalid) or, answered, to the
results exchange; one whose reply_to routes nowhere was answered and counted unroutable. After
all of them: no handler crash, nothing left in the queue, and a good job still succeeds.

Examples: SFWORKER_FUZZ_EXAMPLES, else 2000 in CI (CI=true), else 300."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections import Counter
from typing import Any

import aio_pika
import aiohttp
import jsonschema
import orjson
import pytest
from aio_pika.abc import AbstractIncomingMessage
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from sfsim.faults import OAUTH_ROUTES
from sfsim.testing import SimulatorClient

from tests.runtime.fuzz_messages import NONE, ODD, OURS, Fuzzed, messages
from tests.support import ROOT
from tests.support.metrics import metric
from tests.support.raw_amqp import raw_encoding
from tests.support.waiting import wait_until
from tests.support.workers import WorkerProcess
from worker.settings import Settings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

EXAMPLES = int(os.environ.get("SFWORKER_FUZZ_EXAMPLES") or (2000 if os.environ.get("CI") else 300))
SENTINEL = b"sentinel: not a job"
ANSWER_WITHIN = 20.0  # seconds; a healthy worker answers in milliseconds

REQUEST_SCHEMA = json.loads((ROOT / "contracts" / "request.schema.json").read_text())
RESULT_SCHEMA = json.loads((ROOT / "contracts" / "result.schema.json").read_text())
REQUEST_VALIDATOR = jsonschema.Draft202012Validator(REQUEST_SCHEMA)
RESULT_VALIDATOR = jsonschema.Draft202012Validator(RESULT_SCHEMA)


def valid_job(body: bytes) -> bool:
    """Is this body a job by the published request schema?"""
    try:
        data = json.loads(body)  # the standard library: a second opinion beside orjson
    except (ValueError, RecursionError):
        return False
    try:
        return REQUEST_VALIDATOR.is_valid(data)
    except RecursionError:
        return False


class Replies:
    """Everything that arrives on the test's reply queue, in order."""

    def __init__(self) -> None:
        self.bodies: list[tuple[str | None, bytes]] = []
        self.arrived = asyncio.Event()

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        self.bodies.append((message.correlation_id, message.body))
        self.arrived.set()


class Fuzzer:
    def __init__(
        self,
        channel: aio_pika.abc.AbstractChannel,
        settings: Settings,
        worker: WorkerProcess,
        simulator: SimulatorClient,
        http: aiohttp.ClientSession,
        reply_queue: str,
        replies: Replies,
        results_queue: aio_pika.abc.AbstractQueue,
    ) -> None:
        self.channel = channel
        self.settings = settings
        self.worker = worker
        self.simulator = simulator
        self.http = http
        self.reply_queue = reply_queue
        self.replies = replies
        self.results_queue = results_queue
        self.seen: Counter[str] = Counter()
        self.expected_dead = 0
        self.expected_unroutable = 0
        self.expected_results_exchange = 0

    async def rest_requests(self) -> int:
        requests = (await self.simulator.counters())["requests"]
        return sum(n for route, n in requests.items() if route not in OAUTH_ROUTES)

    async def unroutable(self) -> float:
        async with self.http.get(f"{self.worker.url}/metrics") as response:
            return metric(await response.text(), "sfworker_replies_unroutable_total")

    async def depth(self, name: str) -> int:
        queue = await self.channel.declare_queue(name, passive=True)
        return queue.declaration_result.message_count or 0

    async def publish(self, message: aio_pika.Message) -> None:
        exchange = await self.channel.get_exchange(self.settings.request_exchange, ensure=False)
        await exchange.publish(message, routing_key=self.settings.request_routing_key)

    async def check(self, fuzzed: Fuzzed) -> None:
        valid = valid_job(fuzzed.body)
        self.seen[f"{fuzzed.reply}/{'valid' if valid else 'invalid'}"] += 1
        reply_to = {OURS: self.reply_queue, NONE: None, ODD: fuzzed.odd_reply_to}[fuzzed.reply]
        rest_before = await self.rest_requests()
        unroutable_before = await self.unroutable() if fuzzed.reply == ODD else 0.0
        dead_before = await self.depth(self.settings.dead_letter_queue)
        results_before = await self.depth(self.results_queue.name)
        start = len(self.replies.bodies)
        message = aio_pika.Message(body=fuzzed.body, reply_to=reply_to)
        # Set as given (Message() would turn a RawStr into a plain str).
        message.correlation_id = fuzzed.correlation_id
        message.message_id = fuzzed.message_id
        message.timestamp = fuzzed.timestamp
        message.headers = fuzzed.headers or {}
        message.content_type = fuzzed.content_type
        message.app_id = fuzzed.app_id
        await self.publish(message)
        sentinel = f"sentinel-{uuid.uuid4().hex}"
        await self.publish(
            aio_pika.Message(body=SENTINEL, reply_to=self.reply_queue, correlation_id=sentinel)
        )
        answers = await self.until(sentinel, start)
        assert self.worker.proc.poll() is None, self.worker.logs()

        if fuzzed.reply == OURS:
            assert len(answers) == 1, f"{len(answers)} answers to one message"
            correlation, body = answers[0]
            result = orjson.loads(body)
            RESULT_VALIDATOR.validate(result)
            if fuzzed.correlation_id:
                assert correlation == fuzzed.correlation_id
            if not valid:
                assert result["status"] == "failed"
                assert result["error"]["code"] == "INVALID_REQUEST", result
                assert result["attempts"] == 0
        else:
            assert answers == [], "an answer to a message that did not ask for one here"
        if not valid:  # no invalid job reaches the simulator
            assert await self.rest_requests() == rest_before
        if fuzzed.reply == ODD:
            assert await self.unroutable() == unroutable_before + 1
        if fuzzed.reply == NONE:
            # Handled once: dead-lettered (the broker moves it a moment after the reject), or
            # answered to the results exchange.
            moved: tuple[int, int] = (0, 0)

            async def handled() -> bool:
                nonlocal moved
                dead = await self.depth(self.settings.dead_letter_queue) - dead_before
                moved = (dead, await self.depth(self.results_queue.name) - results_before)
                return sum(moved) >= 1

            await wait_until(handled, ANSWER_WITHIN, "the message dead-lettered or answered")
            assert sum(moved) == 1
            if not valid:
                assert moved == (1, 0)

    async def until(self, sentinel: str, start: int) -> list[tuple[str | None, bytes]]:
        """The replies after `start`, up to the sentinel's (which must come, and last)."""
        async with asyncio.timeout(ANSWER_WITHIN):
            while True:
                received = self.replies.bodies[start:]
                for index, (correlation, _body) in enumerate(received):
                    if correlation == sentinel:
                        return received[:index]
                self.replies.arrived.clear()
                await self.replies.arrived.wait()


async def test_fuzzed_messages_through_the_real_queue(
    settings: Settings,
    spawn_worker: Any,
    simulator: SimulatorClient,
    amqp_url: str,
) -> None:
    worker: WorkerProcess = spawn_worker(settings, prefetch=1)
    await worker.wait_ready()
    # A plain connection: a robust channel answers a passive declare from its cache, and the
    # queue depths read here must be the broker's.
    connection = await aio_pika.connect(amqp_url, timeout=10)
    channel = await connection.channel()
    replies = Replies()
    reply_queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    await reply_queue.consume(replies.on_message, no_ack=True)
    results = await channel.get_exchange(settings.results_exchange, ensure=False)
    results_queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    await results_queue.bind(results, routing_key="#")
    loop = asyncio.get_running_loop()

    async with connection, aiohttp.ClientSession() as http:
        fuzzer = Fuzzer(
            channel, settings, worker, simulator, http, reply_queue.name, replies, results_queue
        )

        @settings_for_fuzz
        @given(fuzzed=messages)
        def one(fuzzed: Fuzzed) -> None:
            future = asyncio.run_coroutine_threadsafe(fuzzer.check(fuzzed), loop)
            future.result(ANSWER_WITHIN * 3)

        with raw_encoding():
            await asyncio.to_thread(one)

        total = sum(fuzzer.seen.values())
        print(f"\nfuzz: {total} messages through the queue: {dict(sorted(fuzzer.seen.items()))}")
        assert total >= EXAMPLES
        page = await worker.metrics()
        assert metric(page, "sfworker_handler_crashes_total") == 0
        good = {
            "v": 1,
            "job_id": "after-fuzz",
            "operation": "search",
            "soql": "SELECT Id FROM Case WHERE Subject = 'none'",
        }
        start = len(replies.bodies)
        exchange = await channel.get_exchange(settings.request_exchange, ensure=False)
        await exchange.publish(
            aio_pika.Message(orjson.dumps(good), reply_to=reply_queue.name, correlation_id="g"),
            routing_key=settings.request_routing_key,
        )
        assert await fuzzer.until("g", start) == []  # nothing else was still on its way
        body = next(b for c, b in replies.bodies[start:] if c == "g")
        assert orjson.loads(body)["status"] == "no_data"
        assert await fuzzer.depth(settings.request_queue) == 0


settings_for_fuzz = hypothesis_settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=False,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
