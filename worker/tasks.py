"""Stopping background tasks that talk to Redis.

A task cancelled while redis-py awaits an answer may have the cancellation swallowed by the
library and go on looping. So each loop also checks a stop flag, and `stop` waits for the task
a bounded time: a shutdown, or a token request waiting for its lease keeper, never hangs on it.
"""

from __future__ import annotations

import asyncio
from typing import Any

STOP_WITHIN = 2.0


class StopFlag:
    """A stop flag for a background loop: `while flag.running:`."""

    def __init__(self) -> None:
        self.running = True


async def stop(task: asyncio.Task[Any] | None, flag: StopFlag | None = None) -> None:
    """Ask the task to stop (flag and cancel) and wait for it at most STOP_WITHIN seconds."""
    if flag is not None:
        flag.running = False
    if task is None or task.done():
        return
    task.cancel()
    await asyncio.wait({task}, timeout=STOP_WITHIN)
