"""The worker's own spans: what OpenTelemetry's SDK span records, without its per-span cost.

A job traced in full makes four to six spans; the SDK's `Span` (a lock, bounded attribute
containers that check every value, a processor chain, a `ReadableSpan` copy at the end, then
protobuf objects in a thread) cost as much CPU as the job itself (docs/benchmarks.md §8). These
spans hold the same fields (ids, parent, kind, times, attributes, events, links, status), are
encoded to OTLP/protobuf once, when they end (otlp.py), and are exported in batches (export.py).
The sampling decision stays the SDK's: its sampler, configured by `OTEL_TRACES_SAMPLER[_ARG]`,
decides each job's span (otel.py); the spans inside a sampled job follow it.

Attributes take str, bool, int and float values only (what the hooks set).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import Final

AttributeValue = str | bool | int | float

# OTLP's SpanKind numbers.
INTERNAL: Final = 1
CLIENT: Final = 3
PRODUCER: Final = 4
CONSUMER: Final = 5

_getrandbits = random.getrandbits


def new_span_id() -> int:
    """As the SDK's RandomIdGenerator: 64 random bits, never 0."""
    span_id = _getrandbits(64)
    while span_id == 0:
        span_id = _getrandbits(64)
    return span_id


def new_trace_id() -> int:
    trace_id = _getrandbits(128)
    while trace_id == 0:
        trace_id = _getrandbits(128)
    return trace_id


class SpanRef:
    """A span's identity as others see it (a parent, a link): what OpenTelemetry calls a
    SpanContext."""

    __slots__ = ("remote", "sampled", "span_id", "trace_id", "trace_state")

    def __init__(
        self,
        trace_id: int,
        span_id: int,
        sampled: bool,
        trace_state: str | None = None,
        remote: bool = False,
    ) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.sampled = sampled
        self.trace_state = trace_state  # the W3C `tracestate` header's text, or None
        self.remote = remote


class Span:
    """One recorded span (or, `recording` False, one whose trace is not sampled: it only
    carries ids, and every setter is a no-op)."""

    __slots__ = (
        "_sink",
        "attributes",
        "end_ns",
        "error",
        "events",
        "kind",
        "links",
        "name",
        "parent",
        "ref",
        "start_ns",
    )

    def __init__(
        self,
        sink: Callable[[Span], None] | None,
        name: str,
        ref: SpanRef,
        parent: SpanRef | None,
        kind: int = INTERNAL,
        attributes: dict[str, AttributeValue] | None = None,
        start_ns: int | None = None,
    ) -> None:
        self._sink = sink  # where it goes when it ends (None: not recorded)
        self.name = name
        self.ref = ref
        self.parent = parent
        self.kind = kind
        self.attributes: dict[str, AttributeValue] = attributes if attributes is not None else {}
        self.events: list[tuple[str, int, Mapping[str, AttributeValue]]] = []
        self.links: list[tuple[SpanRef, Mapping[str, AttributeValue]]] = []
        self.error: str | None = None  # the status description when the status is ERROR
        self.start_ns = time.time_ns() if start_ns is None else start_ns
        self.end_ns = 0

    @property
    def recording(self) -> bool:
        return self._sink is not None

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        if self._sink is not None:
            self.attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        if self._sink is not None:
            self.attributes.update(attributes)

    def add_event(self, name: str, attributes: Mapping[str, AttributeValue]) -> None:
        if self._sink is not None:
            self.events.append((name, time.time_ns(), attributes))

    def add_link(self, ref: SpanRef, attributes: Mapping[str, AttributeValue]) -> None:
        if self._sink is not None:
            self.links.append((ref, attributes))

    def fail(self, description: str) -> None:
        """Status ERROR with `description` (the last one set is kept, as the SDK does)."""
        if self._sink is not None:
            self.error = description

    def end(self, end_ns: int | None = None) -> None:
        sink = self._sink
        if sink is None or self.end_ns:
            return  # not recorded, or ended already
        self.end_ns = time.time_ns() if end_ns is None else end_ns
        sink(self)


current_span: ContextVar[Span | None] = ContextVar("sfworker_span", default=None)
