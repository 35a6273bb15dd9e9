"""Issue 19, point 5: the in-process result cache holds what its results weigh, not the write
buffers they were made in. orjson.dumps hands back bytes whose memory block is its 4 KiB buffer;
kept as they were, 10,000 cached results of a few hundred bytes held 40 MB."""

from __future__ import annotations

import asyncio
import tracemalloc

import orjson

from worker.stores.memory_results import MemoryResultStore

RESULTS = 2_000


def _result(i: int) -> bytes:
    return orjson.dumps(
        {"v": 1, "job_id": f"job-{i}", "status": "no_data", "records": [], "count": 0}
    )


async def _fill(store: MemoryResultStore) -> int:
    sizes = 0
    for i in range(RESULTS):
        body = _result(i)
        sizes += len(body)
        await store.put(f"job-{i}", body)
        del body
    return sizes


def test_cached_results_hold_their_length_not_their_buffer() -> None:
    store = MemoryResultStore(size=RESULTS, ttl=900)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        sizes = asyncio.run(_fill(store))
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(store) == RESULTS
    # Keys, entries and values with their object headers: a few hundred bytes each at most,
    # where the raw orjson buffers alone would be 4 KiB each.
    assert held < sizes + RESULTS * 400, f"{held / RESULTS:.0f} bytes per cached result"
