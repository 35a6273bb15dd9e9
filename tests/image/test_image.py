"""The production image checked from the outside, as Kubernetes runs it.

scripts/image-test builds deploy/Dockerfile and runs this file with SFWORKER_TEST_IMAGE set to
the image it built (and SFWORKER_TEST_BASE_IMAGE to its base). Without SFWORKER_TEST_IMAGE these
tests are skipped; with it set but the image or podman missing they fail under CI=true.
Containers run with podman (runc, scripts/containers.conf), on the host network, against the
real RabbitMQ and the simulator running in this test process."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from sfsim.testing import SimulatorClient

from tests.support import ROOT
from tests.support.image_spec import ImageSpec, image_spec
from tests.support.job_client import JobClient
from tests.support.ports import free_port
from tests.support.settings import settings_env
from tests.support.waiting import wait_until
from worker.settings import Settings

IMAGE = os.environ.get("SFWORKER_TEST_IMAGE", "")
BASE_IMAGE = os.environ.get("SFWORKER_TEST_BASE_IMAGE", "")
BUILD_CA_MOUNT = "/run/sfworker-build-ca.pem"  # where scripts/image-test mounts the CA bundle
SPEC = image_spec()

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not IMAGE, reason="no image built (scripts/image-test sets it)"),
]


def podman(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(ROOT / "scripts/containers.conf"))
    done = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: {done.returncode}\n{done.stderr}")
    return done


@pytest.fixture(scope="module")
def image() -> str:
    """The image under test; missing under CI=true is a failure, not a skip."""
    problem = ""
    if shutil.which("podman") is None:
        problem = "podman is not installed"
    elif podman("image", "exists", IMAGE, check=False).returncode != 0:
        problem = f"image {IMAGE} does not exist"
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"SFWORKER_TEST_IMAGE is set but {problem}")
        pytest.skip(problem)
    return IMAGE


def inspect(image: str) -> dict[str, Any]:
    [found] = json.loads(podman("image", "inspect", image).stdout)
    config: dict[str, Any] = found["Config"]
    return config


def python_in(image: str, code: str, *, user: str | None = None, env: str = "") -> str:
    """Run `code` with the image's python (no network); its stdout."""
    args = ["run", "--rm", "--network", "none", "--entrypoint", "python3"]
    if user is not None:
        args += ["--user", user]
    if env:
        args += ["--env", env]
    done = podman(*args, image, "-c", code, timeout=300)
    return done.stdout


def test_help_answers(image: str) -> None:
    done = podman("run", "--rm", "--network", "none", image, "--help")
    assert done.stdout.startswith("usage: sfworker")
    for command in ("run", "submit", "dlq", "accounts"):
        assert command in done.stdout


def test_the_image_runs_as_the_numeric_user_the_manifests_name(image: str) -> None:
    assert image.removeprefix("localhost/") == SPEC.reference  # deploy/kubernetes runs this
    config = inspect(image)
    assert config["User"] == f"{SPEC.user}:{SPEC.group}"
    assert config["Entrypoint"] == ["sfworker"]
    assert config["Cmd"] == ["run"]


def runtime_closure(extras: set[str]) -> set[str]:
    """The distributions `sfworker[extras]` pulls in, by this venv's metadata."""
    seen: set[str] = set()
    todo: list[tuple[str, set[str]]] = [("sfworker", extras)]
    while todo:
        name, wanted = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for line in importlib.metadata.requires(name) or []:
            requirement = Requirement(line)
            marker = requirement.marker
            if marker is None or any(marker.evaluate({"extra": e}) for e in wanted | {""}):
                todo.append((canonicalize_name(requirement.name), set(requirement.extras)))
    return seen


def dev_only_distributions() -> set[str]:
    """What the dev extra installs that the image's runtime (with every extra but dev and
    bench) does not need."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras: dict[str, list[str]] = project["optional-dependencies"]
    runtime = runtime_closure(set(extras) - {"dev", "bench"})
    return {str(canonicalize_name(Requirement(r).name)) for r in extras["dev"]} - runtime


_INSIDE = """
import importlib, importlib.metadata as md, json, os, shutil
try:
    importlib.import_module("sfsim")
    sfsim = "imported"
except ModuleNotFoundError as exc:
    sfsim = type(exc).__name__
