"""What Redis did not take while it was away, kept in this process until it answers again, and
bounded in bytes (SFWORKER_REDIS_OUTAGE_BUFFER_BYTES).

Every worker of a fleet sees the same outage: a buffer bounded by count (it was 10,000 entries)
grew by the size of every result (2,000 results of 210 KB took a worker from 75 to 604 MiB in
5 s), so the whole fleet would have been killed for memory at once. Two kinds of entry, kept
apart:

- *precious*: job-id bindings and insert markers, a few dozen bytes each. Without them a
  redelivery to another worker runs the job again (an insert is POSTed twice). Kept first.
- *results*: what a redelivery is answered with. Without one, a redelivered search runs again;
  a redelivered insert is still stopped by its marker. Dropped first, oldest first.

The precious ones are dropped only when results alone cannot make room (a bound too small for
the bindings of the outage). Each drop is counted in `sfworker_redis_outage_dropped_total` by
kind; `sfworker_redis_outage_buffer_bytes` is what the buffer holds now.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

from prometheus_client import Counter, Gauge

from worker.observability.metrics import Metrics

log = logging.getLogger(__name__)

RESULT = "result"
BINDING = "binding"
INSERT = "insert"
KINDS = (RESULT, BINDING, INSERT)
# What an entry costs beyond its value: the key tuple, its job id, the dict slot, the bytes
# object's header. Counted so that a bound holds for many small entries too.
ENTRY_OVERHEAD = 240

Entry = tuple[str, str]  # (kind, job id)


class OutageMetrics:
    """The buffer's two series, registered on the process's registry."""

    def __init__(self, metrics: Metrics) -> None:
        self.dropped = Counter(
            "sfworker_redis_outage_dropped",
            "Entries kept for Redis during an outage and dropped to stay within "
            "SFWORKER_REDIS_OUTAGE_BUFFER_BYTES, by kind (result first; binding and insert "
            "only when results alone cannot make room)",
            ["kind"],
            registry=metrics.registry,
        )
        self.held = Gauge(
            "sfworker_redis_outage_buffer_bytes",
            "Bytes of results, job-id bindings and insert markers waiting for Redis",
            registry=metrics.registry,
        )
        for kind in KINDS:
            self.dropped.labels(kind)


class OutageBuffer:
    """Results, bindings and insert markers waiting for Redis, at most `max_bytes` in all."""

    def __init__(self, max_bytes: int, metrics: OutageMetrics | None = None) -> None:
        self.max_bytes = max_bytes
        self._metrics = metrics
        self._precious: OrderedDict[Entry, bytes | None] = OrderedDict()
        self._results: OrderedDict[Entry, bytes | None] = OrderedDict()
        self._bytes = 0
        self._dropping = False  # warned in this outage

    @property
    def held_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._precious) + len(self._results)

    def __bool__(self) -> bool:
        return bool(self._precious) or bool(self._results)

    def keep(self, kind: str, job_id: str, value: bytes | None) -> None:
        """Keep an entry for Redis (a newer one of the same kind and job replaces it); then drop
        results, oldest first, and precious entries only if that is not enough, until the
        buffer is within its bound."""
        entry = (kind, job_id)
        self.remove(kind, job_id)
        if kind == RESULT and _size(entry, value) > self.max_bytes:
            self._dropped(kind)  # alone over the bound: it would only push the others out
            return
        # The value as given: a stored result is packed (results.py) into bytes of its own size.
        (self._results if kind == RESULT else self._precious)[entry] = value
        self._bytes += _size(entry, value)
        while self._bytes > self.max_bytes and self:
            victims = self._results if self._results else self._precious
            (dropped_kind, dropped_id), dropped = victims.popitem(last=False)
            self._bytes -= _size((dropped_kind, dropped_id), dropped)
            self._dropped(dropped_kind)
        self._show()

    def oldest(self) -> tuple[Entry, bytes | None] | None:
        """The next entry to write back: precious ones first (they matter most if Redis goes
        away again), each kind oldest first."""
        for entries in (self._precious, self._results):
            if entries:
                entry, value = next(iter(entries.items()))
                return entry, value
        return None

    def remove(self, kind: str, job_id: str) -> None:
        entry = (kind, job_id)
        entries = self._results if kind == RESULT else self._precious
        if entry in entries:
            self._bytes -= _size(entry, entries.pop(entry))
        if not self:
            self._dropping = False
        self._show()

    def _dropped(self, kind: str) -> None:
        if self._metrics is not None:
            self._metrics.dropped.labels(kind).inc()
        if not self._dropping:
            self._dropping = True
            log.warning(
                "Redis outage buffer full: results kept for Redis are dropped, oldest first "
                "(a redelivered job whose result is dropped runs again; bindings and insert "
                "markers are kept); see SFWORKER_REDIS_OUTAGE_BUFFER_BYTES",
                extra={"max_bytes": self.max_bytes, "kind": kind},
            )

    def _show(self) -> None:
        if self._metrics is not None:
            self._metrics.held.set(self._bytes)


def _size(entry: Entry, value: bytes | None) -> int:
    return ENTRY_OVERHEAD + len(entry[1]) + (len(value) if value is not None else 0)
