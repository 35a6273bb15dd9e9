"""What tracing costs one job's hooks: off, on for a job not sampled, on for a sampled one.

    .venv/bin/python -m bench.tracing_off

The pipeline's tracing rows (bench/pipeline --sections tracing) compare jobs/s; this gives the
cost of the hooks directly, in CPU per job (process time, best of 5: the figure holds on a busy
machine), to set against the CPU a job takes. On, the spans are made and encoded for export
(observability/otlp.py) but never posted, and the HTTP spans of the aiohttp hooks are not
counted."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from worker.contract import BlockResult, Operation, Status, parse_job
from worker.observability import tracing

JOB = parse_job({"v": 1, "job_id": "j", "operation": "search", "soql": "SELECT Id FROM Account"})
RESULT = BlockResult(
    job_id="j", operation=Operation.SEARCH, account="a", status=Status.OK, attempts=1
)
HEADERS = {"x-delivery-count": 0}


@contextlib.asynccontextmanager
async def _slot() -> AsyncIterator[None]:
    yield


async def one_job() -> None:
    """The hooks of one job, in the order the worker calls them, with tracing off."""
    off = tracing.active
    with off.consume(HEADERS, "salesforce.blocks", "j", "salesforce.blocks"):
        off.job_started(JOB)
        off.queue_wait(0.001)
        off.account("a", "t")
        with off.coalescing():
            pass
        async with off.waiting(_slot(), "slot wait"):
            pass
        tracing.traced_job()  # which session the call takes
        tracing.exemplar()  # the Salesforce call's histogram
        tracing.log_ids()  # its log line
        with off.publish("reply_to", "q"):
            pass
        tracing.exemplar()  # the job's histogram
        off.job_done(RESULT)
        tracing.log_ids()


async def bare() -> None:
    """The same without the hooks: what the loop itself costs (the slot is the worker's own)."""
    async with _slot():
        pass


async def _per_job(body: Callable[[], Awaitable[None]], n: int) -> float:
    best = float("inf")
    for _ in range(5):
        start = time.process_time()
        for _ in range(n):
            await body()
        best = min(best, time.process_time() - start)
    return best / n * 1e9


async def main(n: int = 100_000) -> None:
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON

    from worker.observability.export import ExportConfig, SpanExporter
    from worker.observability.otel import OtelTracer
    from worker.observability.otlp import envelope

    def tracer(sampler: Any) -> OtelTracer:
        """Spans encoded as they end (counted), never posted: a queue that never fills."""
        config = ExportConfig(schedule_delay=3600, max_queue=10**8, batch=10**8)
        return OtelTracer(sampler, SpanExporter(config, *envelope({}, "sfworker", "bench")))

    loop = await _per_job(bare, n)
    print(f"the loop itself: {loop:.0f} ns per job")
    rows = (
        ("off", tracing.OFF, n),
        ("on, job not sampled", tracer(ALWAYS_OFF), n),
        ("on, job sampled (spans encoded)", tracer(ALWAYS_ON), n // 10),
    )
    for name, tracer, count in rows:
        with tracing.installed(tracer):
            cost = await _per_job(one_job, count) - loop
        print(f"{name}: {cost / 1000:.2f} µs of CPU per job")


if __name__ == "__main__":
    asyncio.run(main())
