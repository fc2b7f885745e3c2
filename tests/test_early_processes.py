"""The `start_early` marker of tests/conftest.py: a test's command starts when collection ends,
only for tests the session will run, and the test reads it to its end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


TIMED = """
import time

import pytest


@pytest.fixture
def test_began():
    time.sleep(1.0)  # `date` starts in milliseconds: begin the test a second after its setup did
    return time.time()


@pytest.mark.start_early("sh", "-c", "date +%s.%N; sleep 2; echo done >&2")
def test_timed(test_began, started_early):
    assert started_early.returncode == 0
    assert (float(started_early.stdout) < test_began) == {early}
    assert started_early.stderr == "done\\n"
"""


@pytest.mark.parametrize(("options", "early"), [((), True), (("-n", "1"), False)])
def test_the_command_starts_before_its_test_and_is_read_to_its_end(
        tmp_path: Path, options: tuple[str, ...], early: bool) -> None:
    """Under pytest-xdist (`-n`) the test starts its command itself, and still reads it to its end."""
    module = tmp_path / "test_timed.py"
    module.write_text(TIMED.format(early=early), encoding="utf-8")
    result = run_pytest(tmp_path, *options, module)
    assert result.returncode == 0 and "1 passed" in result.stdout, result.stdout[-2000:]


def run_pytest(root: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider",
                           "--rootdir", str(root), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


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
    result = run_pytest(tmp_path, "-q", *option.split(" ", 1), module)
    assert result.returncode == 0, result.stdout[-2000:]
    assert (selected.exists(), deselected.exists()) == (runs, False)
