"""The garbage collector's pauses, kept off the line.

CPython's full (generation 2) collection walks every container object the process holds. A
worker holds several hundred thousand of them from start-up alone (pydantic's schemas, aiohttp,
aio-pika, prometheus-client, the settings and accounts), none of which ever becomes garbage, and
walking them stops the event loop for 40 to 60 ms on the shipped pod's CPU: every job in flight
then waits, and at 400 lookups a second a merged answer of twenty jobs lands in that pause (issue
28's p99). `settle` runs once the worker has started: one collection, then `gc.freeze()` moves
what survived into the permanent generation, which later collections never walk (what
`gc.freeze` is documented for). Garbage made later is collected as before; only the walk over
start-up's objects is gone.

`watch` times every collection into `sfworker_gc_pause_seconds{generation}` (two clock reads per
collection), so a pause that comes back is seen on the dashboard, not guessed at.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import Histogram

log = logging.getLogger(__name__)


def settle() -> int:
    """Collect once, then freeze what is left out of later collections. Returns how many
    objects were frozen."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("start-up objects frozen out of the garbage collector", extra={"objects": frozen})
    return frozen


def thaw() -> None:
    """The worker stopped: what was frozen goes back to the collector (a process that starts
    workers again, as the tests do, leaks nothing that was alive at a start)."""
    gc.unfreeze()


class PauseWatch:
    """Times each collection into a histogram; `close` takes the callback out again."""

    def __init__(self, pauses: Histogram) -> None:
        # One series per generation, bound once (not looked up at every collection), and
        # shown from the start.
        self._by_generation = [pauses.labels(str(generation)) for generation in range(3)]
        self._started = 0.0
        self._callback: Callable[[str, dict[str, Any]], None] = self._on_gc
        gc.callbacks.append(self._callback)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            took = time.perf_counter() - self._started
            self._by_generation[info["generation"]].observe(took)

    def close(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)
