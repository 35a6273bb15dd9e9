"""Issue 28's targets for the default adaptive policy, as the policy alone gives them: the
worker's own batcher (Coalescer, default settings) on a virtual clock, Poisson arrivals of
lookups, every request 100 ms (bench/coalescing.py `model`; `bench/run coalescing --model`
prints the whole table). No CPU or network noise: what is measured on a machine adds its own."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "coalescing.py"
LATENCY = 0.1


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_coalescing", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_at_5_per_second_no_call_waits(bench: ModuleType) -> None:
    calls, p50, p99 = bench.model(5, LATENCY, n=2000)
    assert calls > 0.99
    assert p50 == p99 == 0.0


def test_at_20_per_second_under_half_a_call_per_job_within_the_p50_budget(
    bench: ModuleType,
) -> None:
    """Pairs linger for a third call: fewer than 0.5 calls per job, with margin, for a p50 wait
    well inside the 15 ms the issue allows."""
    calls, p50, _ = bench.model(20, LATENCY, n=6000)
    assert calls <= 0.48
    assert p50 <= 10.0


def test_at_400_per_second_a_twentieth_of_a_call_per_job_with_room_in_the_p99(
    bench: ModuleType,
) -> None:
    """The oldest call waits at most half a round trip once it has company: p99 50 ms, well
    inside the 60 ms allowed (a count of calls, instead, left p99 at 56 ms)."""
    calls, _, p99 = bench.model(400, LATENCY, n=8000)
    assert calls <= 0.05
    assert p99 <= 52.0
