"""The `start_early` marker of tests/conftest.py: a test's command starts when collection ends,
only for tests the session will run, and the test reads it to its end."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def test_began() -> float:
    """When the test began, a second after its setup did (`date` starts in milliseconds)."""
    time.sleep(1.0)
    return time.time()


@pytest.mark.start_early("sh", "-c", "date +%s.%N; sleep 2; echo done >&2")
def test_the_command_starts_before_its_test_and_is_read_to_its_end(
        test_began: float, started_early: subprocess.CompletedProcess[str]) -> None:
    assert started_early.returncode == 0
    assert float(started_early.stdout) < test_began
    assert started_early.stderr == "done\n"


MARKED = """
import pytest

@pytest.mark.slow
@pytest.mark.start_early("touch", {deselected!r})
def test_deselected(started_early):
    pass

@pytest.mark.start_early("touch", {selected!r})
def test_selected(started_early):
    pass
"""


@pytest.mark.slow
@pytest.mark.parametrize(("option", "runs"), [("-m not slow", True), ("--collect-only", False)])
def test_nothing_starts_for_a_test_the_session_will_not_run(tmp_path: Path, option: str, runs: bool) -> None:
    selected, deselected = tmp_path / "selected", tmp_path / "deselected"
    module = tmp_path / "test_marked.py"
    module.write_text(MARKED.format(selected=str(selected), deselected=str(deselected)), encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider",
                             "--rootdir", str(tmp_path), *option.split(" ", 1), str(module)],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:]
    assert (selected.exists(), deselected.exists()) == (runs, False)
