"""The fault storm's pieces: seeded plans (which fault the simulator does to which job), the
answer each plan calls for, and a caller that publishes jobs and collects every answer on a
durable quorum reply queue (acked one by one, so a broker restart loses none)."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import orjson
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from sfsim.testing import SimulatorClient

from worker.settings import Settings

OPERATIONS = ("search", "get", "insert", "update", "upsert", "delete")
KINDS = (
    "none",
    "http_503",
    "unable_to_lock_row",
    "concurrent_limit",
    "expired_session",
    "latency_spike",
    "dropped_answer",
)
COUNTED = {"http_503", "unable_to_lock_row", "concurrent_limit"}
FAILURE_CODE = {
    "http_503": "SALESFORCE_UNAVAILABLE",
    "unable_to_lock_row": "SALESFORCE_ERROR",
    "concurrent_limit": "RATE_LIMITED",
    "expired_session": "AUTH_FAILED",
}
CONCURRENT_BODY = [
    {"message": "ConcurrentPerOrgLongTxn Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}
]


@dataclass(frozen=True)
class Plan:
    """One job and what the simulator does to its requests."""

    index: int
    operation: str
    kind: str
    count: int  # how many of its requests get the fault
    marker: str  # unique text in its path, query or body: the fault rule's target
    record_id: str | None = None

    @property
    def job_id(self) -> str:
        return f"storm-{self.index}"


def make_plans(rng: random.Random, jobs: int, attempts: int) -> list[Plan]:
    plans = []
    for index in range(jobs):
        operation = OPERATIONS[index % len(OPERATIONS)]
        kind = "none" if rng.random() < 0.4 else rng.choice(KINDS[1:])
        if kind in COUNTED:
            count = rng.randint(1, attempts)
        elif kind == "expired_session":
            count = rng.randint(1, 2)
        else:
            count = 1
        plans.append(Plan(index, operation, kind, count, f"zq{index}zq"))
    return plans


SUCCESS = {
    "search": ("no_data", None),
    "get": ("ok", None),
    "insert": ("ok", None),
    "update": ("ok", None),
    "upsert": ("ok", None),
    "delete": ("ok", None),
}


def expected(plan: Plan, attempts: int) -> tuple[str, str | None]:
    """The one answer the contract gives for what the simulator does to this job."""
    success = SUCCESS[plan.operation]
    if plan.kind == "none":
        return success
    if plan.kind in COUNTED:
        return ("failed", FAILURE_CODE[plan.kind]) if plan.count >= attempts else success
    if plan.kind == "expired_session":  # one refresh per operation
        return ("failed", "AUTH_FAILED") if plan.count >= 2 else success
    if plan.kind == "latency_spike":
        code = "OUTCOME_UNKNOWN" if plan.operation == "insert" else "TIMEOUT"
        return ("failed", code)
    # dropped_answer: the request was processed, the answer lost; resent unless an insert.
    if plan.operation == "insert":
        return ("failed", "OUTCOME_UNKNOWN")
    if plan.operation == "delete":
        return ("no_data", None)  # the resent delete finds the record deleted
    return success


def allowed_when_disturbed(plan: Plan, attempts: int) -> set[tuple[str, str | None]]:
    """Answers that are right for a job a worker kill, a broker restart or a link stall caught
    in flight: its planned faults may have been spent partly by a run that died, it may have
    waited past its deadline, it may have shared a Composite request with other jobs' faults,
    and an insert already sent is never sent again."""
    answers = {expected(plan, attempts), SUCCESS[plan.operation], ("failed", "TIMEOUT")}
    # Redelivered in a burst, it may share a Composite request with other jobs and so meet
    # their faults too (the simulator faults the whole request): any fault's code.
    answers |= {("failed", code) for code in FAILURE_CODE.values()}
    if plan.operation == "insert":
        answers.add(("failed", "OUTCOME_UNKNOWN"))
    if plan.operation == "delete":
        answers.add(("no_data", None))
    return answers


def job_body(plan: Plan, timeout_ms: int) -> dict[str, Any]:
    base: dict[str, Any] = {"v": 1, "job_id": plan.job_id, "timeout_ms": timeout_ms}
    m = plan.marker
    if plan.operation == "search":
        return {
            **base,
            "operation": "search",
            "soql": "SELECT Id, Subject FROM Case WHERE Subject = :s",
            "params": {"s": m},
        }
    if plan.operation == "get":
        return {**base, "operation": "get", "object": "Case", "id": plan.record_id}
    if plan.operation == "insert":
        return {**base, "operation": "insert", "object": "Case", "fields": {"Subject": m}}
    if plan.operation == "update":
        return {
            **base,
            "operation": "update",
            "object": "Case",
            "id": plan.record_id,
            "fields": {"Description": m},
        }
    if plan.operation == "upsert":
        return {
            **base,
            "operation": "upsert",
            "object": "Account",
            "external_id_field": "External_Id__c",
            "external_id": m,
            "fields": {"Name": m},
        }
    return {**base, "operation": "delete", "object": "Case", "id": plan.record_id}


async def inject(simulator: SimulatorClient, plan: Plan, timeout_ms: int) -> None:
    """Register the fault rule aimed at this job's requests only."""
    if plan.kind == "none":
        return
    target: dict[str, Any] = (
        {"body_contains": plan.marker}
        if plan.operation == "insert"
        else {"path_contains": plan.record_id or plan.marker}
    )
    if plan.kind == "http_503":
        await simulator.add_fault(status=503, count=plan.count, **target)
    elif plan.kind == "unable_to_lock_row":
        await simulator.add_fault(status=400, count=plan.count, **target)
    elif plan.kind == "concurrent_limit":
        await simulator.add_fault(status=403, body=CONCURRENT_BODY, count=plan.count, **target)
    elif plan.kind == "expired_session":
        await simulator.add_fault(status=401, count=plan.count, **target)
    elif plan.kind == "latency_spike":
        await simulator.add_fault(action="delay", delay_ms=timeout_ms + 1500, **target)
    elif plan.kind == "dropped_answer":
        await simulator.add_fault(action="drop_after", **target)


