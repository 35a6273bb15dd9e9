"""Queues nobody consumes any more: a lane whose account, or a tenant queue whose tenant, left the
accounts file. Their jobs would wait unanswered for ever while KEDA keeps counting them, so the
fleet keeps a register of every lane and tenant queue it declared (in Redis, without a TTL) and
each worker, at start, looks at the registered queues the accounts file no longer names: each
one that still exists is logged with its depth and shown by `sfworker_orphan_queue_messages`;
one that is gone leaves the register. Without Redis the worker cannot know the queues of
earlier configurations, and says so once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from aiormq.exceptions import AMQPError, ChannelNotFoundEntity

from worker.observability.metrics import Metrics
from worker.runtime import topology
from worker.runtime.brokers import FailoverConnection
from worker.stores.link import RedisLink, RedisUnavailable
from worker.stores.queue_register import QueueRegister

log = logging.getLogger(__name__)


async def report_orphans(
    connection: FailoverConnection,
    link: RedisLink | None,
    current: Iterable[str],
    metrics: Metrics,
) -> list[str]:
    """Register `current` (the lanes and tenant queues this worker declared) and report the
    registered queues not among them that still exist. Returns their names."""
    if link is None:
        log.info(
            "no SFWORKER_REDIS_URL: queues left by accounts or tenants removed from the accounts "
            "file are not looked for (rabbitmqctl list_queues name messages consumers)"
        )
        return []
    names = set(current)
    register = QueueRegister(link)
    try:
        known = await register.add(names)
    except RedisUnavailable:
        log.warning("Redis out of reach: queues left by removed accounts are not looked for")
        return []
    orphans = []
    for name in sorted(known - names):
        try:
            depth = await _depth(connection, name)
        except (AMQPError, TimeoutError) as exc:
            log.warning(
                "could not look at a registered queue",
                extra={"queue": name, "error": type(exc).__name__},
            )
            continue
        if depth is None:
            await register.forget(name)
            continue
        messages, consumers = depth
        orphans.append(name)
        metrics.orphan_queue_messages.labels(name).set(messages)
        log.warning(
            "a queue nobody should consume: its account or tenant is gone from the accounts file "
            "(docs/runbook.md, 'A queue nobody consumes')",
            extra={"queue": name, "messages": messages, "consumers": consumers},
        )
    return orphans


async def _depth(connection: FailoverConnection, name: str) -> tuple[int, int] | None:
    """(messages, consumers) of the queue `name`; None when it does not exist (AMQPError or
    TimeoutError when the broker could not tell)."""
    channel = await connection.channel(publisher_confirms=False)
    try:
        queue = await channel.declare_queue(name, passive=True, timeout=topology.DECLARE_TIMEOUT)
        result = queue.declaration_result
        return result.message_count or 0, result.consumer_count or 0
    except ChannelNotFoundEntity:
        return None
    finally:
        if not channel.is_closed:
            await channel.close()
