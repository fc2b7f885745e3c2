"""Every third-party module that sia, its tests or its benchmarks import is declared in pyproject.toml.

A package that is merely installed on the developer's machine (or pulled in today by another
package) makes a suite green here and red on a fresh machine: `httpx` did exactly that when the
SDKs moved to another HTTP client. The package and its tests must be covered by the core
dependencies and the `test` extra; benchmarks may also use the `bench` extra.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCAL = {"sia", "tests", "bench", "replay"}
UNINSTALLED_OWNERS = {"langgraph": "langgraph-checkpoint-sqlite"}
"""Namespace packages whose distribution is named otherwise, for when the bench extra is not installed."""


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared(*extras: str) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project["optional-dependencies"][extra]
    return {_normal(re.split(r"[<>=!~;\[ ]", item, maxsplit=1)[0]) for item in requirements}


def _imported(*folders: str) -> dict[str, set[str]]:
    """Top-level module name -> files importing it, for absolute imports outside the stdlib."""
    found: dict[str, set[str]] = {}
    for folder in folders:
        scripts = {path.stem for path in (ROOT / folder).glob("*.py")}
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if (top in sys.stdlib_module_names or top in LOCAL | scripts
                            or top.startswith("_")):
                        continue
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def _undeclared(modules: dict[str, set[str]], declared: set[str]) -> list[str]:
    owners = importlib.metadata.packages_distributions()
    missing = []
    for module, files in sorted(modules.items()):
        distributions = {_normal(d) for d in owners.get(module, [])} or {
            _normal(UNINSTALLED_OWNERS.get(module, module))}
        if not distributions & declared:
            missing.append(f"{module} (imported by {', '.join(sorted(files)[:3])})")
    return missing


def test_package_and_tests_import_only_declared_packages() -> None:
    assert _undeclared(_imported("sia", "tests"), _declared("test")) == []


def test_benchmarks_import_only_declared_packages() -> None:
    assert _undeclared(_imported("bench", "replay"), _declared("test", "bench")) == []


def test_the_check_catches_an_undeclared_import() -> None:
    assert _undeclared({"httpx": {"sia/target/remote.py"}}, {"anthropic"}) == [
        "httpx (imported by sia/target/remote.py)"]
