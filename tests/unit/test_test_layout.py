"""The tests read as a library: what they share lives in modules of its own (tests/support/, and
an area's helpers.py such as tests/fleet/helpers.py), never in a test module or a conftest.

A test module importing another test module (its helpers, or its tests collected twice) fails
here; so does an import from a conftest (pytest loads those itself: they hold fixtures), and a
helper module left at the top of tests/ instead of in tests/support/."""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]

# What the top of tests/ holds besides the area folders.
TOP_MODULES = {"__init__.py", "conftest.py"}


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(TESTS.parent).with_suffix("").parts)


def imported_modules(source: str, module: str) -> set[str]:
    """Every module `source` (the text of `module`) imports, relative imports resolved, and for
    `from package import name` the submodule `package.name` too (it may be one)."""
    package = module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


def _is_test_module(module: str) -> bool:
    return module.split(".")[0] == "tests" and module.rsplit(".", 1)[-1].startswith("test_")


def _is_conftest(module: str) -> bool:
    return module.split(".")[0] == "tests" and module.rsplit(".", 1)[-1] == "conftest"


def _offenders(rule: Callable[[str], bool]) -> set[str]:
    out: set[str] = set()
    for path in sorted(TESTS.rglob("*.py")):
        module = _module_name(path)
        for imported in imported_modules(path.read_text(encoding="utf-8"), module):
            if rule(imported):
                out.add(f"{path.relative_to(TESTS)}: {imported}")
    return out


def test_no_module_of_the_tests_imports_a_test_module() -> None:
    assert _offenders(_is_test_module) == set(), "move the shared helper to tests/support/"


def test_no_module_of_the_tests_imports_a_conftest() -> None:
    assert _offenders(_is_conftest) == set(), "conftest files hold fixtures, helpers live apart"


def test_the_top_of_tests_holds_no_helper_module() -> None:
    modules = {p.name for p in TESTS.glob("*.py")}
    assert modules - TOP_MODULES == set(), "a helper module belongs in tests/support/"


def test_the_check_sees_every_way_to_import_a_test_module() -> None:
    """Not vacuous: absolute, package-relative and `from package import module` forms."""
    module = "tests.fleet.test_limits"
    for source in (
        "from tests.fleet.test_fleet_tokens import run_all",
        "import tests.runtime.test_faults",
        "from tests.fleet import test_fleet_tokens",
        "from .test_fleet_tokens import run_all",
        "from . import test_fleet_tokens",
        "def f() -> None:\n    from tests.fleet.test_fleet_tokens import run_all\n",
    ):
        assert any(_is_test_module(m) for m in imported_modules(source, module)), source
    for source in (
        "from tests.fleet.helpers import Fleet",
        "from tests.support.metrics import metric",
        "from .helpers import Fleet",
    ):
        assert not any(_is_test_module(m) for m in imported_modules(source, module)), source
    assert any(_is_conftest(m) for m in imported_modules("from .conftest import x", module))
