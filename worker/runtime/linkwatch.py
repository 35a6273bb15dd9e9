"""Watching the broker link for what the TCP connection does not say.

A silent link: a partition keeps the TCP connection open and nothing arrives.

RabbitMQ sends a heartbeat frame whenever it has sent nothing for half the heartbeat interval,
so a healthy link delivers a frame at least every heartbeat. After two heartbeats without any
frame (RabbitMQ's own rule for its peers) the link is taken as gone: `SilenceWatch` calls its
`on_silent` callback (the service stops taking work and reports not-ready) and closes the
connection the way aiormq does for a stuck one (its reader is cancelled), so that the robust
connection reconnects, on the next node of a cluster. aiormq alone would wait three heartbeats
plus three seconds.

A blocked link: during a memory or disk alarm RabbitMQ stops reading from connections that
publish (`connection.blocked`): results cannot go out until `connection.unblocked`. The watch
reports each change through `on_blocked`.

The time of the last frame received and the blocked state are aiormq's (private attributes,
read here only): when a version of aiormq no longer has them, the watch logs that once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aio_pika.abc import AbstractConnection

log = logging.getLogger(__name__)

MISSED_HEARTBEATS = 2
_LAST_FRAME = "_Connection__last_frame_time"
_UNBLOCKED = "_Connection__connection_unblocked"


def underlay_of(connection: AbstractConnection) -> Any | None:
    """The aiormq connection under an aio-pika one, while there is one."""
    transport = getattr(connection, "transport", None)
    return getattr(transport, "connection", None) if transport is not None else None


def silent_for(underlay: Any) -> float | None:
    """Seconds since aiormq last received a frame; None when unknown."""
    last = getattr(underlay, _LAST_FRAME, None)
    if not isinstance(last, float | int):
        return None
    return asyncio.get_running_loop().time() - float(last)


def heartbeat_of(underlay: Any) -> float:
    value = getattr(underlay, "heartbeat_timeout", 0)
    return float(value) if isinstance(value, int | float) else 0.0


def is_blocked(underlay: Any) -> bool:
    """Whether the broker has blocked this connection (an alarm), as aiormq saw it."""
    unblocked = getattr(underlay, _UNBLOCKED, None)
    return isinstance(unblocked, asyncio.Event) and not unblocked.is_set()


def close_stuck(underlay: Any) -> None:
    """Close a connection that no longer hears the broker: cancel its frame reader, as aiormq
    itself does for a stuck connection (the connection closes with it, without waiting)."""
    reader = getattr(underlay, "_reader_task", None)
    if isinstance(reader, asyncio.Task) and not reader.done():
        reader.cancel()


class LinkWatch:
    """Watches a (robust) connection: silent for two heartbeats, blocked or not."""

    def __init__(
        self,
        connection: AbstractConnection,
        on_silent: Callable[[float], None],
        on_blocked: Callable[[bool], None],
    ) -> None:
        self._connection = connection
        self._on_silent = on_silent
        self._on_blocked = on_blocked
        self._blocked = False
        self._warned_unknown = False

    def _set_blocked(self, blocked: bool) -> None:
        if blocked != self._blocked:
            self._blocked = blocked
            self._on_blocked(blocked)

    def check(self) -> float:
        """One look; returns how long until the next one is useful (seconds)."""
        underlay = underlay_of(self._connection)
        if underlay is None or getattr(underlay, "is_closed", True):
            self._set_blocked(False)  # a new connection starts unblocked
            return 0.25
        self._set_blocked(is_blocked(underlay))
        heartbeat = heartbeat_of(underlay)
        if heartbeat <= 0:
            return 1.0
        silent = silent_for(underlay)
        if silent is None:
            if not self._warned_unknown:
                self._warned_unknown = True
                log.warning("cannot tell when the broker last spoke; silent links go unnoticed")
            return 5.0
        if silent > heartbeat * MISSED_HEARTBEATS:
            self._on_silent(silent)
            close_stuck(underlay)
        return max(0.1, heartbeat / 4)

    async def run(self) -> None:
        pause = self.check()
        while pause > 0:
            await asyncio.sleep(pause)
            pause = self.check()
