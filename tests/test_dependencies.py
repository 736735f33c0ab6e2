"""Every third-party package the code imports is declared in pyproject.toml (so a fresh environment
with only the declared dependencies can import it), every declared one is used, and every module
imports."""

from __future__ import annotations

import ast
import importlib.metadata
import pkgutil
import re
import subprocess
import sys
import tomllib

import pytest

from tests.conftest import ROOT, cli_env

pytestmark = pytest.mark.slow  # imports every module in a new process

PACKAGES = ("fedsign", "strategies", "landscape", "sim")


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=~!; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _imports(folder: str) -> set[str]:
    """Top-level names of the third-party modules imported anywhere under `folder`."""
    found: set[str] = set()
    for path in (ROOT / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m not in (*PACKAGES, "tests")}


def _distributions(modules: set[str], optional: set[str]) -> set[str]:
    """The distributions providing `modules`; an optional extra's need not be installed (its module
    name is then its distribution's, as for pyhessian and loss_landscapes)."""
    owners = importlib.metadata.packages_distributions()
    found = {_name(owners[m][0]) if m in owners else _name(m) for m in modules}
    missing = sorted(d for d in found if d not in optional and not any(_name(owners[m][0]) == d
                                                                       for m in modules if m in owners))
    assert not missing, f"imported but not installed: {missing}"
    return found


def test_every_imported_package_is_declared_and_every_declared_one_is_imported():
    """The project's imports are its dependencies, or an optional extra's for the optional tool that
    imports it where it is used (`peers`: landscape.bench --peers; `mutation`: tests.mutation)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {_name(r) for r in project["dependencies"]}
    extras = {name: {_name(r) for r in reqs} for name, reqs in project["optional-dependencies"].items()}
    optional = set().union(*(reqs for name, reqs in extras.items() if name != "dev"))
    used = _distributions(set().union(*(_imports(p) for p in PACKAGES)), optional)
    assert used - runtime - optional == set(), f"imported but not declared: {sorted(used - runtime - optional)}"
    assert runtime - used == set(), f"declared but never imported: {sorted(runtime - used)}"
    by_tests = _distributions(_imports("tests"), optional)
    undeclared = by_tests - runtime - extras["dev"] - optional
    assert undeclared == set(), f"imported by tests, not declared: {sorted(undeclared)}"


def test_every_module_imports():
    names = [m.name for p in PACKAGES for m in pkgutil.walk_packages([str(ROOT / p)], prefix=f"{p}.")
             if not m.name.endswith("__main__")]
    code = "import importlib, sys\nfor n in sys.argv[1:]:\n    importlib.import_module(n)\nprint('ok')"
    done = subprocess.run([sys.executable, "-c", code, *names], env=cli_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
    assert len(names) > 40
