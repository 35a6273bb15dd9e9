"""Acceptance 8.5: the alert rules under test. `promtool check rules` on the rule file, promtool
unit tests in which every alert fires on series that should fire it and stays silent on series
that should not, and every runbook_url anchor names a heading of docs/runbook.md.

promtool comes from Debian's `prometheus` package (.ci/run installs it); without it these tests
fail in CI and are skipped elsewhere."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
PROMTESTS = Path(__file__).with_name("alerts.promtest.yaml")
RUNBOOK = ROOT / "docs" / "runbook.md"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing: .ci/run installs Debian's prometheus package")
        pytest.skip("promtool not installed (apt-get install prometheus)")
    return path


def rules() -> list[dict[str, Any]]:
    spec = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["spec"]
    return [rule for group in spec["groups"] for rule in group["rules"]]


def write_rules(path: Path, *, annotations: bool) -> Path:
    spec = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["spec"]
    if not annotations:
        for group in spec["groups"]:
            for rule in group["rules"]:
                rule.pop("annotations", None)
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def test_promtool_checks_the_rule_file(tmp_path: Path) -> None:
    rule_file = write_rules(tmp_path / "sfworker.rules.yml", annotations=True)
    done = subprocess.run(
        [promtool(), "check", "rules", str(rule_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout


def test_every_alert_fires_when_it_should_and_only_then(tmp_path: Path) -> None:
    write_rules(tmp_path / "rules.yml", annotations=False)
    shutil.copy(PROMTESTS, tmp_path / PROMTESTS.name)
    done = subprocess.run(
        [promtool(), "test", "rules", PROMTESTS.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_the_unit_tests_cover_every_alert_both_ways() -> None:
    tests = yaml.safe_load(PROMTESTS.read_text(encoding="utf-8"))["tests"]
    fires: set[str] = set()
    silent: set[str] = set()
    for case in tests:
        for check in case["alert_rule_test"]:
            (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {rule["alert"] for rule in rules()}
    assert names - fires == set(), "alerts without a case where they fire"
    assert names - silent == set(), "alerts without a case where they stay silent"
    assert (fires | silent) - names == set(), "cases for alerts that do not exist"


def github_anchor(heading: str) -> str:
    slug = heading.strip().lower()
    slug = re.sub(r"[^\w\- ]", "", slug)
    return slug.replace(" ", "-")


def test_every_runbook_url_names_a_heading_of_the_runbook() -> None:
    headings = {
        github_anchor(line.lstrip("#"))
        for line in RUNBOOK.read_text(encoding="utf-8").splitlines()
        if line.startswith("#")
    }
    for rule in rules():
        url = rule["annotations"]["runbook_url"]
        path, _, anchor = url.partition("#")
        assert path == "docs/runbook.md", rule["alert"]
        assert anchor in headings, f"{rule['alert']}: no heading for #{anchor}"