@dataclass
class Caller:
    """Publishes jobs (retrying what the broker did not confirm) and collects the answers."""

    channel: AbstractChannel
    settings: Settings
    reply_queue: str
    results: list[dict[str, Any]] = field(default_factory=list)
    published_at: dict[str, float] = field(default_factory=dict)
    answered_at: dict[str, float] = field(default_factory=dict)
    publish_retried: set[str] = field(default_factory=set)

    async def start(self) -> None:
        queue = await self.channel.declare_queue(
            self.reply_queue, durable=True, arguments={"x-queue-type": "quorum"}
        )
        await self.channel.set_qos(prefetch_count=100)
        await queue.consume(self._on_result, no_ack=False)

    async def _on_result(self, message: AbstractIncomingMessage) -> None:
        result: dict[str, Any] = orjson.loads(message.body)
        self.results.append(result)
        self.answered_at.setdefault(str(result["job_id"]), time.monotonic())
        await message.ack()

    async def publish(self, body: dict[str, Any]) -> None:
        job_id = str(body["job_id"])
        while True:
            try:
                exchange = await self.channel.get_exchange(
                    self.settings.request_exchange, ensure=False
                )
                async with asyncio.timeout(10):
                    await exchange.publish(
                        aio_pika.Message(
                            orjson.dumps(body),
                            content_type="application/json",
                            message_id=job_id,
                            correlation_id=job_id,
                            reply_to=self.reply_queue,
                            timestamp=time.time(),
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        ),
                        routing_key=self.settings.request_routing_key,
                    )
                break
            except Exception:  # not confirmed (broker restarting): the runtime sends it again
                self.publish_retried.add(job_id)
                await asyncio.sleep(0.3)
        self.published_at.setdefault(job_id, time.monotonic())

    def answers(self) -> Counter[str]:
        return Counter(str(r["job_id"]) for r in self.results)
