"""A user's mistake gets one line on stderr that says what was wrong and what would be right,
and a non-zero exit: never a traceback, never a silent success, and nothing recorded is lost."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli import sia, sia_json


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, int]:
    home = tmp_path_factory.mktemp("errors") / "home"
    run_id = sia(home, "run", "--task", "toy", "--quiet").stdout.split()[-1]
    return home, run_id, sia_json(home, "show", run_id)["seq"]


def refused(home: Path, *args: str) -> str:
    """The single stderr line of a command that must fail cleanly."""
    result = sia(home, *args, check=False)
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("option", ["0", "-1", "100000"])
def test_fork_outside_the_log_names_the_valid_range(toy_run: tuple[Path, str, int],
                                                     option: str) -> None:
    home, run_id, last = toy_run
    line = refused(home, "fork", run_id, "--at", option)
    assert line == (f"error: --at {option} is outside run {run_id}, "
                    f"whose events are seq 1 to {last}")
    assert sia_json(home, "show", run_id)["seq"] == last


def test_show_and_replay_outside_the_log_are_refused(toy_run: tuple[Path, str, int]) -> None:
    home, run_id, last = toy_run
    assert refused(home, "show", run_id, "--at", "99999") == (
        f"error: --at 99999 is outside run {run_id}, whose events are seq 1 to {last}")
    assert refused(home, "replay", run_id, "--to", "0") == (
        f"error: --to 0 is outside run {run_id}, whose events are seq 1 to {last}")


def test_log_with_an_unknown_type_lists_the_known_ones(toy_run: tuple[Path, str, int]) -> None:
    home, run_id, _ = toy_run
    line = refused(home, "log", run_id, "--type", "Bogus")
    assert line.startswith("error: --type Bogus is not an event type; known types: ")
    assert "FeedbackDecided" in line and "RunCreated" in line
    assert sia(home, "log", run_id, "--type", "RunCreated").stdout.count("RunCreated") == 1


def test_export_into_a_missing_folder_or_onto_a_folder(toy_run: tuple[Path, str, int],
                                                      tmp_path: Path) -> None:
    home, run_id, _ = toy_run
    missing = tmp_path / "missing_dir" / "x.jsonl"
    assert refused(home, "export", run_id, "-o", str(missing)) == (
        f"error: cannot write {missing}: the folder {missing.parent} does not exist")
    assert refused(home, "export", run_id, "-o", str(tmp_path)) == (
        f"error: cannot write {tmp_path}: it is a folder; name a file, e.g. {tmp_path / 'run.jsonl'}")
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_run_is_named(toy_run: tuple[Path, str, int]) -> None:
    home, _, _ = toy_run
    assert refused(home, "log", "nosuch") == "error: no run 'nosuch' in this store (see `sia runs`)"
