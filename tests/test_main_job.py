"""The main job end to end: the default task, the embedded tiny model, the built-in
policy, the sandbox, the gateway and a real LoRA update — then replay, report, the
leak guard, and a kill -9 in the middle of training."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from sia.tasks.loader import BUNDLED_ROOT
from tests.cli import SIA, sia, sia_json

pytestmark = pytest.mark.slow

NO_KEYS = {"ANTHROPIC_API_KEY": "", "OPENAI_API_KEY": ""}


def events(home: Path, run: str, kind: str) -> list[dict[str, Any]]:
    lines = sia(home, "log", run, "--type", kind, "--json").stdout.splitlines()
    return [(e := json.loads(line))["payload"] | {"seq": e["seq"]} for line in lines if line.strip()]


@pytest.fixture(scope="module")
def main_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, float]:
    home = tmp_path_factory.mktemp("main") / "home"
    started = time.monotonic()
    result = sia(home, "run", "--task", "wordcat", env=NO_KEYS, timeout=600)
    return home, result.stdout.split()[-1], time.monotonic() - started


def test_the_main_job_edits_the_harness_then_trains_and_both_raise_the_dev_score(
        main_run: tuple[Path, str, float]) -> None:
    home, run, seconds = main_run
    assert seconds < 300
    generations = events(home, run, "GenerationCompleted")
    assert len(generations) >= 3
    scores = {g["generation"]: g["dev_score"] for g in generations}
    edits = events(home, run, "HarnessEdited")
    adapters = events(home, run, "AdapterCheckpointed")
    assert edits and adapters
    edited_at, trained_at = edits[0]["generation"], adapters[0]["generation"]
    assert scores[edited_at + 1] > scores[edited_at]
    assert scores[trained_at + 1] > scores[trained_at]
    decisions = sia_json(home, "audit", run)
    assert all(d["provider"] == "builtin" for d in decisions)


def test_the_final_answer_is_scored_once_on_held_out_test(main_run: tuple[Path, str, float]) -> None:
    home, run, _ = main_run
    (scored,) = events(home, run, "TestScored")
    shown = sia_json(home, "show", run)
    assert scored["generation"] == shown["best_generation"] and scored["n"] == 32
    assert shown["test_score"] == scored["score"] is not None
    assert [e["kind"] for e in events(home, run, "EffectRequested")].count("test") == 1
    assert f"test {scored['score']:.4f} on 32 held-out samples" in sia(home, "tree", run).stdout


def test_the_main_run_replays_and_reports(main_run: tuple[Path, str, float], tmp_path: Path) -> None:
    home, run, _ = main_run
    check = sia(home, "replay", run, "--check")
    assert check.stdout.startswith("ok:")
    sia(home, "report", run, "-o", str(tmp_path))
    assert (tmp_path / f"{run}.png").read_bytes()[:4] == b"\x89PNG"


SENTINEL = "SENTINEL-7f3a9c-held-out"


def test_a_held_out_label_reaches_no_event_blob_prompt_or_log(tmp_path: Path) -> None:
    task = tmp_path / "planted"
    shutil.copytree(BUNDLED_ROOT / "wordcat", task, ignore=shutil.ignore_patterns("__pycache__"))
    test_ids = {json.loads(line)["id"] for line in
                (task / "private" / "test.jsonl").read_text().splitlines() if line.strip()}
    labels = task / "private" / "labels.jsonl"
    rows = [json.loads(line) for line in labels.read_text().splitlines() if line.strip()]
    labels.write_text("".join(json.dumps({**r, "label": SENTINEL} if r["id"] in test_ids else r) + "\n"
                              for r in rows))
    home = tmp_path / "home"
    result = sia(home, "run", "--task", str(task), "--max-gen", "3", env=NO_KEYS, timeout=600)
    run = result.stdout.split()[-1]
    assert events(home, run, "AdapterCheckpointed"), "the run must also train"
    sia(home, "report", run, "-o", str(home / "report"))
    leaks = [str(path) for path in home.rglob("*") if path.is_file()
             and SENTINEL.encode() in path.read_bytes()]
    assert leaks == []
    assert SENTINEL not in result.stdout + result.stderr


def test_kill_9_during_training_then_resume_reattaches_to_the_one_job(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {**os.environ, **NO_KEYS, "SIA_HOME": str(home), "SIA_TRAIN_STEP_DELAY": "0.3"}
    # generation 0's rewards are all 0: the forced update there has no learning signal (recorded
    # as such, no job); the built-in Feedback edits the harness and generation 1 trains
    process = subprocess.Popen([*SIA, "run", "--task", "wordcat", "--max-gen", "3", "--quiet",
                                "--run-id", "trained", "--set", "feedback.force=update_weights:grpo"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    submitted: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not submitted:
        time.sleep(1.0)
        if (home / "sia.sqlite").exists():
            submitted = events(home, "trained", "TrainingJobSubmitted")
    assert submitted, "the run never submitted its training job"
    time.sleep(2.0)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    job_dir = home / "train" / "jobs" / submitted[0]["job_id"]
    assert not (job_dir / "DONE").exists(), "training finished before the kill; slow it down"
    sia(home, "resume", "trained", "--quiet", env={**NO_KEYS, "SIA_TRAIN_STEP_DELAY": "0"},
        timeout=600)
    assert len(events(home, "trained", "TrainingJobSubmitted")) == 1
    assert (job_dir / "DONE").exists()
    attempts = (job_dir / "attempts").read_text().split() if (job_dir / "attempts").exists() else []
    assert len(attempts) <= 1
    assert len(events(home, "trained", "AdapterCheckpointed")) == 1
    assert sia_json(home, "show", "trained")["status"] == "completed"


def test_the_same_settings_in_a_fresh_home_repeat_the_main_run(
        main_run: tuple[Path, str, float], tmp_path: Path) -> None:
    home, run, _ = main_run
    again = sia(tmp_path / "home", "run", "--task", "wordcat", env=NO_KEYS, timeout=600).stdout.split()[-1]
    first, second = sia_json(home, "show", run), sia_json(tmp_path / "home", "show", again)
    assert first["dev_scores"] == second["dev_scores"]
    assert first["adapter_hash"] == second["adapter_hash"] is not None
    assert first["harness_hash"] == second["harness_hash"]
    # the same outcome, measured at a different speed (the effects' wall seconds differ)
    assert first["outcome_hash"] == second["outcome_hash"]
    assert first["ledger"]["total"]["wall_s"] != second["ledger"]["total"]["wall_s"]
    assert first["state_hash"] != second["state_hash"]
    assert f"outcome_hash: {second['outcome_hash']}" in sia(tmp_path / "home", "show", again).stdout
