"""Exchanges and queues of contract v1, declared at start (idempotently; names from settings).

salesforce.blocks (direct) --salesforce.blocks--> salesforce.blocks (quorum, delivery limit)
    dead-lettered --> salesforce.blocks.dlx (fanout) --> salesforce.blocks.dead (quorum,
                      retention: x-message-ttl and x-max-length, oldest dropped first)
salesforce.results (topic): results of jobs without reply_to, key <status>.<operation>

Upgrades: a dead-letter queue declared by an older version (no retention arguments) cannot be
redeclared with them (RabbitMQ answers PRECONDITION_FAILED). `dead_letter_retention` tries on a
channel of its own; when refused, the worker uses the queue as it is (passive declare) and logs
how to give it retention with a policy (docs/runbook.md#dead-letters).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange, AbstractQueue

from worker.accounts import ConfigError, load_accounts
from worker.settings import Settings

log = logging.getLogger(__name__)


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


def dead_letter_queue_arguments(settings: Settings) -> dict[str, Any]:
    return {
        "x-queue-type": "quorum",
        "x-message-ttl": int(settings.dead_letter_max_age * 1000),
        "x-max-length": settings.dead_letter_max_length,
    }


DECLARE_TIMEOUT = 10.0


def lane_queue(settings: Settings, account: str) -> str:
    """The queue of an account's jobs beyond its share of the request queue (lanes.py)."""
    return f"{settings.request_queue}.lane.{account}"


def tenant_queue(settings: Settings, tenant: str) -> str:
    """The request queue of one tenant's jobs (strict mode, tenant_queues.py)."""
    return f"{settings.request_queue}.tenant.{tenant}"


def tenant_routing_key(settings: Settings, user: str) -> str:
    """The routing key a tenant's runtime, logged in as `user`, publishes with on the tenant
    exchange; RabbitMQ's topic permission `^<request routing key>\\.{username}$` lets each user
    publish with its own key alone."""
    return f"{settings.request_routing_key}.{user}"


def tenant_queue_arguments(settings: Settings) -> dict[str, Any]:
    """A tenant queue: as the request queue, and bounded (a flood is refused at its publisher)."""
    return {
        **request_queue_arguments(settings),
        "x-max-length": settings.tenant_queue_max_length,
        "x-overflow": "reject-publish",
    }


async def dead_letter_retention(connection: AbstractConnection, settings: Settings) -> bool:
    """Declare the dead-letter queue with its retention arguments, on a channel of its own (a
    refusal closes the channel). False when an existing queue has other arguments: `declare`
    must then take it as it is (`retention=False`)."""
    channel = await connection.channel(publisher_confirms=False)
    try:
        await channel.declare_queue(
            settings.dead_letter_queue,
            durable=True,
            arguments=dead_letter_queue_arguments(settings),
            timeout=DECLARE_TIMEOUT,
        )
    except aio_pika.exceptions.ChannelPreconditionFailed:
        log.warning(
            "the dead-letter queue exists with other arguments: its retention is not set by the "
            "worker; give it a policy (docs/runbook.md#dead-letters)",
            extra={
                "queue": settings.dead_letter_queue,
                "message_ttl_ms": int(settings.dead_letter_max_age * 1000),
                "max_length": settings.dead_letter_max_length,
            },
        )
        return False
    finally:
        if not channel.is_closed:
            await channel.close()
    return True


async def declare(
    channel: AbstractChannel, settings: Settings, *, retention: bool = True
) -> Topology:
    """Declare everything; the dead-letter exchange first, so nothing is ever dropped. With
    `retention=False` the dead-letter queue is taken as it exists (see the module's note)."""
    t = DECLARE_TIMEOUT
    dlx = await channel.declare_exchange(
        settings.dead_letter_exchange, aio_pika.ExchangeType.FANOUT, durable=True, timeout=t
    )
    if retention:
        dead = await channel.declare_queue(
            settings.dead_letter_queue,
            durable=True,
            arguments=dead_letter_queue_arguments(settings),
            timeout=t,
        )
    else:
        dead = await channel.declare_queue(settings.dead_letter_queue, passive=True, timeout=t)
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


async def delete(
    channel: AbstractChannel, settings: Settings, accounts_files: Iterable[Path] = ()
) -> None:
    """Remove everything `declare` made, the lanes of the accounts' accounts and the queues of
    their tenants (of the settings' accounts file and of `accounts_files`: demo and test
    topologies; never used by `run`)."""
    accounts: set[str] = set()
    tenants: set[str] = set()
    for path in (settings.accounts_file, *accounts_files):
        try:
            read = load_accounts(path, allow_insecure_localhost=True)
        except (ConfigError, OSError):
            continue
        accounts |= set(read.by_name)
        tenants |= set(read.tenants)
    lanes = [lane_queue(settings, account) for account in sorted(accounts)]
    tenant_queues = [tenant_queue(settings, tenant) for tenant in sorted(tenants)]
    for queue in (settings.request_queue, settings.dead_letter_queue, *lanes, *tenant_queues):
        await channel.queue_delete(queue)
    for exchange in (
        settings.request_exchange,
        settings.tenant_exchange,
        settings.dead_letter_exchange,
        settings.results_exchange,
    ):
        await channel.exchange_delete(exchange)
