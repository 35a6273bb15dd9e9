"""Issue 16.2: the in-process result store is bounded in bytes, not only in entries, and drops
expired results instead of keeping them until they are asked for."""

from __future__ import annotations

from worker.stores.memory_results import MemoryResultStore


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_results_are_bounded_in_bytes_oldest_out_first() -> None:
    store = MemoryResultStore(1000, 60, Clock(), max_bytes=10_000)
    for i in range(10):
        await store.put(f"job-{i}", bytes(3000))
    assert store.result_bytes <= 10_000
    assert len(store) == 3
    assert await store.get("job-0") is None
    assert await store.get("job-9") == bytes(3000)
    await store.put("huge", bytes(20_000))  # larger than the whole budget: not kept at all
    assert await store.get("huge") is None
    assert await store.get("job-9") == bytes(3000)


async def test_expired_results_are_dropped_without_being_asked_for() -> None:
    clock = Clock()
    store = MemoryResultStore(1000, 60, clock, max_bytes=1_000_000)
    for i in range(50):
        await store.put(f"old-{i}", bytes(1000))
    clock.now = 61.0
    await store.put("new", b"{}")
    assert len(store) == 1
    assert store.result_bytes == 2


async def test_a_result_put_again_counts_once() -> None:
    store = MemoryResultStore(1000, 60, Clock(), max_bytes=1_000_000)
    await store.put("a", bytes(100))
    await store.put("a", bytes(300))
    assert (len(store), store.result_bytes) == (1, 300)