print(json.dumps({
    "sfsim": sfsim,
    "dists": sorted(d.metadata["Name"].lower().replace("_", "-") for d in md.distributions()),
    "tools": {t: shutil.which(t) for t in ("pytest", "mypy", "ruff", "pip", "sfsim", "gcc")},
    "source_tree": [p for p in ("/src", "/app/worker", "/app/tests") if os.path.exists(p)],
}))
"""


def test_no_simulator_no_dev_tools_no_source_inside(image: str) -> None:
    inside = json.loads(python_in(image, _INSIDE))
    assert inside["sfsim"] == "ModuleNotFoundError"  # `import sfsim` fails in the image
    assert "sfworker" in inside["dists"]
    dev_only = dev_only_distributions()
    assert {"pytest", "mypy", "ruff", "hypothesis"} <= dev_only
    assert dev_only & set(inside["dists"]) == set()
    assert "sfsim" not in inside["dists"]
    assert inside["tools"] == dict.fromkeys(inside["tools"])
    assert inside["source_tree"] == []


def _certificates(pem: str) -> set[str]:
    """The certificates of a PEM bundle, each as its base64 body on one line."""
    blocks = re.findall(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", pem, re.S)
    return {"".join(block.split()) for block in blocks}


_SEARCH = """
import json, os, sys
markers = json.loads(os.environ["MARKERS"])
hits = []
for top, dirs, files in os.walk("/"):
    if top in ("/proc", "/sys", "/dev"):
        dirs[:] = []
        continue
    for name in files:
        path = os.path.join(top, name)
        try:
            if not os.path.isfile(path) or os.path.getsize(path) > 64 << 20:
                continue
            data = open(path, "rb").read()
        except OSError:
            continue
        flat = data.replace(b"\\n", b"").replace(b"\\r", b"")
        hits += [path for m in markers if m.encode() in flat]
print(json.dumps(sorted(set(hits))))
"""


def test_no_ca_bundle_or_build_setting_baked_in(image: str) -> None:
    """The build's CA bundle was mounted, never copied: none of the certificates this machine
    trusts beyond the base image's own is in any file of the image, the mount point is gone,
    and no pip setting survives in the image's environment."""
    config = inspect(image)
    names = {entry.split("=", 1)[0] for entry in config.get("Env") or []}
    assert not {n for n in names if n.startswith("PIP_") or "CERT" in n or "CA_BUNDLE" in n}
    assert (
        json.loads(
            python_in(
                image, f"import json,os; print(json.dumps(os.path.exists({BUILD_CA_MOUNT!r})))"
            )
        )
        is False
    )
    host_bundle = Path(os.environ.get("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt"))
    if not host_bundle.is_file() or not BASE_IMAGE:
        return
    base_bundle = podman(
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "cat",
        BASE_IMAGE,
        "/etc/ssl/certs/ca-certificates.crt",
    ).stdout
    machine_only = _certificates(host_bundle.read_text()) - _certificates(base_bundle)
    if not machine_only:
        return  # this machine trusts nothing the base does not: nothing to leak
    markers = json.dumps(sorted(machine_only))
    hits = json.loads(python_in(image, _SEARCH, user="0", env=f"MARKERS={markers}"))
    assert hits == [], f"certificates of this machine's CA bundle found in {hits}"


# --- the worker running in the container ------------------------------------------------------


def _tmpfs_size(spec: ImageSpec) -> str:
    return f"{spec.tmp_size_bytes // 1024}k"


@contextlib.contextmanager
def container(image: str, settings: Settings, tmp_path: Path, port: int) -> Iterator[str]:
    """`sfworker run` in the image as the Deployment runs it: its own user, a read-only root
    filesystem with a small in-memory /tmp, the accounts file mounted read-only; host network."""
    env = {k: v for k, v in settings_env(settings).items() if k.startswith("SFWORKER_")}
    env |= {
        "SFWORKER_ACCOUNTS_FILE": "/etc/sfworker/accounts.toml",
        "SFWORKER_HTTP_HOST": "127.0.0.1",
        "SFWORKER_HTTP_PORT": str(port),
        "SFWORKER_SHUTDOWN_GRACE_SECONDS": "20",
    }
    env_file = tmp_path / "worker.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    accounts = settings.accounts_file
    assert accounts is not None
    name = f"sfworker-image-test-{uuid.uuid4().hex[:10]}"
    podman(
        "run", "--detach", "--name", name, "--network", "host",
        "--read-only", "--read-only-tmpfs=false",
        "--tmpfs", f"/tmp:rw,nosuid,nodev,size={_tmpfs_size(SPEC)}",
        "--volume", f"{accounts}:/etc/sfworker/accounts.toml:ro",
        "--env-file", str(env_file),
        image, "run",
    )  # fmt: skip
    try:
        yield name
    finally:
        podman("rm", "--force", "--time", "0", name, check=False)


