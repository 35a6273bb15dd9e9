"""A request queue per tenant (strict mode): no two tenants in one FIFO.

A tenant's runtime publishes to the tenant exchange (`SFWORKER_TENANT_EXCHANGE`, topic) with the
routing key `<request routing key>.<its RabbitMQ user>`; RabbitMQ's topic authorisation
(`set_topic_permissions ... '^<key>\\.{username}$'`) lets each user publish under its own key
alone, so no tenant can put a job in another's queue. Each tenant's queue,
`<request queue>.tenant.<tenant>`, is bound under the keys of the tenant's users, bounded by
`SFWORKER_TENANT_QUEUE_MAX_LENGTH` with `x-overflow: reject-publish` (a flood gets negative
confirms at its own publisher, the others go on), and every worker consumes each on a channel of
its own with `SFWORKER_TENANT_PREFETCH`: a backlog of any size waits in its own queue and costs
the other tenants nothing. Nothing is moved between queues. Jobs published to the shared request
queue (before a tenant migrates) keep working as before.
"""

from __future__ import annotations

import logging

import aio_pika
from aiormq.exceptions import ChannelAccessRefused

from worker.accounts import Accounts, ConfigError
from worker.runtime import topology
from worker.runtime.brokers import FailoverConnection
from worker.runtime.consumer import Consumer
from worker.runtime.own_queues import OwnQueues
from worker.settings import Settings

log = logging.getLogger(__name__)


class TenantQueues:
    def __init__(self, settings: Settings, accounts: Accounts, consumer: Consumer) -> None:
        self._settings = settings
        self._accounts = accounts
        self._consumer = consumer
        self._queues = OwnQueues(
            "tenant queue",
            "give the worker's RabbitMQ user the tenant queues and the tenant exchange in its "
            "permissions (deploy/README.md section 7), or set SFWORKER_TENANT_QUEUES=false",
        )

    async def start(self, connection: FailoverConnection) -> None:
        """Declare the tenant exchange and each tenant's queue, and consume every one."""
        s = self._settings
        channel = await connection.channel(publisher_confirms=False)
        try:
            exchange = await channel.declare_exchange(
                s.tenant_exchange,
                aio_pika.ExchangeType.TOPIC,
                durable=True,
                timeout=topology.DECLARE_TIMEOUT,
            )
        except ChannelAccessRefused:
            raise ConfigError(
                f"the broker refused the tenant exchange {s.tenant_exchange!r}: {self._queues.hint}"
            ) from None
        for tenant in sorted(self._accounts.tenants.values(), key=lambda t: t.name):
            keys = [topology.tenant_routing_key(s, user) for user in sorted(tenant.amqp_users)]
            await self._queues.consume(
                connection,
                topology.tenant_queue(s, tenant.name),
                topology.tenant_queue_arguments(s),
                s.tenant_prefetch,
                self._consumer.handle,
                bind=(exchange, keys),
            )
        await channel.close()
        log.info(
            "a request queue per tenant",
            extra={
                "tenant_queues": len(self._queues),
                "exchange": s.tenant_exchange,
                "prefetch": s.tenant_prefetch,
                "max_length": s.tenant_queue_max_length,
            },
        )

    @property
    def in_flight(self) -> int:
        return self._queues.in_flight

    async def drain(self, grace: float) -> int:
        return await self._queues.drain(grace)
