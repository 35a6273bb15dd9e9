"""Acceptance 8.5: the Kubernetes manifests validated offline against the Kubernetes API schemas
(kubernetes-validate, strict: unknown fields fail) for the oldest supported and the newest known
version; custom resources (KEDA, prometheus-operator) checked for their name, spec and the
objects they point at."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.support.image_spec import image_spec

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
CUSTOM_GROUPS = ("keda.sh/", "monitoring.coreos.com/", "kustomize.config.k8s.io/")
VERSIONS = ("1.27.0", kubernetes_validate.latest_version())


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def all_documents() -> list[tuple[str, dict[str, Any]]]:
    found = [
        (path.name, doc) for path in sorted(KUBERNETES.glob("*.yaml")) for doc in documents(path)
    ]
    found += [("alerts.yaml", d) for d in documents(ROOT / "deploy/prometheus/alerts.yaml")]
    return found


def by_kind(kind: str) -> dict[str, Any]:
    [doc] = [d for _, d in all_documents() if d["kind"] == kind]
    return doc


@pytest.mark.parametrize("version", VERSIONS)
def test_built_in_resources_validate_against_the_kubernetes_schemas(version: str) -> None:
    checked = []
    for name, doc in all_documents():
        if doc["apiVersion"].startswith(CUSTOM_GROUPS):
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {doc['kind']} {doc['metadata']['name']}: {exc.message}")
        checked.append(doc["kind"])
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "Secret"} <= set(checked)


def test_the_validation_refuses_an_unknown_field() -> None:
    deployment = by_kind("Deployment")
    deployment["spec"]["replica"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[0], strict=True)


def test_custom_resources_have_a_name_a_spec_and_point_at_real_objects() -> None:
    custom = [d for _, d in all_documents() if d["apiVersion"].startswith(CUSTOM_GROUPS[:2])]
    assert {d["kind"] for d in custom} == {
        "ScaledObject",
        "TriggerAuthentication",
        "ServiceMonitor",
        "PrometheusRule",
    }
    for doc in custom:
        assert doc["metadata"]["name"], doc["kind"]
        assert isinstance(doc["spec"], dict), doc["kind"]
        assert doc["spec"], doc["kind"]

    deployment, service = by_kind("Deployment"), by_kind("Service")
    config = by_kind("ConfigMap")["data"]
    scaled = by_kind("ScaledObject")["spec"]
    assert scaled["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    [trigger] = scaled["triggers"]
    assert trigger["type"] == "rabbitmq"
    # The request queue, the accounts' lanes (fair share) and the tenants' queues (strict
    # mode), summed; never the dead letters.
    assert (trigger["metadata"]["useRegex"], trigger["metadata"]["operation"]) == ("true", "sum")
    counted = re.compile(trigger["metadata"]["queueName"])
    queue = config["SFWORKER_REQUEST_QUEUE"]
    assert counted.search(queue)
    assert counted.search(f"{queue}.lane.acme-prod")
    assert counted.search(f"{queue}.tenant.acme")
    assert not counted.search(f"{queue}.dead")
    assert not counted.search(f"{queue}.lane.")
    assert not counted.search(f"{queue}.tenant.")
    assert (
        trigger["authenticationRef"]["name"] == by_kind("TriggerAuthentication")["metadata"]["name"]
    )
    assert 1 <= scaled["minReplicaCount"] <= scaled["maxReplicaCount"]

    monitor = by_kind("ServiceMonitor")["spec"]
    labels = service["metadata"]["labels"]
    assert monitor["selector"]["matchLabels"].items() <= labels.items()
    port_names = {p["name"] for p in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["endpoints"]} <= port_names

    groups = by_kind("PrometheusRule")["spec"]["groups"]
    assert all(group["name"] and group["rules"] for group in groups)


def test_kustomization_lists_existing_files_and_never_the_example_secret() -> None:
    [kustomization] = documents(KUBERNETES / "kustomization.yaml")
    resources = kustomization["resources"]
    assert all((KUBERNETES / r).is_file() for r in resources), resources
    assert "secret.example.yaml" not in resources


def test_the_deployment_runs_the_image_as_scripts_image_test_checked_it() -> None:
    """The image reference, user, group, read-only root filesystem and /tmp size of the
    Deployment are the values of deploy/image.toml that tests/image/test_image.py checks on the
    built image (scripts/image-test)."""
    spec = image_spec()
    deployment = by_kind("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["image"] == spec.reference
    [kustomization] = documents(KUBERNETES / "kustomization.yaml")
    [image] = [i for i in kustomization["images"] if i["name"] == spec.name]
    assert f"{image.get('newName', spec.name)}:{image['newTag']}" == spec.reference

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (
        spec.user,
        spec.group,
    )
    assert pod["securityContext"]["fsGroup"] == spec.group
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is spec.read_only_root_filesystem
    assert "runAsUser" not in security  # the pod's value, not another one per container

    [tmp] = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    [volume] = [v for v in pod["volumes"] if v["name"] == tmp["name"]]
    assert volume["emptyDir"] == {"medium": "Memory", "sizeLimit": spec.tmp_size}
