"""Fair share: one account's slow Salesforce, or one tenant's flood, cannot hold the prefetch
that every other account's jobs need.

All jobs arrive on the one request queue, and a delivery holds a prefetch slot of its channel
until it is acked, i.e. until its result is confirmed. Jobs of one slow account (3 s answers, or
waiting for its `max_concurrency`) would hold every slot, and the jobs of every other tenant
would wait behind them in the queue. So each account gets a **lane**: a quorum queue of its own
(`<request queue>.lane.<account>`, same delivery limit and dead-letter exchange), consumed on a
channel of its own with its own prefetch. Taking a job from the request queue (when: see
direct_share.py):

- a job runs there, at once, when a slot of the prefetch is free and its account is within its
  share (all of the prefetch for an account alone, half of it while another account is present):
  the usual case, no extra hop;
- a job that finds no slot waits in the request queue's window for the next one freed, unless a
  move buys something: another account is present, or the window is full and turns over too
  slowly (`fair_share_look_ahead_seconds`). Then it is **moved** to its account's lane: a copy
  is published with a broker confirm, then the original is acked (a copy the broker does not
  confirm, e.g. the lane was deleted: the job runs off the request queue after all). A copy
  confirmed and the original not yet acked when the process dies gives a duplicate, answered
  like any redelivery (the result store, the insert markers); nothing is acked before a copy or
  a result is confirmed.
- anything the worker cannot place on a lane (not JSON, refused by tenancy, an account that does
  not resolve) runs at once: it is answered or dead-lettered without calling Salesforce.

The request queue's prefetch (`SFWORKER_ROUTING_PREFETCH`, 1024) is a look-ahead window: a
flood of one account is taken off the queue at once, and when another account shows up it is
moved a few jobs at a time, while the jobs of other accounts behind it in the window run (or
move) without waiting for it. An account's backlog then waits in its lane, where it holds only
that lane's prefetch. With a single account in the accounts file there is nobody to share with:
the worker then runs as before (one queue, app.py).

The copy is published by the worker's own user (RabbitMQ checks its `user_id`), carrying the
job's validated publisher in the header `x-sfworker-publisher`; a lane trusts that header only
on a message whose `user_id` is the worker's own, so tenant isolation is unchanged (tenants
cannot write to the default exchange, the only way into a lane; a message someone else put
there keeps its own, broker-checked `user_id`).

What KEDA sees: jobs waiting in the lanes are messages of the lane queues; the ScaledObject
sums the request queue and the lanes (deploy/kubernetes/keda-scaledobject.yaml).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from aio_pika.abc import AbstractIncomingMessage
from aiormq.exceptions import AMQPError, ChannelInvalidStateError

from worker.accounts import Accounts
from worker.jobs import Checked, Incoming
from worker.observability.metrics import Metrics
from worker.runtime import topology
from worker.runtime.amqp_urls import login_user
from worker.runtime.brokers import FailoverConnection
from worker.runtime.consumer import Consumer, to_incoming
from worker.runtime.direct_share import DirectShare, Turn
from worker.runtime.own_queues import OwnQueues
from worker.runtime.publisher import ResultPublisher
from worker.runtime.topology import lane_queue
from worker.runtime.window import Window
from worker.settings import Settings

log = logging.getLogger(__name__)

PUBLISHER_HEADER = "x-sfworker-publisher"
MOVERS = 4  # moves to one account's lane at once (each waits for the broker's confirm)


class FairShare:
    """The request queue's handler: runs a job at once, or moves it to its account's lane."""

    def __init__(
        self,
        settings: Settings,
        accounts: Accounts,
        consumer: Consumer,
        publisher: ResultPublisher,
        metrics: Metrics,
    ) -> None:
        self._settings = settings
        self._accounts = accounts
        self._consumer = consumer
        self._publisher = publisher
        self._metrics = metrics
        self._window = Window(
            settings.prefetch,
            settings.request_prefetch,
            widen_after=settings.fair_share_widen_after_ms / 1000,
            calm_for=settings.fair_share_narrow_after_seconds,
            on_change=self._window_changed,
        )
        self._share = DirectShare(
            settings.prefetch, self._window, settings.fair_share_look_ahead_seconds
        )
        self._resize: Callable[[int], Awaitable[None]] | None = None
        self._resizer: asyncio.Task[None] | None = None
        self._lanes = OwnQueues(
            "lane queue",
            "give the worker's RabbitMQ user the lanes in its permissions (deploy/README.md "
            "section 7), or set SFWORKER_FAIR_SHARE=false",
        )
        self._lane_of: set[str] = set()  # the accounts with a lane
        self._worker_user: str | None = None
        self._movers: dict[str, asyncio.Semaphore] = {}

    # --- start -----------------------------------------------------------------------------

    @property
    def window(self) -> int:
        """The request queue's prefetch to start with (window.py: narrow)."""
        return self._window.size

    async def start(
        self, connection: FailoverConnection, resize: Callable[[int], Awaitable[None]]
    ) -> None:
        """Declare every account's lane and consume it on a channel of its own; `resize` sets
        the request queue's prefetch (the window) when it widens or narrows."""
        self._resize = resize
        self._metrics.routing_window.set(self._window.size)
        self._worker_user = login_user(connection.url, self._settings.amqp_login_user)
        for name in self._accounts.by_name:
            await self._lanes.consume(
                connection,
                lane_queue(self._settings, name),
                topology.request_queue_arguments(self._settings),
                self._settings.prefetch,
                partial(self._on_lane, name),
            )
            self._lane_of.add(name)
        log.info(
            "fair share: a lane per account",
            extra={
                "lanes": len(self._lanes),
                "direct_per_account": self._share.per_account,
                "direct_total": self._share.total,
            },
        )

    # --- the request queue ---------------------------------------------------------------

    def _window_changed(self, size: int) -> None:
        self._metrics.routing_window.set(size)
        if self._resizer is None or self._resizer.done():
            self._resizer = asyncio.create_task(self._apply_window(), name="routing-window")

    async def _apply_window(self) -> None:
        """Set the request queue's prefetch to the window's size, until it stops changing."""
        applied: int | None = None
        while self._resize is not None and applied != self._window.size:
            applied = self._window.size
            try:
                await self._resize(applied)
            except (AMQPError, ChannelInvalidStateError, ConnectionError, TimeoutError) as exc:
                # The robust channel restores the last prefetch set; the next change retries.
                log.warning(
                    "could not resize the request queue's window",
                    extra={"prefetch": applied, "error": type(exc).__name__},
                )
                return

    async def route(self, message: AbstractIncomingMessage) -> None:
        incoming = to_incoming(message)
        # The pipeline's own check (reply rule, tenant, account): what it refuses runs here
        # at once, and a job that runs here is not checked twice.
        checked = self._consumer.pipeline.check(incoming)
        account = checked.account if checked.account in self._lane_of else None
        if account is None:
            self._share.take("")
            await self._run_here(message, "", incoming, checked)
            return
        share = self._share
        share.enter(account, window=True)
        try:
            turn = await share.turn(account)
            if turn is Turn.LEAVE or (turn is Turn.MOVE and _channel_closed(message)):
                # Stopping, or its channel died while it waited (the broker redelivers it):
                # left unacked, for another consumer; a copy now would be a duplicate.
                return
            if turn is Turn.RUN:
                await self._run_here(message, account, incoming, checked)
                return
            # Moves wait their turn, per account: a flood of one account is moved a few at a
            # time, while the jobs of other accounts behind it in the window run (or move).
            movers = self._movers.get(account)
            if movers is None:
                movers = self._movers[account] = asyncio.Semaphore(MOVERS)
            async with movers:
                moved = await self._move(message, account)
            if not moved:
                # The lane refused the copy (deleted meanwhile, broker trouble): the job still
                # holds its delivery here, so it runs here rather than spend a delivery attempt.
                share.take(account)
                await self._run_here(message, account, incoming, checked)
        finally:
            share.leave(account, window=True)

    async def _run_here(
        self, message: AbstractIncomingMessage, key: str, incoming: Incoming, checked: Checked
    ) -> None:
        """Run the job on its direct slot (taken by the caller), then free the slot."""
        try:
            if _channel_closed(message):
                return  # it waited for its slot while its channel died: the broker redelivers it
            await self._consumer.handle(message, incoming, checked)
        finally:
            self._share.release(key)

    async def _move(self, message: AbstractIncomingMessage, account: str) -> bool:
        """A confirmed copy on the account's lane, then the ack of the original. False when
        the copy was not confirmed (the original is then untouched)."""
        headers: dict[str, Any] = {}
        if message.user_id:
            headers[PUBLISHER_HEADER] = message.user_id
        try:
            await self._publisher.forward(
                message, lane_queue(self._settings, account), headers, drop=(PUBLISHER_HEADER,)
            )
        except (AMQPError, ChannelInvalidStateError, ConnectionError, TimeoutError) as exc:
            log.warning(
                "could not move a job to its lane; it runs off the request queue",
                extra={"account": account, "error": type(exc).__name__},
            )
            return False
        self._metrics.lane_moves.labels(account).inc()
        try:
            await message.ack()
        except (AMQPError, ChannelInvalidStateError, ConnectionError) as exc:
            log.warning(
                "ack lost after moving a job to its lane; its redelivery is a duplicate",
                extra={"account": account, "error": type(exc).__name__},
            )
        return True

    # --- the lanes -------------------------------------------------------------------------

    async def _on_lane(self, account: str, message: AbstractIncomingMessage) -> None:
        # A copy the worker moved here (RabbitMQ vouches for its user_id) names the job's
        # publisher in a header; anything else in a lane keeps its own user_id.
        incoming = to_incoming(message)
        if self._worker_user is not None and message.user_id == self._worker_user:
            carried = (message.headers or {}).get(PUBLISHER_HEADER)
            publisher = carried if isinstance(carried, str) else None
            incoming = dataclasses.replace(incoming, user_id=publisher)
        self._share.enter(account, window=False)  # the account is present while it runs
        try:
            await self._consumer.handle(message, incoming)
        finally:
            self._share.leave(account, window=False)

    @property
    def in_flight(self) -> int:
        return self._lanes.in_flight

    async def drain(self, grace: float) -> int:
        """Stop the lanes' consumers, wait up to `grace` s for their jobs, cancel the rest (left
        unacked: the broker gives them to another worker). Returns how many. The jobs waiting in
        the request queue's window for a slot are not started (left unacked too)."""
        left = self._share.close()
        self._resize = None
        if self._resizer is not None:
            await asyncio.gather(self._resizer, return_exceptions=True)
        if left:
            log.info("jobs waiting for a slot left to the broker", extra={"jobs": left})
        return await self._lanes.drain(grace)


def _channel_closed(message: AbstractIncomingMessage) -> bool:
    try:
        return bool(message.channel.is_closed)
    except ChannelInvalidStateError:
        return True
