"""Issue 16.2: one big answer cannot take a worker down. A result over SFWORKER_MAX_RESULT_BYTES
is answered RESULT_TOO_LARGE (with the record count and the hint), a Salesforce body over
SFWORKER_MAX_RESPONSE_BYTES is not read further, and neither stays in the worker's memory."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sfsim.testing import SimulatorClient

from tests.support.job_client import JobClient
from tests.support.workers import WorkerProcess
from worker.app import Worker
from worker.settings import Settings

MIB = 1024 * 1024
BIG_SOQL = "SELECT Id, Description FROM Case"
SMALL_SOQL = "SELECT Id FROM Case LIMIT 1"


RECORDS = 70  # of 30,000 characters each (Description holds at most 32,000): about 2 MiB


async def seed_big_contacts(simulator: SimulatorClient) -> None:
    for first in range(0, RECORDS, 20):
        await simulator.seed(
            "Case",
            [
                {"Subject": f"Big {i}", "Description": "x" * 30_000}
                for i in range(first, min(first + 20, RECORDS))
            ],
        )


def search(job_id: str, soql: str = BIG_SOQL) -> dict[str, Any]:
    return {"v": 1, "job_id": job_id, "operation": "search", "soql": soql, "max_records": 2000}


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_a_result_over_the_cap_is_result_too_large_with_count_and_hint(
    settings: Settings, jobs: JobClient, simulator: SimulatorClient
) -> None:
    worker = Worker(settings.model_copy(update={"max_result_bytes": MIB}))
    await worker.start()
    try:
        await seed_big_contacts(simulator)
        result = await jobs.call(search("big-1"))
        assert result["status"] == "failed"
        assert result["records"] is None
        assert result["count"] == RECORDS
        assert result["error"]["code"] == "RESULT_TOO_LARGE"
        assert f"for {RECORDS} records" in result["error"]["message"]
        assert "max_records" in result["error"]["message"]
        assert "fewer fields" in result["error"]["message"]
        # Answered, not crash-looped: the same job again gets the same answer from the store.
        assert await jobs.call(search("big-1")) == result
    finally:
        await worker.stop()


async def test_a_response_over_the_cap_is_not_read(
    settings: Settings, jobs: JobClient, simulator: SimulatorClient
) -> None:
    worker = Worker(settings.model_copy(update={"max_response_bytes": 256 * 1024}))
    await worker.start()
    try:
        await seed_big_contacts(simulator)
        result = await jobs.call(search("huge-1"))
        assert (result["status"], result["error"]["code"]) == ("failed", "RESULT_TOO_LARGE")
        assert "SFWORKER_MAX_RESPONSE_BYTES" in result["error"]["message"]
        small = await jobs.call(search("small-1", SMALL_SOQL))
        assert (small["status"], small["count"]) == ("ok", 1)
    finally:
        await worker.stop()


@pytest.mark.slow
async def test_200_results_of_2_mib_over_a_1_mib_cap_leave_the_worker_serving_and_small(
    settings: Settings, spawn_worker: Any, jobs: JobClient, simulator: SimulatorClient
) -> None:
    worker: WorkerProcess = spawn_worker(settings, max_result_bytes=MIB)
    await worker.wait_ready()
    await seed_big_contacts(simulator)

    async def batch(tag: str, n: int) -> list[dict[str, Any]]:
        ids = [await jobs.publish(search(f"{tag}-{i}")) for i in range(n)]
        small = [await jobs.publish(search(f"{tag}-small-{i}", SMALL_SOQL)) for i in range(n // 10)]
        answers = await asyncio.gather(*(jobs.result(c, 120) for c in ids + small))
        assert {a["status"] for a in answers[n:]} == {"ok"}  # other jobs still served
        return answers[:n]

    # A first round of the same size brings the worker to its working size.
    await batch("warm", 40)
    before = rss_bytes(worker.proc.pid)
    answers = await batch("run", 200)
    after = rss_bytes(worker.proc.pid)
    assert {a["error"]["code"] for a in answers} == {"RESULT_TOO_LARGE"}
    assert {a["count"] for a in answers} == {RECORDS}
    assert worker.proc.poll() is None
    growth = after - before
    print(f"\nRSS {before / MIB:.0f} MiB -> {after / MIB:.0f} MiB over 200 jobs")
    assert growth < 50 * MIB