def state(name: str) -> dict[str, Any]:
    [found] = json.loads(podman("inspect", name).stdout)
    result: dict[str, Any] = found["State"]
    return result


def logs(name: str) -> str:
    done = podman("logs", name, check=False)
    return (done.stdout + done.stderr)[-4000:]


async def wait_ready(name: str, port: int, within: float) -> None:
    async with asyncio.timeout(within), aiohttp.ClientSession() as http:
        while True:
            if not (await asyncio.to_thread(state, name))["Running"]:
                raise AssertionError(f"the container stopped before it was ready:\n{logs(name)}")
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"http://127.0.0.1:{port}/readyz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.2)


async def metrics(port: int) -> str:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        return await response.text()


def process_ids(pid: int) -> tuple[list[int], list[int]]:
    """The real, effective, saved and filesystem UIDs and GIDs of the container's process (as
    the host sees it), after checking that it is sfworker."""
    assert "sfworker" in Path(f"/proc/{pid}/cmdline").read_text()
    status = Path(f"/proc/{pid}/status").read_text()
    uids = re.search(r"^Uid:\s+(.*)$", status, re.M)
    gids = re.search(r"^Gid:\s+(.*)$", status, re.M)
    assert uids is not None
    assert gids is not None
    return [int(x) for x in uids[1].split()], [int(x) for x in gids[1].split()]


def root_mount_options(pid: int) -> set[str]:
    """The mount options of the process' root filesystem, as the kernel reports them."""
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == "/":
            return set(fields[5].split(","))
    raise AssertionError("no root mount")


async def test_the_worker_in_the_image_answers_jobs_and_drains_on_sigterm(
    image: str,
    settings: Settings,
    jobs: JobClient,
    simulator: SimulatorClient,
    tmp_path: Path,
) -> None:
    [contact] = await simulator.seed("Contact", [{"LastName": "Container", "Phone": "555-0199"}])
    port = free_port()
    with container(image, settings, tmp_path, port) as name:
        await wait_ready(name, port, within=60)

        # podman calls run in a thread: the simulator serves the worker from this event loop.
        pid = (await asyncio.to_thread(state, name))["Pid"]
        uids, gids = process_ids(pid)
        assert uids == [SPEC.user] * 4, uids
        assert gids == [SPEC.group] * 4, gids
        assert SPEC.read_only_root_filesystem
        assert "ro" in root_mount_options(pid)
        refused = await asyncio.to_thread(
            podman, "exec", name, "python3", "-c", "open('/opt/venv/probe', 'w')", check=False
        )
        assert refused.returncode != 0
        assert "Read-only file system" in refused.stderr

        search = await jobs.call(
            {
                "v": 1,
                "job_id": f"image-search-{uuid.uuid4().hex[:6]}",
                "operation": "search",
                "soql": "SELECT Id, Name FROM Contact WHERE Phone = :p",
                "params": {"p": "555-0199"},
            }
        )
        assert (search["status"], search["count"]) == ("ok", 1), search
        assert search["records"][0]["Id"] == contact

        inserted = await jobs.call(
            {
                "v": 1,
                "job_id": f"image-insert-{uuid.uuid4().hex[:6]}",
                "operation": "insert",
                "object": "Case",
                "fields": {"Subject": "from the image", "ContactId": contact},
            }
        )
        assert (inserted["status"], inserted["http_status"]) == ("ok", 201), inserted
        cases = await simulator.records("Case")
        assert [c["Subject"] for c in cases if c["Id"] == inserted["id"]] == ["from the image"]

        # A job in flight when SIGTERM arrives is answered before the process exits 0.
        await simulator.set_latency(1500)
        in_flight = await jobs.publish(
            {
                "v": 1,
                "job_id": f"image-drain-{uuid.uuid4().hex[:6]}",
                "operation": "search",
                "soql": "SELECT Id FROM Contact",
                "timeout_ms": 30000,
            }
        )

        async def busy() -> bool:
            return "sfworker_jobs_in_flight 1.0" in await metrics(port)

        await wait_until(busy, 20, "the job in flight")
        await asyncio.to_thread(podman, "kill", "--signal", "TERM", name)
        drained = await jobs.result(in_flight, wait=30)
        assert drained["status"] == "ok", drained
        exit_code = (await asyncio.to_thread(podman, "wait", name, timeout=40)).stdout.strip()
        assert exit_code == "0", logs(name)
        assert "draining" in logs(name)
