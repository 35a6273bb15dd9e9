"""The RabbitMQ side of a worker process: connect (robustly), declare, consume, watch the
consumer, and drain on shutdown.

- Two channels: one consumes with manual acks and `prefetch` (the in-flight bound of the
  process); one publishes results with confirms and raises on returned (unroutable) messages.
- The connection is robust: channels, topology and the consumer come back after a broker restart.
  Deliveries in flight when a channel dies cannot be acked any more; the broker redelivers them
  and the result store answers (see worker/jobs/once.py).
- A watchdog checks that the consumer still exists on its channel (the broker may cancel it:
  queue deleted, leader change). It re-declares and re-consumes; if that keeps failing, the
  process stops with a non-zero exit code so Kubernetes restarts it.
- A link watch (linkwatch.py) closes a connection silent for two heartbeats (a partition: the
  TCP connection stays open, nothing arrives) so that it reconnects, and reports not-ready
  meanwhile. While the broker blocks the connection (memory or disk alarm: results cannot go
  out), deliveries are held without being started and /readyz says not ready; they run once it
  unblocks.
- Shutdown: cancel the consumer, let in-flight jobs finish within the grace period (they are
  answered and acked), cancel what is left (unacked: another worker takes it), close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
import aiormq.exceptions
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
)

from worker.accounts import ConfigError
from worker.observability.metrics import Metrics
from worker.runtime import brokers, topology
from worker.runtime.amqp_urls import node_of
from worker.runtime.linkwatch import LinkWatch
from worker.runtime.publisher import ResultPublisher
from worker.settings import Settings

log = logging.getLogger(__name__)

EXIT_CONSUMER_LOST = 3
_WATCHDOG_RESTART_AFTER = 2  # failed checks before re-consuming
_WATCHDOG_GIVE_UP_AFTER = 6  # failed checks before exiting

Handler = Callable[[AbstractIncomingMessage], Awaitable[None]]


def _channel_closed(message: AbstractIncomingMessage) -> bool:
    try:
        return bool(message.channel.is_closed)
    except aiormq.exceptions.ChannelInvalidStateError:
        return True


class RabbitService:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._connection: brokers.FailoverConnection | None = None
        self._consume_channel: AbstractRobustChannel | None = None
        self._queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        self._prefetch = settings.request_prefetch  # of the request queue's consumer
        self._consumers_lock = asyncio.Lock()  # a resize, or the drain's cancel, at a time
        self._handler: Handler | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._watchdog: asyncio.Task[None] | None = None
        self._consumer_ok = False
        self._draining = False
        self._retention = True  # the dead-letter queue takes its retention arguments
        self._link_watch: asyncio.Task[None] | None = None
        self._silent = False
        self._unblocked = asyncio.Event()
        self._unblocked.set()
        self.fatal = asyncio.Event()
        self.exit_code = 0
        self.publisher: ResultPublisher | None = None

    # --- start -----------------------------------------------------------------------------

    async def connect(self, startup_timeout: float) -> None:
        """Connect to the first broker address that answers, trying them in turn with backoff
        for up to `startup_timeout` seconds. Later losses fail over by themselves."""
        urls = self._settings.amqp_urls()
        delay = 0.5
        loop = asyncio.get_running_loop()
        give_up = loop.time() + startup_timeout
        attempt = 0
        while True:
            node = node_of(urls[attempt % len(urls)])
            try:
                self._connection = await brokers.connect_robust(
                    urls,
                    start=attempt,
                    reconnect_interval=self._settings.reconnect_interval_seconds,
                    client_properties={"connection_name": "sfworker"},
                    attempt_timeout=10,
                )
                break
            except brokers.CONNECTION_ERRORS as exc:
                if loop.time() + delay > give_up:
                    where = ", ".join(node_of(u) for u in urls)
                    raise ConnectionError(
                        f"cannot reach RabbitMQ at {where} for {startup_timeout:.0f} s "
                        f"({type(exc).__name__}): start it, or fix SFWORKER_AMQP_URL"
                    ) from None
                log.warning(
                    "RabbitMQ not reachable yet; retrying",
                    extra={"error": type(exc).__name__, "node": node, "retry_in_s": delay},
                )
                attempt += 1
                # A cluster: the next node at once; the same node again only after backoff.
                if attempt % len(urls) == 0:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self._settings.reconnect_interval_seconds * 4)
        log.info("connected to RabbitMQ", extra={"node": self._connection.node})
        self._connection.reconnect_callbacks.add(self._on_reconnect)
        self._connection.close_callbacks.add(self._on_connection_lost)
        watch = LinkWatch(self._connection, self._on_silent, self._on_blocked)
        self._link_watch = asyncio.create_task(watch.run(), name="amqp-link-watch")

    async def open(self) -> ResultPublisher:
        """Declare the topology and open the publishing channel."""
        assert self._connection is not None
        publish_channel = await self._connection.channel(
            publisher_confirms=True, on_return_raises=True
        )
        try:
            self._retention = await topology.dead_letter_retention(self._connection, self._settings)
            declared = await topology.declare(
                publish_channel, self._settings, retention=self._retention
            )
        except aio_pika.exceptions.ChannelPreconditionFailed as exc:
            raise ConfigError(
                f"the broker refused the topology: {exc.args[0] if exc.args else exc}. An "
                "existing queue or exchange has other arguments than the settings ask for "
                "(e.g. SFWORKER_DELIVERY_LIMIT): delete it, or use other names"
            ) from None
        self.publisher = ResultPublisher(
            publish_channel,
            declared.results,
            self._metrics,
            self._settings.publish_timeout_seconds,
            dead_letter_queue=self._settings.dead_letter_queue,
            blocked=self.blocked,
            login=self._settings.amqp_login_user,
        )
        return self.publisher

    async def consume(self, handler: Handler, prefetch: int | None = None) -> None:
        """Open the consuming channel and start taking deliveries, `prefetch` at most unacked
        (default: the settings' request prefetch)."""
        assert self._connection is not None
        self._handler = handler
        self._prefetch = prefetch or self._settings.request_prefetch
        channel = await self._connection.channel(publisher_confirms=False)
        assert isinstance(channel, AbstractRobustChannel)
        await channel.set_qos(prefetch_count=self._prefetch, timeout=topology.DECLARE_TIMEOUT)
        self._consume_channel = channel
        self._queue = await channel.declare_queue(
            self._settings.request_queue,
            durable=True,
            arguments=topology.request_queue_arguments(self._settings),
            timeout=topology.DECLARE_TIMEOUT,
        )
        # Bound here too, so that the robust channel restores the binding along with the queue
        # when the broker loses the queue (deleted, node lost) while we are connected.
        await self._queue.bind(
            self._settings.request_exchange,
            routing_key=self._settings.request_routing_key,
            timeout=topology.DECLARE_TIMEOUT,
        )
        queue = self._settings.request_queue
        await brokers.consume_retrying(self._connection, queue, self._consume)
        self._watchdog = asyncio.create_task(self._watch(), name="consumer-watchdog")
        log.info(
            "consuming",
            extra={
                "queue": self._settings.request_queue,
                "prefetch": self._prefetch,
            },
        )

    async def resize(self, prefetch: int) -> None:
        """A new prefetch for the request queue. RabbitMQ applies a prefetch to the consumers
        started after it: a new consumer starts with it, then the old one is cancelled (the
        deliveries it holds stay this worker's, acked as their jobs finish; a delivery sent
        before the cancel's answer reaches its handler first: one channel, frames in order)."""
        async with self._consumers_lock:
            channel, queue = self._consume_channel, self._queue
            if self._draining or queue is None or channel is None or prefetch == self._prefetch:
                return
            await channel.set_qos(prefetch_count=prefetch, timeout=topology.DECLARE_TIMEOUT)
            self._prefetch = prefetch
            old = self._consumer_tag
            await self._consume()
            if old is not None and old != self._consumer_tag:
                await queue.cancel(old, timeout=topology.DECLARE_TIMEOUT)
        log.info("request queue window resized", extra={"prefetch": prefetch})

    async def _consume(self) -> None:
        assert self._queue is not None
        assert self._consume_channel is not None
        self._consumer_tag = await self._queue.consume(
            self._on_message, no_ack=False, timeout=topology.DECLARE_TIMEOUT
        )
        self._watch_cancellations(await self._consume_channel.get_underlay_channel())
        self._consumer_ok = True

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        # aio-pika runs each delivery in its own task: own it, so shutdown can wait for it.
        task = asyncio.current_task()
        assert task is not None
        assert self._handler is not None
        self._tasks.add(task)
        try:
            if not self._unblocked.is_set():
                # The broker blocks our publishes (an alarm): hold the job unstarted rather than
                # run it and be unable to answer.
                await self._unblocked.wait()
            if _channel_closed(message):
                return  # its channel died meanwhile (a silent link): the broker redelivers it
            await self._handler(message)
        finally:
            self._tasks.discard(task)

    def blocked(self) -> bool:
        """Whether the broker blocks this worker's publishes (a memory or disk alarm)."""
        return not self._unblocked.is_set()

    def _on_silent(self, seconds: float) -> None:
        self._consumer_ok = False
        if self._silent:
            return
        self._silent = True
        self._metrics.amqp_silent_links.inc()
        log.warning(
            "RabbitMQ link silent for two heartbeats: not ready, closing it and reconnecting",
            extra={"node": self._connection.node if self._connection else "", "silent_s": seconds},
        )

    def _on_blocked(self, blocked: bool) -> None:
        self._metrics.amqp_blocked.set(1 if blocked else 0)
        if blocked:
            self._unblocked.clear()
            log.warning(
                "RabbitMQ blocks this connection (memory or disk alarm): no new job is started "
                "until it unblocks; not ready"
            )
        else:
            self._unblocked.set()
            log.warning("RabbitMQ unblocked this connection: taking jobs again")

    def _on_reconnect(self, *_args: Any) -> None:
        self._silent = False
        self._metrics.amqp_reconnects.inc()
        node = self._connection.node if self._connection is not None else ""
        log.warning("reconnected to RabbitMQ", extra={"node": node})

    def _on_connection_lost(self, *_args: Any) -> None:
        self._consumer_ok = False
        if not self._draining:
            log.warning("connection to RabbitMQ lost; reconnecting")

    # --- watchdog --------------------------------------------------------------------------

    async def _consumer_present(self) -> bool | None:
        """True/False when the channel is up and answers; None while reconnecting."""
        connection, channel = self._connection, self._consume_channel
        if connection is None or channel is None or not connection.connected.is_set():
            return None
        if channel.is_closed:
            return False
        try:
            async with asyncio.timeout(2):
                underlay = await channel.get_underlay_channel()
        except (TimeoutError, RuntimeError, aio_pika.exceptions.AMQPError):
            return None
        self._watch_cancellations(underlay)
        consumers: dict[str, Any] = getattr(underlay, "consumers", {})
        return self._consumer_tag in consumers

    def _watch_cancellations(self, underlay: Any) -> None:
        """Count broker cancellations of our consumer on this (possibly new) channel. The robust
        channel usually re-consumes within a second, before the watchdog would notice."""
        callbacks = getattr(underlay, "on_consumer_cancel_callbacks", None)
        if callbacks is not None:
            callbacks.add(self._on_cancelled)

    def _on_cancelled(self, frame: Any) -> None:
        if getattr(frame, "consumer_tag", None) == self._consumer_tag and not self._draining:
            self._metrics.consumer_restarts.inc()
            log.warning("consumer cancelled by the broker; re-establishing")

    async def _watch(self) -> None:
        misses = 0
        while not self._draining:
            await asyncio.sleep(self._settings.watchdog_interval_seconds)
            present = await self._consumer_present()
            self._pace_reconnects(connected=present is not None)
            if present is None:
                self._consumer_ok = False
                continue
            if present:
                misses = 0
                self._consumer_ok = True
                continue
            misses += 1
            self._consumer_ok = False
            log.warning("consumer missing on its channel", extra={"checks_failed": misses})
            if misses >= _WATCHDOG_GIVE_UP_AFTER:
                log.error("consumer could not be re-established; exiting for a restart")
                self.exit_code = EXIT_CONSUMER_LOST
                self.fatal.set()
                return
            if misses >= _WATCHDOG_RESTART_AFTER:
                await self._restart_consumer()

    def _pace_reconnects(self, *, connected: bool) -> None:
        """Back off: while the broker stays unreachable, the pause between reconnection
        attempts doubles at each watchdog tick, up to 8 times the setting; reset once back."""
        connection = self._connection
        if connection is None or not hasattr(connection, "reconnect_interval"):
            return
        base = self._settings.reconnect_interval_seconds
        if connected:
            connection.reconnect_interval = base
        else:
            connection.reconnect_interval = min(connection.reconnect_interval * 2, base * 8)

    async def _restart_consumer(self) -> None:
        assert self._queue is not None
        try:
            if self._consumer_tag is not None:
                with contextlib.suppress(Exception):
                    await self._queue.cancel(self._consumer_tag)
            assert self._connection is not None
            channel = await self._connection.channel()
            try:
                await topology.declare(channel, self._settings, retention=self._retention)
            finally:
                await channel.close()
            await self._queue.declare(timeout=topology.DECLARE_TIMEOUT)
            await self._consume()
        except (aio_pika.exceptions.AMQPError, RuntimeError, ConnectionError, TimeoutError) as exc:
            log.warning("re-consuming failed", extra={"error": type(exc).__name__})
            return
        log.warning("consumer re-established by the watchdog")

    # --- health and shutdown ---------------------------------------------------------------

    def readiness(self) -> dict[str, bool]:
        connection = self._connection
        connected = connection is not None and connection.connected.is_set()
        return {
            "connected": connected and not self._silent,
            "consuming": connected and self._consumer_ok,
            "accepting": not self._draining,
            "unblocked": self._unblocked.is_set(),
        }

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    @property
    def connection(self) -> brokers.FailoverConnection:
        """The (robust) connection, for layers that consume queues of their own (lanes.py)."""
        assert self._connection is not None, "connect() first"
        return self._connection

    async def drain(self, grace: float) -> int:
        """Stop taking deliveries and wait up to `grace` s for in-flight ones; cancel the rest.
        Returns how many were cancelled (left unacked for another worker)."""
        self._draining = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            await asyncio.gather(self._watchdog, return_exceptions=True)
        if self._queue is not None:
            try:
                async with asyncio.timeout(5), self._consumers_lock:
                    if self._consumer_tag is not None:
                        await self._queue.cancel(self._consumer_tag)
            except (TimeoutError, aio_pika.exceptions.AMQPError, RuntimeError) as exc:
                log.warning("consumer cancel failed", extra={"error": type(exc).__name__})
        pending = set(self._tasks)
        log.info("draining", extra={"in_flight": len(pending), "grace_s": grace})
        if pending:
            _done, pending = await asyncio.wait(pending, timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
            log.warning(
                "grace period over; unfinished jobs left unacked", extra={"cancelled": len(pending)}
            )
        return len(pending)

    async def close(self) -> None:
        for task in (self._watchdog, self._link_watch):
            if task is not None and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()
