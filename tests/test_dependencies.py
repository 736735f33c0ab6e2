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

from tests.conftest import ROOT, cli_env

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


def _distributions(modules: set[str]) -> set[str]:
    owners = importlib.metadata.packages_distributions()
    missing = sorted(m for m in modules if m not in owners)
    assert not missing, f"imported but not installed: {missing}"
    return {_name(owners[m][0]) for m in modules}


def test_every_imported_package_is_declared_and_every_declared_one_is_imported():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {_name(r) for r in project["dependencies"]}
    dev = {_name(r) for r in project["optional-dependencies"]["dev"]}
    used = _distributions(set().union(*(_imports(p) for p in PACKAGES)))
    assert used - runtime == set(), f"imported by the project but not declared: {sorted(used - runtime)}"
    assert runtime - used == set(), f"declared but never imported: {sorted(runtime - used)}"
    by_tests = _distributions(_imports("tests"))
    assert by_tests - runtime - dev == set(), f"imported by tests, not declared: {sorted(by_tests - runtime - dev)}"


def test_every_module_imports():
    names = [m.name for p in PACKAGES for m in pkgutil.walk_packages([str(ROOT / p)], prefix=f"{p}.")
             if not m.name.endswith("__main__")]
    code = "import importlib, sys\nfor n in sys.argv[1:]:\n    importlib.import_module(n)\nprint('ok')"
    done = subprocess.run([sys.executable, "-c", code, *names], env=cli_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
    assert len(names) > 40
