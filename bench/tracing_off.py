"""What tracing costs a job when it is off: every hook one job meets, timed in a loop.

    .venv/bin/python -m bench.tracing_off

The pipeline's tracing rows (bench/pipeline --sections tracing) compare jobs/s; this gives the
cost of the off hooks directly, in ns of CPU per job (process time, best of 5: the figure holds
on a busy machine), to set against the CPU a job takes."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

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


async def main(n: int = 200_000) -> None:
    assert not tracing.active.enabled
    timings = {}
    for name, body in (("hooks", one_job), ("bare", bare)):
        best = float("inf")
        for _ in range(5):
            start = time.process_time()
            for _ in range(n):
                await body()
            best = min(best, time.process_time() - start)
        timings[name] = best / n * 1e9
    hooks, loop = timings["hooks"] - timings["bare"], timings["bare"]
    print(f"off hooks per job: {hooks:.0f} ns (the loop itself: {loop:.0f} ns)")


if __name__ == "__main__":
    asyncio.run(main())
