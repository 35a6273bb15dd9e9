"""The pieces OtelTracer (otel.py) builds its hooks from: the span current for a block, the job's
CONSUMER span, a wait that becomes a span when it was one, and a call's wait for company."""

from __future__ import annotations

import time
from contextlib import AbstractAsyncContextManager
from contextvars import Token
from types import TracebackType
from typing import Protocol, TypeVar

from worker.observability.spans import INTERNAL, AttributeValue, Span, SpanRef, current_span
from worker.observability.tracing import TRACEPARENT, TRACESTATE, JobTrace, _job

T = TypeVar("T")

SHORTEST_WAIT_NS = 1_000_000  # a wait shorter than 1 ms is no wait: no span


class Child(Protocol):
    """OtelTracer.child: a span under the current one."""

    def __call__(
        self,
        name: str,
        kind: int = INTERNAL,
        attributes: dict[str, AttributeValue] | None = None,
        start_ns: int | None = None,
    ) -> Span: ...


def job_trace(span: Span) -> JobTrace:
    ref = span.ref
    trace_id, span_id = f"{ref.trace_id:032x}", f"{ref.span_id:016x}"
    flags = "01" if ref.sampled else "00"
    return JobTrace(
        trace_id, span_id, ref.sampled, f"00-{trace_id}-{span_id}-{flags}", ref.trace_state
    )


def headers_of(ref: SpanRef) -> dict[str, str]:
    """The W3C trace context of `ref`, as the SDK's propagator injects it."""
    flags = "01" if ref.sampled else "00"
    headers = {TRACEPARENT: f"00-{ref.trace_id:032x}-{ref.span_id:016x}-{flags}"}
    if ref.trace_state:
        headers[TRACESTATE] = ref.trace_state
    return headers


def fail(span: Span, exc: BaseException) -> None:
    """An exception's type, never its message (it may quote Salesforce or a caller)."""
    name = type(exc).__name__
    span.set_attribute("error.type", name)
    span.fail(name)


class Current:
    """`span` current for the block, ended after it; an exception marks it failed."""

    __slots__ = ("_span", "_token")

    def __init__(self, span: Span) -> None:
        self._span = span
        self._token: Token[Span | None] | None = None

    def __enter__(self) -> Span:
        self._token = current_span.set(self._span)
        return self._span

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            fail(self._span, exc)
        if self._token is not None:
            current_span.reset(self._token)
        self._span.end()


class Consume:
    """The job's CONSUMER span, current while the delivery is handled; its ids are the job's
    (logs, exemplars, the result's trace context)."""

    __slots__ = ("_span", "_tokens")

    def __init__(self, span: Span) -> None:
        self._span = span
        self._tokens: tuple[Token[Span | None], Token[JobTrace | None]] | None = None

    def __enter__(self) -> Span:
        self._tokens = (current_span.set(self._span), _job.set(job_trace(self._span)))
        return self._span

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            fail(self._span, exc)
        if self._tokens is not None:
            _job.reset(self._tokens[1])
            current_span.reset(self._tokens[0])
        self._span.end()


class Waited(AbstractAsyncContextManager[T]):
    """An async context manager whose entry (the wait for it) is a span, when it was a wait:
    at least SHORTEST_WAIT_NS, or failed."""

    def __init__(self, child: Child, cm: AbstractAsyncContextManager[T], name: str):
        self._child = child
        self._cm = cm
        self._name = name

    async def __aenter__(self) -> T:
        started = time.time_ns()
        try:
            value = await self._cm.__aenter__()
        except BaseException as exc:
            span = self._child(self._name, start_ns=started)
            fail(span, exc)
            span.end()
            raise
        ended = time.time_ns()
        if ended - started >= SHORTEST_WAIT_NS:
            self._child(self._name, start_ns=started).end(ended)
        return value

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        return await self._cm.__aexit__(kind, exc, tb)


class Waiting:
    """A call waiting for company (coalescing): the handle a Composite request reports to. Its
    span is recorded when the call waited at least SHORTEST_WAIT_NS or travelled in a
    Composite request (a quiet account's call goes at once)."""

    __slots__ = ("_carried", "_child", "_started", "job_ref", "job_span")

    def __init__(self, child: Child, job_span: Span) -> None:
        self._child = child
        self._started = time.time_ns()
        self._carried: dict[str, AttributeValue] | None = None
        self.job_span = job_span
        self.job_ref = job_span.ref

    def carried_by(self, composite: SpanRef) -> None:
        ids: dict[str, AttributeValue] = {
            "sfworker.composite.trace_id": f"{composite.trace_id:032x}",
            "sfworker.composite.span_id": f"{composite.span_id:016x}",
        }
        self._carried = ids
        self.job_span.set_attributes(ids)
        self.job_span.add_link(composite, {"sfworker.link": "carried by"})

    def end(self, exc: BaseException | None) -> None:
        ended = time.time_ns()
        if exc is None and self._carried is None and ended - self._started < SHORTEST_WAIT_NS:
            return
        span = self._child("coalesce wait", start_ns=self._started)
        if self._carried is not None:
            span.set_attributes(self._carried)
        if exc is not None:
            fail(span, exc)
        span.end(ended)


def sampled() -> bool:
    """Is the job this task works for recorded? (Not: its spans would be dropped anyway, so
    none is made; its trace context still travels.)"""
    job = _job.get()
    return job is not None and job.sampled
