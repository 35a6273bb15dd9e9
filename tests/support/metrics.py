"""One reader of Prometheus metrics for the whole suite.

It reads what a scraper reads: the text exposition (a worker process's /metrics page, or an
in-process registry rendered the same way), parsed with prometheus_client's own parser. A name
that no exported family owns fails the test (a renamed or never-registered metric must not read
as 0); a series of an exported family that has not been observed yet reads 0, as Prometheus would
show it; labels are matched exactly, and asking with the wrong label names fails.
"""

from __future__ import annotations

from typing import Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["MissingMetric", "exposition", "metric"]

# The sample names a family of each type exposes, after its own name.
_SUFFIXES: dict[str, tuple[str, ...]] = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}


class MissingMetric(AssertionError):
    """No exported family owns the sample name, or the labels asked for are not its labels."""


class _HasRegistry(Protocol):
    @property
    def registry(self) -> CollectorRegistry: ...


Source = str | bytes | CollectorRegistry | _HasRegistry


def exposition(source: Source) -> str:
    """The text a scraper would read from `source` (text as is; a registry rendered)."""
    if isinstance(source, str):
        return source
    if isinstance(source, bytes):
        return source.decode()
    registry = source if isinstance(source, CollectorRegistry) else source.registry
    return generate_latest(registry).decode()


def _family(families: list[Metric], name: str) -> Metric:
    for family in families:
        if any(name == family.name + s for s in _SUFFIXES.get(family.type, ("",))):
            return family
    known = sorted(f.name for f in families if not f.name.endswith("_created"))
    raise MissingMetric(f"no metric family exports {name!r}; exported: {known}")


def metric(source: Source, name: str, **labels: str) -> float:
    """The value of sample `name` with exactly `labels` in `source`.

    `source` is exposition text (a /metrics page), a CollectorRegistry, or anything with a
    `.registry` (the worker's Metrics). Raises MissingMetric when no family exports `name`, or
    when `labels` do not name the family's labels; 0.0 for a series not observed yet.
    """
    families = list(text_string_to_metric_families(exposition(source)))
    family = _family(families, name)
    samples = [s for s in family.samples if s.name == name]
    for sample in samples:
        if sample.labels == labels:
            return float(sample.value)
    label_names = {frozenset(s.labels) for s in samples}
    if label_names and frozenset(labels) not in label_names:
        raise MissingMetric(
            f"{name} has labels {sorted(sorted(n) for n in label_names)}, asked with "
            f"{sorted(labels)}"
        )
    if not samples and not labels:
        raise MissingMetric(f"{name} has labels, none given (its family has no series yet)")
    return 0.0
