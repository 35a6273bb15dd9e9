"""The suite's one metrics reader (tests/support/metrics.py) fails on what is not exported."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from tests.support.metrics import MissingMetric, metric


@pytest.fixture
def registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("demo_jobs", "jobs", ["status"], registry=registry).labels(status="ok").inc(3)
    Counter("demo_refusals", "refusals", ["reason"], registry=registry)  # no series yet
    Gauge("demo_fallback", "fallback", registry=registry).set(1)
    return registry


def test_values_are_read_by_name_and_labels(registry: CollectorRegistry) -> None:
    text = generate_latest(registry).decode()
    for source in (registry, text):
        assert metric(source, "demo_jobs_total", status="ok") == 3
        assert metric(source, "demo_jobs_total", status="failed") == 0  # not observed yet
        assert metric(source, "demo_refusals_total", reason="x") == 0
        assert metric(source, "demo_fallback") == 1


def test_histogram_series() -> None:
    registry = CollectorRegistry()
    wait = Histogram("demo_wait_seconds", "", ["account"], buckets=(0.005, 1), registry=registry)
    wait.labels(account="main").observe(0.002)
    assert metric(registry, "demo_wait_seconds_count", account="main") == 1
    assert metric(registry, "demo_wait_seconds_bucket", account="main", le="0.005") == 1
    assert metric(registry, "demo_wait_seconds_bucket", account="main", le="1.0") == 1


@pytest.mark.parametrize(
    ("name", "labels", "says"),
    [
        ("demo_renamed_total", {}, "no metric family exports 'demo_renamed_total'"),
        ("demo_jobs", {"status": "ok"}, "no metric family exports 'demo_jobs'"),
        ("demo_jobs_total", {}, "has labels"),  # the labels were forgotten
        ("demo_jobs_total", {"state": "ok"}, "has labels"),  # the wrong label name
        ("demo_refusals_total", {}, "has labels"),
        ("demo_fallback", {"account": "main"}, "has labels"),
    ],
)
def test_what_is_not_exported_fails(
    registry: CollectorRegistry, name: str, labels: dict[str, str], says: str
) -> None:
    with pytest.raises(MissingMetric, match=says):
        metric(registry, name, **labels)
