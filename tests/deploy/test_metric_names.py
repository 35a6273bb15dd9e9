"""Acceptance 8.5: every sfworker_* name used by an alert or a dashboard panel is exported by a
running worker (so a renamed metric cannot silently break an alert), and the metrics that must be
there from the start are."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from sfsim.testing import SimulatorClient

from tests.support.job_client import JobClient
from tests.support.waiting import wait_until
from worker.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
NAME = re.compile(r"\bsfworker_[a-z0-9_]+")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def referenced() -> dict[str, set[str]]:
    """Metric names by where they are used."""
    dashboard = json.loads((ROOT / "deploy/grafana/sfworker-dashboard.json").read_text())
    exprs = [
        target.get("expr", "")
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]
    exprs += [
        v.get("query", {}).get("query", "")
        if isinstance(v.get("query"), dict)
        else str(v.get("query", ""))
        for v in dashboard["templating"]["list"]
    ]
    return {
        "alerts": set(NAME.findall((ROOT / "deploy/prometheus/alerts.yaml").read_text())),
        "dashboard": set(NAME.findall("\n".join(exprs))),
    }


def exported(text: str) -> dict[str, str]:
    """Every name a scrape of `text` makes queryable, with its family's type."""
    names: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(" ", 3)
            names[family] = kind
            if kind == "histogram":
                names.update({family + s: kind for s in HISTOGRAM_SUFFIXES})
            if kind == "counter" and not family.endswith("_total"):
                names[family + "_total"] = kind
        elif line and not line.startswith("#"):
            names.setdefault(re.split(r"[{ ]", line, maxsplit=1)[0], "sample")
    return names


async def test_every_metric_an_alert_or_panel_uses_is_exported(
    settings: Settings, spawn_worker: Any, jobs: JobClient
) -> None:
    worker = spawn_worker(settings)
    await worker.wait_ready()
    before = time.time()
    result = await jobs.call(
        {"v": 1, "job_id": "names-1", "operation": "search", "soql": "SELECT Id FROM Contact"}, 20
    )
    assert result["status"] == "no_data"
    text = await worker.metrics()
    names = exported(text)
    used = referenced()
    assert used["alerts"]
    assert used["dashboard"]
    for where, wanted in used.items():
        missing = sorted(wanted - set(names))
        assert not missing, f"{where} use metrics the worker does not export: {missing}"

    # Present from the start, and set by the job answered above.
    assert 'sfworker_token_waits_total{account="main"}' in text
    [stamp] = [
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("sfworker_last_job_timestamp_seconds ")
    ]
    assert before - 1 <= stamp <= time.time()
    assert "sfworker_token_waits_total" in used["dashboard"]
    assert "sfworker_last_job_timestamp_seconds" in used["alerts"] & used["dashboard"]


def samples(text: str) -> set[str]:
    """The names that have at least one sample in a scrape (a family with labels has none until
    a label set is created)."""
    return {
        re.split(r"[{ ]", line, maxsplit=1)[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


async def test_every_family_an_alert_or_panel_uses_has_series_before_the_first_job(
    settings: Settings, spawn_worker: Any, simulator: SimulatorClient
) -> None:
    """Issue 18, point 3: `rate()` and `absent()` see every family from the first scrape, and a
    fresh worker shows the org's API usage (one /limits read at start) before any job."""
    await simulator.set_daily_limit(50_000, used=1234)
    worker = spawn_worker(settings)
    await worker.wait_ready()

    async def usage_shown() -> bool:
        return 'sfworker_salesforce_api_usage_used{account="main"}' in await worker.metrics()

    await wait_until(usage_shown, 20, "the API usage gauge")
    text = await worker.metrics()
    present = samples(text)
    for where, wanted in referenced().items():
        missing = sorted(wanted - present)
        assert not missing, f"{where} use families with no series at start: {missing}"
    counters = await simulator.counters()
    assert counters["requests"] == {"token": 1, "limits": 1}  # no job ran: one read of /limits
    used = counters["api_usage"]["used"]  # 1235: the read itself is an API call
    assert f'sfworker_salesforce_api_usage_used{{account="main"}} {float(used)}' in text
    assert 'sfworker_salesforce_api_usage_limit{account="main"} 50000.0' in text
    assert 'sfworker_salesforce_app_api_usage_used{account="main"}' in text
    for series in (
        'sfworker_salesforce_request_duration_seconds_count{account="main",operation="search"} 0.0',
        'sfworker_salesforce_retries_total{account="main",operation="search",'
        'reason="connection_lost"} 0.0',
        'sfworker_token_request_duration_seconds_count{account="main"} 1.0',
    ):
        assert series in text
