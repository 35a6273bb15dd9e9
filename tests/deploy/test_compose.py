"""deploy/compose.yaml cannot be run here (no Docker engine on the project's machines), so it is
checked by reading it: the services the laptop stack promises, every mounted file present, the
workers reachable where Prometheus scrapes them, the rules Prometheus loads equal to the alerts,
the dashboard provisioned, the accounts file valid."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from worker.accounts import load_accounts

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def test_the_stack_has_every_service(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {
        "rabbitmq",
        "redis",
        "simulator",
        "worker-1",
        "worker-2",
        "prometheus",
        "grafana",
    }
    assert "management" in services["rabbitmq"]["image"]
    # The simulator runs from its own image; the workers from the production one, which holds
    # no simulator (scripts/image-test checks that).
    assert services["simulator"]["build"]["dockerfile"] == "simulator/Dockerfile"
    assert services["simulator"]["image"] != services["worker-1"]["image"]
    for name in ("simulator", "worker-1", "worker-2"):
        build = services[name]["build"]
        assert (DEPLOY / build["context"] / build["dockerfile"]).is_file(), name
    assert services["worker-1"]["build"]["dockerfile"] == "deploy/Dockerfile"
    assert services["worker-1"]["image"] == services["worker-2"]["image"]


def test_every_mounted_file_exists(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            assert (DEPLOY / source).exists(), f"{name}: {source}"


def test_prometheus_scrapes_both_workers_and_loads_the_alert_rules(
    compose: dict[str, Any],
) -> None:
    workers = {n: s for n, s in compose["services"].items() if n.startswith("worker-")}
    ports = {s["environment"]["SFWORKER_HTTP_PORT"] for s in workers.values()}
    assert all(s["network_mode"] == "service:simulator" for s in workers.values())
    config = yaml.safe_load((DEPLOY / "compose/prometheus.yml").read_text())
    [job] = config["scrape_configs"]
    assert job["job_name"] == "sfworker"  # SfworkerDown selects job="sfworker"
    targets = {t for group in job["static_configs"] for t in group["targets"]}
    assert targets == {f"simulator:{port}" for port in ports}
    mounted = {
        v.split(":")[1]: v.split(":")[0] for v in compose["services"]["prometheus"]["volumes"]
    }
    [rule_file] = config["rule_files"]
    rules = yaml.safe_load((DEPLOY / mounted[rule_file]).read_text())
    alerts = yaml.safe_load((DEPLOY / "prometheus/alerts.yaml").read_text())["spec"]
    assert rules == alerts, "regenerate deploy/compose/sfworker.rules.yml from alerts.yaml"


def test_prometheus_config_syntax_with_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed")  # test_alerts.py fails CI without it
    done = subprocess.run(
        [promtool, "check", "config", "--syntax-only", str(DEPLOY / "compose/prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_grafana_provisions_the_dashboard(compose: dict[str, Any]) -> None:
    volumes = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"])
    dashboards = yaml.safe_load((DEPLOY / "compose/grafana/dashboards.yml").read_text())
    [provider] = dashboards["providers"]
    assert volumes["./grafana"] == provider["options"]["path"]
    assert (DEPLOY / "grafana/sfworker-dashboard.json").is_file()
    sources = yaml.safe_load((DEPLOY / "compose/grafana/datasources.yml").read_text())
    assert sources["datasources"][0]["url"] == "http://prometheus:9090"


def test_the_workers_accounts_file_points_at_the_simulator(compose: dict[str, Any]) -> None:
    accounts = load_accounts(DEPLOY / "compose/accounts.toml", allow_insecure_localhost=True)
    [account] = accounts.by_name.values()
    simulator_port = compose["services"]["simulator"]["command"][-1]
    assert account.instance_url == f"http://127.0.0.1:{simulator_port}"
