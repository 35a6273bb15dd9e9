"""Exchanges and queues of contract v1, declared at start (idempotently; names from settings).

salesforce.blocks (direct) --salesforce.blocks--> salesforce.blocks (quorum, delivery limit)
    dead-lettered --> salesforce.blocks.dlx (fanout) --> salesforce.blocks.dead (quorum)
salesforce.results (topic): results of jobs without reply_to, key <status>.<operation>
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

from worker.config import Settings


@dataclass(frozen=True)
class Topology:
    requests: AbstractExchange
    queue: AbstractQueue
    results: AbstractExchange
    dead_letters: AbstractQueue


def request_queue_arguments(settings: Settings) -> dict[str, Any]:
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": settings.delivery_limit,
        "x-dead-letter-exchange": settings.dead_letter_exchange,
    }


DECLARE_TIMEOUT = 10.0


async def declare(channel: AbstractChannel, settings: Settings) -> Topology:
    """Declare everything; the dead-letter exchange first, so nothing is ever dropped."""
    t = DECLARE_TIMEOUT
    dlx = await channel.declare_exchange(
        settings.dead_letter_exchange, aio_pika.ExchangeType.FANOUT, durable=True, timeout=t
    )
    dead = await channel.declare_queue(
        settings.dead_letter_queue, durable=True, arguments={"x-queue-type": "quorum"}, timeout=t
    )
    await dead.bind(dlx, routing_key="", timeout=t)
    requests = await channel.declare_exchange(
        settings.request_exchange, aio_pika.ExchangeType.DIRECT, durable=True, timeout=t
    )
    queue = await channel.declare_queue(
        settings.request_queue,
        durable=True,
        arguments=request_queue_arguments(settings),
        timeout=t,
    )
    await queue.bind(requests, routing_key=settings.request_routing_key, timeout=t)
    results = await channel.declare_exchange(
        settings.results_exchange, aio_pika.ExchangeType.TOPIC, durable=True, timeout=t
    )
    return Topology(requests=requests, queue=queue, results=results, dead_letters=dead)


async def delete(channel: AbstractChannel, settings: Settings) -> None:
    """Remove everything `declare` made (demo and test topologies; never used by `run`)."""
    for queue in (settings.request_queue, settings.dead_letter_queue):
        await channel.queue_delete(queue)
    for exchange in (
        settings.request_exchange,
        settings.dead_letter_exchange,
        settings.results_exchange,
    ):
        await channel.exchange_delete(exchange)
