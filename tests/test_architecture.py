"""The layers of docs/design.md, section 2, written once as import contracts (`.importlinter`)
and checked here: interface → runtime → effects and stores → pure core, never upwards, and a
core that imports no I/O, no clock and no randomness."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def lint_imports(config: Path) -> subprocess.CompletedProcess[str]:
    command = Path(sys.executable).with_name("lint-imports")  # import-linter's console script
    return subprocess.run([str(command), "--config", str(config), "--no-cache"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_every_import_contract_is_kept() -> None:
    result = lint_imports(ROOT / ".importlinter")
    assert result.returncode == 0, result.stdout[-3000:]
    assert "Contracts: 3 kept, 0 broken." in result.stdout


def test_a_broken_contract_fails_the_check(tmp_path: Path) -> None:
    """The check can fail: forbidding `typing` to the core (which uses it) is reported."""
    strict = tmp_path / "importlinter.ini"
    strict.write_text((ROOT / ".importlinter").read_text(encoding="utf-8")
                      .replace("    numpy\n", "    numpy\n    typing\n"), encoding="utf-8")
    result = lint_imports(strict)
    assert result.returncode != 0
    assert "The core imports no I/O, no clock and no randomness BROKEN" in result.stdout
