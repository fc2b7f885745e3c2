"""Static types are part of the suite: mypy over the whole package, strict on the pure core
(`[tool.mypy]` in pyproject.toml names the core and spells out its strict flags)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow  # mypy: about 50 s with a cold cache, started when collection ends


@pytest.mark.start_early(sys.executable, "-m", "mypy", cwd=ROOT)
def test_the_package_type_checks(started_early: subprocess.CompletedProcess[str]) -> None:
    result = started_early
    assert result.returncode == 0, result.stdout[-4000:]
    assert result.stdout.startswith("Success: no issues found")


def test_the_core_is_checked_strictly(tmp_path: Path) -> None:
    """With the project's settings, an unannotated function is an error in a core module
    (`sia.core.decide`) and allowed in the shell (`sia.interface.views`)."""
    for package in ("sia", "sia/core", "sia/interface"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("", encoding="utf-8")
    for module in ("sia/core/decide.py", "sia/interface/views.py"):
        (tmp_path / module).write_text("def untyped(x):\n    return x\n", encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
                             "--no-incremental", "sia/core/decide.py", "sia/interface/views.py"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 1
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert errors == ["sia/core/decide.py:1: error: Function is missing a type annotation  [no-untyped-def]"]
