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
from collections.abc import Sequence
from typing import Any

import aio_pika
from aio_pika import RobustConnection
from yarl import URL

log = logging.getLogger(__name__)

CONNECTION_ERRORS = (ConnectionError, OSError, TimeoutError, aio_pika.exceptions.AMQPError)


def node_of(url: URL | str) -> str:
    """`host:port` of a broker URL: what a log line may show."""
    parsed = URL(url) if isinstance(url, str) else url
    default = 5671 if parsed.scheme == "amqps" else 5672
    return f"{parsed.host or '?'}:{parsed.port or default}"


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
