"""Static types are part of the suite: mypy over the whole package, strict on the pure core
(`[tool.mypy]` in pyproject.toml names the core and spells out its strict flags)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow  # about 50 s with a cold cache


def mypy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mypy", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)


def test_the_package_type_checks() -> None:
    result = mypy()
    assert result.returncode == 0, result.stdout[-4000:]
    assert result.stdout.startswith("Success: no issues found")


def test_the_core_is_checked_strictly(tmp_path: Path) -> None:
    """With the project's settings, an unannotated function is an error in a core module
    (`sia.core.decide`) and allowed in the shell (`sia.interface.views`)."""
    package = tmp_path / "sia"
    package.mkdir()
    (package / "__init__.py").write_text("", encoding="utf-8")
    for module in ("decide", "views"):
        (package / f"{module}.py").write_text("def untyped(x):\n    return x\n", encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
                             "--no-incremental", "sia/core/decide.py", "sia/interface/views.py"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 1
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert errors == ["sia/core/decide.py:1: error: Function is missing a type annotation  [no-untyped-def]"]
