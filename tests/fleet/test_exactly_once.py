"""Issue 7, acceptance 4 and 5: a worker killed while inserts are in flight makes no insert run
twice (fleet result store and insert markers in Redis), and the idempotency-field mode keeps one
record per job even without Redis."""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from sfsim.testing import SimulatorClient

from tests.conftest import WorkerProcess, make_settings, wait_until, write_accounts
from tests.job_client import JobClient
from tests.runtime.test_faults import queue_depth
from worker.app import Worker
from worker.settings import Settings


def insert(job_id: str, timeout_ms: int = 60000) -> dict[str, Any]:
    return {
        "v": 1,
        "job_id": job_id,
        "operation": "insert",
        "object": "Case",
        "fields": {"Subject": job_id},
        "timeout_ms": timeout_ms,
    }


@pytest.mark.slow
async def test_killed_worker_makes_no_insert_run_twice(
    fleet_settings: Settings,
    spawn_worker: Any,
    jobs: JobClient,
    simulator: SimulatorClient,
    amqp: aio_pika.abc.AbstractRobustConnection,
) -> None:
    await simulator.set_latency(300)
    first: WorkerProcess = spawn_worker(fleet_settings, prefetch=100)
    second: WorkerProcess = spawn_worker(fleet_settings, prefetch=100)
    for worker in (first, second):
        await worker.wait_ready()
    batch = [insert(f"once-{i}") for i in range(200)]
    for body in batch:
        await jobs.publish(body)

    async def busy() -> bool:
        # Coalesced: each request in flight carries up to 25 inserts (4 requests: ~100 inserts).
        return int((await simulator.counters())["in_flight"]) >= 4

    await wait_until(busy, 30, "inserts in flight")
    first.proc.kill()
    assert await first.wait_exit(10) == -signal.SIGKILL
    third: WorkerProcess = spawn_worker(fleet_settings, prefetch=100)
    await third.wait_ready()

    wanted = {b["job_id"] for b in batch}

    async def all_answered() -> bool:
        return wanted <= {r["job_id"] for r in jobs.results}

    await wait_until(all_answered, 90, "every insert answered")
    records = [r for r in await simulator.records("Case") if r["Subject"].startswith("once-")]
    per_subject = Counter(r["Subject"] for r in records)
    assert max(per_subject.values()) == 1  # no record inserted twice
    counters = await simulator.counters()
    posts = counters["requests"].get("sobject_create", 0)
    posts += counters["subrequests"].get("sobject_create", 0)  # inside Composite requests
    assert posts == len(records)  # no insert POSTed twice (no fault made any fail)
    ids = {r["Subject"]: r["Id"] for r in records}
    unknown = 0
    for result in jobs.results:
        if result["status"] == "ok":
            assert result["id"] == ids[result["job_id"]]
        else:
            # The killed worker had claimed it: whether its request left before the kill (the
            # claim is written just before the send, so a kill can fall between the two) cannot
            # be known, and the honest answer is OUTCOME_UNKNOWN, never a second POST.
            assert result["error"]["code"] == "OUTCOME_UNKNOWN", result
            unknown += 1
    # An answered job answered twice carries the same result both times.
    by_job: dict[str, set[str]] = {}
    for result in jobs.results:
        by_job.setdefault(result["job_id"], set()).add(result.get("id") or result["status"])
    assert all(len(v) == 1 for v in by_job.values())
    print(f"\n200 inserts, 1 worker killed: {len(records)} records, {unknown} OUTCOME_UNKNOWN")
    assert await queue_depth(amqp, fleet_settings.request_queue) == (0, 2)
    assert (await queue_depth(amqp, fleet_settings.dead_letter_queue))[0] == 0


async def test_idempotency_field_keeps_one_record_per_job_without_redis(
    amqp_url: str,
    names: dict[str, str],
    tmp_path: Path,
    settings: Settings,
    jobs: JobClient,
    simulator: SimulatorClient,
) -> None:
    await simulator.add_schema(
        "Case",
        None,
        {"Sfworker_Job_Id__c": "string"},
        external_ids=["Sfworker_Job_Id__c"],
        unique=["Sfworker_Job_Id__c"],
    )
    path = write_accounts(
        tmp_path / "idem.toml",
        simulator.base_url,
        extra='idempotency_fields = { Case = "Sfworker_Job_Id__c" }\n',
    )
    # No Redis, and no result cache: the second delivery really runs again.
    alone = make_settings(amqp_url, names, path, result_cache_size=0)
    assert alone.redis_url is None
    worker = Worker(alone)
    await worker.start()
    try:
        first = await jobs.call(insert("idem-1"), wait=30)
        second = await jobs.call(insert("idem-1"), wait=30)
    finally:
        await worker.stop()
    assert (first["status"], second["status"]) == ("ok", "ok")
    records = [r for r in await simulator.records("Case") if r["Subject"] == "idem-1"]
    assert len(records) == 1
    assert first["id"] == second["id"] == records[0]["Id"]
    assert records[0]["Sfworker_Job_Id__c"] == "idem-1"
    counters = await simulator.counters()
    assert counters["requests"].get("sobject_create", 0) == 0  # upserts, never a plain POST
    assert counters["requests"]["sobject_upsert"] == 2
