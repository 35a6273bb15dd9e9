"""The collector's pauses (worker/runtime/heap.py): start-up's objects frozen out of full
collections, every collection timed."""

from __future__ import annotations

import gc

from prometheus_client import CollectorRegistry, Histogram

from worker.runtime import heap


def _observed(registry: CollectorRegistry, generation: str) -> float:
    value = registry.get_sample_value("gc_pause_seconds_count", {"generation": generation})
    return value or 0.0


def test_settle_freezes_what_is_alive_and_thaw_gives_it_back() -> None:
    kept = [[i] for i in range(1000)]  # lists: the collector tracks every one
    try:
        frozen = heap.settle()
        assert frozen >= len(kept)
        assert gc.get_freeze_count() == frozen
        # A full collection no longer walks them: they are in no generation.
        assert gc.is_tracked(kept[0])
        assert not any(o is kept[0] for o in gc.get_objects())
    finally:
        heap.thaw()
    assert gc.get_freeze_count() == 0
    assert any(o is kept[0] for o in gc.get_objects())


def test_every_collection_is_timed_by_generation_until_closed() -> None:
    registry = CollectorRegistry()
    pauses = Histogram("gc_pause_seconds", "", ["generation"], registry=registry)
    watch = heap.PauseWatch(pauses)
    try:
        gc.collect(0)
        gc.collect(2)
        assert _observed(registry, "0") >= 1
        assert _observed(registry, "2") >= 1
    finally:
        watch.close()
    before = _observed(registry, "2")
    gc.collect(2)
    assert _observed(registry, "2") == before
