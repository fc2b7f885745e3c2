"""Issue A's acceptance through the real CLI, each command in its own process."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli import sia, sia_json


@pytest.fixture(scope="module")
def recorded_once(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    home = tmp_path_factory.mktemp("recorded") / "home"
    run_id = sia(home, "run", "--task", "toy", "--max-gen", "3", "--quiet").stdout.strip().splitlines()[-1]
    return home, run_id


@pytest.fixture
def recorded(recorded_once: tuple[Path, str], tmp_path: Path) -> tuple[Path, str]:
    """A home of its own holding the recorded run (tests alter it), copied from the one run."""
    home = Path(shutil.copytree(recorded_once[0], tmp_path / "home"))
    return home, recorded_once[1]


def test_run_prints_its_id_last_and_another_process_reads_folds_and_verifies(recorded: tuple[Path, str]) -> None:
    home, run_id = recorded
    assert run_id.startswith("toy-")
    rows = sia_json(home, "runs")
    assert rows == [{"run_id": run_id, "parent_run_id": None, "fork_seq": None, "task": "toy",
                     "status": "completed", "generations": 3, "best_dev_score": rows[0]["best_dev_score"],
                     "events": rows[0]["events"], "explores_candidate": None}]
    state = sia_json(home, "show", run_id)
    assert {"run_id", "seq", "state_hash", "status", "generation", "best_generation", "dev_scores",
            "decisions"} <= state.keys()
    assert len(state["dev_scores"]) == 3 and len(state["decisions"]) == 2
    assert set(state["decisions"][0]) >= {"generation", "action", "algorithm", "rationale"}
    assert "hash chain intact" in sia(home, "verify", run_id).stdout
    lines = sia(home, "log", run_id, "--json").stdout.splitlines()
    assert len(lines) == state["seq"]
    first = json.loads(lines[0])
    assert (first["seq"], first["type"]) == (1, "RunCreated") and "payload" in first and "hash" in first
    only = sia(home, "log", run_id, "--type", "FeedbackDecided", "--json").stdout.splitlines()
    assert [json.loads(line)["type"] for line in only] == ["FeedbackDecided"] * 2
    earlier = sia_json(home, "show", run_id, "--at", "10")
    assert earlier["seq"] == 10 and earlier["state_hash"] != state["state_hash"]


def test_altering_any_event_row_makes_verify_name_run_and_seq(recorded: tuple[Path, str]) -> None:
    home, run_id = recorded
    db = sqlite3.connect(home / "sia.sqlite")
    with db:
        db.execute("DROP TRIGGER events_no_update")
        db.execute("UPDATE events SET payload = replace(payload, 'toy', 'ToY') WHERE seq = 17")
    db.close()
    result = sia(home, "verify", run_id, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().startswith(f"error: run {run_id} seq 17: hash mismatch")


def test_the_log_is_append_only_at_the_database_level(recorded: tuple[Path, str]) -> None:
    home, _ = recorded
    db = sqlite3.connect(home / "sia.sqlite")
    for statement in ("UPDATE events SET type = 'x' WHERE seq = 1", "DELETE FROM events WHERE seq = 1"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute(statement)


@pytest.mark.slow
def test_export_import_round_trips_and_partial_files_are_refused(recorded: tuple[Path, str], tmp_path: Path) -> None:
    home, run_id = recorded
    events = [json.loads(line) for line in sia(home, "log", run_id, "--json").stdout.splitlines()]
    at = next(e["seq"] for e in events if e["type"] == "EffectRequested"
              and e["payload"]["kind"] == "feedback") - 1
    fork_id = sia(home, "fork", run_id, "--at", str(at), "--set", "max_gen=4",
                  "--set", "feedback.force=update_weights:dpo").stdout.strip().splitlines()[-1]
    sia(home, "resume", fork_id, "--quiet")
    export = tmp_path / "fork.jsonl"
    sia(home, "export", fork_id, "-o", str(export))
    other = tmp_path / "other"
    sia(other, "runs")
    lines = export.read_text().splitlines(keepends=True)
    victim = json.loads(lines[20])
    victim["payload"] = victim["payload"].replace("0", "1", 1)
    altered = lines[:20] + [json.dumps(victim) + "\n"] + lines[21:]
    broken = {
        "truncated": "".join(lines[: len(lines) // 2]),
        "cut-mid-line": "".join(lines)[:-7],
        "no-trailer": "".join(lines[:-1]),
        "altered": "".join(altered),
    }
    for name, text in broken.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_text(text)
        result = sia(other, "import", str(path), check=False)
        assert result.returncode == 1, name
        assert "import refused, nothing changed" in result.stderr, name
        assert sia_json(other, "runs") == [], name
    assert sia(other, "import", str(export)).stdout.strip().splitlines()[-1] == fork_id
    original, imported = sia_json(home, "show", fork_id), sia_json(other, "show", fork_id)
    assert imported["state_hash"] == original["state_hash"]
    assert {r["run_id"] for r in sia_json(other, "runs")} == {run_id, fork_id}
    assert sia(other, "replay", fork_id, "--check").returncode == 0
    again = sia(other, "import", str(export))
    assert again.returncode == 0 and len(sia_json(other, "runs")) == 2


def test_errors_are_one_line_on_stderr_with_nonzero_status(tmp_path: Path) -> None:
    home = tmp_path / "home"
    for args, message in [
        (("show", "nope"), "error: no run 'nope' in this store"),
        (("run", "--task", "nope"), "error: unknown task 'nope'"),
        (("run", "--task", "toy", "--set", "max_gen=0"), "error: invalid settings: max_generations"),
        (("run", "--task", "toy", "--set", "bogus=1"), "error: unknown setting 'bogus'"),
        (("run", "--task", "toy", "--set", "feedback.force=update_weights:sgd"), "unknown algorithm 'sgd'"),
        (("import", str(tmp_path / "missing.jsonl")), "import refused"),
    ]:
        result = sia(home, *args, check=False)
        assert result.returncode != 0, args
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr


def test_inspection_commands_never_import_heavy_libraries(recorded: tuple[Path, str]) -> None:
    home, run_id = recorded
    probe = ("import sys, runpy; sys.argv = ['sia'] + sys.argv[1:]\n"
             "try:\n    runpy.run_module('sia', run_name='__main__')\nexcept SystemExit:\n    pass\n"
             "heavy = [m for m in ('torch', 'transformers', 'peft', 'trl', 'pandas') if m in sys.modules]\n"
             "print('HEAVY', heavy, file=sys.stderr)")
    for args in (["--help"], ["runs"], ["log", run_id], ["show", run_id], ["audit", run_id]):
        result = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True,
                                env={"SIA_HOME": str(home), "PATH": "/usr/bin:/bin"})
        assert "HEAVY []" in result.stderr, (args, result.stderr[-500:])
