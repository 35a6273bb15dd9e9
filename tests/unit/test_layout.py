"""The package shows its roles: the contract, the commands and the core (README "Layout").

A module landing at the top of `worker/` outside the core, or an import from `stores/` up into
`salesforce/`, fails here; so does the simulator or a test helper inside the product package."""

from __future__ import annotations

import ast
from pathlib import Path

WORKER = Path(__file__).resolve().parents[2] / "worker"

# The core that stays at the top, where a newcomer looks for it.
TOP_MODULES = {
    "memory.py",
    "__init__.py",
    "__main__.py",
    "app.py",
    "client.py",
    "accounts.py",
    "settings.py",
    "deadline.py",
    "tasks.py",
    "tenancy.py",
}
TOP_PACKAGES = {
    "commands",
    "contract",
    "jobs",
    "observability",
    "runtime",
    "salesforce",
    "stores",
}


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_the_top_of_the_package_holds_only_the_core_and_the_role_packages() -> None:
    modules = {p.name for p in WORKER.glob("*.py")}
    packages = {p.name for p in WORKER.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert modules - TOP_MODULES == set(), "a module outside the roles at the top of worker/"
    assert packages - TOP_PACKAGES == set(), "a package outside the roles in worker/"
    # Folders without __init__.py would still import as namespace packages.
    folders = {p.name for p in WORKER.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders - TOP_PACKAGES == set()


def test_stores_never_import_from_salesforce() -> None:
    offenders = {
        f"{path.relative_to(WORKER)}: {module}"
        for path in (WORKER / "stores").rglob("*.py")
        for module in _imports(path)
        if module == "worker.salesforce" or module.startswith("worker.salesforce.")
    }
    assert offenders == set()


def test_salesforce_sees_token_boards_not_redis() -> None:
    """The Salesforce side reads and writes token boards (stores/token_board.py); Redis, its
    connection, its pipelines and the sealing of values stay behind them in stores/."""
    hidden = {"redis", "worker.stores.link", "worker.stores.sealing", "worker.stores.pipe"}
    offenders = {
        f"{path.relative_to(WORKER)}: {module}"
        for path in (WORKER / "salesforce").rglob("*.py")
        for module in _imports(path)
        if any(module == h or module.startswith(f"{h}.") for h in hidden)
    }
    assert offenders == set()


def test_the_product_package_holds_no_simulator_and_no_test_helper() -> None:
    offenders = {
        f"{path.relative_to(WORKER)}: {module}"
        for path in WORKER.rglob("*.py")
        for module in _imports(path)
        if module.split(".")[0] in {"tests", "pytest", "testcontainers"}
    }
    assert offenders == set()
    assert not list(WORKER.rglob("testing.py"))
    assert not (WORKER / "simulator").exists()


def test_only_the_demo_and_the_simulator_command_reach_for_the_simulator() -> None:
    users = {
        str(path.relative_to(WORKER))
        for path in WORKER.rglob("*.py")
        if any(m == "sfsim" or m.startswith("sfsim.") for m in _imports(path))
    }
    assert users <= {"commands/demo.py", "commands/cli.py"}


def test_the_consumer_settles_decisions_and_never_touches_the_stores() -> None:
    """The policy (job-id binding, replay, insert markers) is the pipeline's (worker/jobs/):
    the consumer only carries out its decision."""
    imported = _imports(WORKER / "runtime" / "consumer.py")
    assert {m for m in imported if m.startswith("worker.stores")} == set()
    assert {m for m in imported if m.startswith("worker.salesforce")} == set()


def test_no_module_of_the_worker_is_over_450_lines() -> None:
    long = {
        f"{path.relative_to(WORKER)}: {n}"
        for path in WORKER.rglob("*.py")
        if (n := len(path.read_text().splitlines())) > 450
    }
    assert long == set()
