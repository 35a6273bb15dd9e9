"""Two deliveries of the same insert running at once on two workers (a publisher that re-sent a
job whose confirm it missed; a redelivery after a channel died while the first delivery still
runs): the insert's request leaves once. The marker is a claim: the delivery that did not take
it sends nothing and answers with the other one's result."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.fleet.helpers import Fleet, insert
from tests.support.metrics import metric
from tests.support.waiting import wait_until
from tests.support.workers import WorkerProcess

pytestmark = pytest.mark.slow


async def test_the_same_insert_on_two_workers_at_once_is_sent_once(
    fleet: Fleet,
) -> None:
    # Fresh workers wait for the fleet's first token, held until the test lets it go: both
    # deliveries of each job are past their marker check, on different workers, when it comes.
    await fleet.simulator.hold("token", route="token")
    # The token timeout (which also bounds a wait for another worker's request) outlasts the
    # hold, and so do the jobs' budgets.
    workers: list[WorkerProcess] = [
        fleet.spawn(fleet.settings, prefetch=50, token_timeout_seconds=120) for _ in range(2)
    ]
    for worker in workers:
        await worker.wait_ready()
    batch = [insert(f"twice-{i}", timeout_ms=60_000) for i in range(10)]
    for body in batch:
        await fleet.jobs.publish(body)
        await fleet.jobs.publish(body)

    async def in_flight(worker: WorkerProcess) -> float:
        return metric(await worker.metrics(), "sfworker_jobs_in_flight")

    async def every_job_on_both() -> bool:
        # A worker counts a job once however many of its deliveries it has: 10 on each worker
        # means each of the 10 jobs runs on both at once.
        return [await in_flight(w) for w in workers] == [len(batch)] * 2

    await fleet.simulator.wait_held("token")
    await wait_until(every_job_on_both, 30, "every insert in flight on both workers")
    await fleet.simulator.release("token")

    async def all_answered() -> bool:
        return len(fleet.jobs.results) >= 2 * len(batch)

    await wait_until(all_answered, 60, "both deliveries of every insert answered")
    for worker in workers:  # no delivery was answered from the store after the fact
        assert metric(await worker.metrics(), "sfworker_results_replayed_total") == 0
    records = [
        r for r in await fleet.simulator.records("Case") if r["Subject"].startswith("twice-")
    ]
    assert sorted(Counter(r["Subject"] for r in records).values()) == [1] * len(batch)
    counters = await fleet.simulator.counters()
    posts = counters["requests"].get("sobject_create", 0)
    posts += counters["subrequests"].get("sobject_create", 0)  # inside Composite requests
    assert posts == len(batch)
    ids = {r["Subject"]: r["Id"] for r in records}
    for result in fleet.jobs.results:  # both deliveries answer with the one record's id
        assert result["status"] == "ok", result
        assert result["id"] == ids[result["job_id"]]
