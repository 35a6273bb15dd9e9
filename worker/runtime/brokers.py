"""Several broker addresses: connect to the first node that answers, fail over to the others.

`SFWORKER_AMQP_URL` may list the nodes of a RabbitMQ cluster, comma-separated. aio-pika's robust
connection reconnects to the one URL it was given; `FailoverConnection` is that robust connection
(channels, topology and the consumer are restored by aio-pika as before) with one difference:
every time a connection is lost or an attempt fails, the next attempt goes to the next address,
in turn. Connection options in a query string (`?heartbeat=10`) are read from the first URL.

Logs name a node by host and port only, never by its URL (credentials).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import aio_pika
import aiormq.exceptions
from aio_pika import RobustConnection
from yarl import URL

from worker.accounts import ConfigError
from worker.runtime.amqp_urls import node_of

log = logging.getLogger(__name__)

CONNECTION_ERRORS = (ConnectionError, OSError, TimeoutError, aio_pika.exceptions.AMQPError)

T = TypeVar("T")

# RabbitMQ 3.x: a basic.consume on a quorum queue whose Raft member has not started yet (another
# worker declared the queue a moment before, so this worker's declare found it) crashes the
# channel (`noproc`) and the broker closes the whole connection: 541 INTERNAL_ERROR. Seen when
# workers start together on fresh queues. The robust connection reconnects and restores what was
# declared; the consume is tried again.
FRESH_QUEUE_ERRORS = (
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
)
CONSUME_ATTEMPTS = 6


async def consume_retrying(
    connection: RobustConnection, queue: str, consume: Callable[[], Awaitable[T]]
) -> T:
    """`consume()`, again after the connection is back when the broker dropped it meanwhile."""
    delay = 0.1
    for attempt in range(1, CONSUME_ATTEMPTS + 1):
        try:
            return await consume()
        except FRESH_QUEUE_ERRORS as exc:
            if attempt == CONSUME_ATTEMPTS:
                raise
            log.warning(
                "RabbitMQ closed the connection at consume (a quorum queue not up yet); "
                "trying again",
                extra={"queue": queue, "error": type(exc).__name__, "attempt": attempt},
            )
            await asyncio.sleep(delay)
            delay *= 2
            async with asyncio.timeout(30):
                await connection.connected.wait()
    raise AssertionError("unreachable")


class FailoverConnection(RobustConnection):
    """A robust connection over several broker addresses, tried in turn."""

    def __init__(self, urls: Sequence[str], start: int = 0, **kwargs: Any) -> None:
        if not urls:
            raise ValueError("at least one broker URL is needed")
        self._urls = [URL(u) for u in urls]
        self._index = start % len(self._urls)
        super().__init__(self._urls[self._index], **kwargs)

    @property
    def node(self) -> str:
        """The node of the current (or next) connection attempt, `host:port`."""
        return node_of(self._urls[self._index])

    async def _on_connection_close(self, closing: asyncio.Future[Any]) -> None:
        # aio-pika calls this when an established connection is lost and when a connection
        # attempt fails: either way, the next attempt goes to the next address.
        if len(self._urls) > 1 and not self.close_called:
            lost = self.node
            self._index = (self._index + 1) % len(self._urls)
            self.url = self._urls[self._index]
            log.info(
                "RabbitMQ node unavailable; next attempt on another node",
                extra={"node": lost, "next_node": self.node},
            )
        await super()._on_connection_close(closing)


async def connect_robust(
    urls: Sequence[str], *, start: int = 0, attempt_timeout: float, **kwargs: Any
) -> FailoverConnection:
    """One attempt at the address `start` (modulo their number); the connection then fails
    over by itself. Raises one of CONNECTION_ERRORS when that node does not answer."""
    connection = FailoverConnection(urls, start, **kwargs)
    try:
        await connection.connect(timeout=attempt_timeout)
    except BaseException:
        with contextlib.suppress(Exception):
            await connection.close()
        raise
    return connection


async def check_login(connection: RobustConnection, user: str) -> None:
    """ConfigError unless `user` is the user RabbitMQ authenticated this connection as: a
    message stamped with another `user_id` is refused (PRECONDITION_FAILED). For
    SFWORKER_AMQP_LOGIN_USER, which EXTERNAL authentication leaves to the operator."""
    channel = await connection.channel(publisher_confirms=True)
    try:
        # Routed nowhere and not mandatory: the broker checks user_id, confirms, and drops it.
        message = aio_pika.Message(b"", user_id=user)
        async with asyncio.timeout(10):
            await channel.default_exchange.publish(
                message, routing_key="sfworker.login-check", mandatory=False
            )
    except aiormq.exceptions.ChannelPreconditionFailed:
        raise ConfigError(
            f"SFWORKER_AMQP_LOGIN_USER={user!r} is not the RabbitMQ user this worker logs in as "
            "(the broker refused a message stamped with it): set the user RabbitMQ maps the "
            "certificate to"
        ) from None
    finally:
        if not channel.is_closed:
            await channel.close()
