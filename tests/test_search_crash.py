"""A search killed with `kill -9` anywhere (in the parent or inside a candidate's branch),
then resumed: the same end as an uninterrupted twin, and no completed effect runs again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.cli import SIA, sia
from tests.test_crash import executions, settled, sia_in_process

pytestmark = pytest.mark.slow

RUN = ["run", "--task", "toy", "--max-gen", "3", "--quiet", "--run-id", "searchy", "--concurrency", "4",
       "--candidates", "4"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict:
    home = tmp_path_factory.mktemp("reference")
    counter = home / "counter"
    sia(home, *RUN, env={"SIA_EFFECT_COUNTER": str(counter)})
    return {**cli_json(home, "show", "searchy"), "executions": executions(counter).total(),
            "runs": run_ids(home), "home": home}


def cli_json(home: Path, *args: str) -> Any:
    """`sia ARGS --json`, read in this process (the runs themselves are real processes)."""
    return json.loads(sia_in_process(home, *args, "--json"))


def run_ids(home: Path) -> list[str]:
    return sorted(r["run_id"] for r in cli_json(home, "runs"))


def all_settled(home: Path, runs: list[str]) -> set[str]:
    done: set[str] = set()
    for run in runs:
        done |= set(settled(recorded_run(home, run)))
    return done


def recorded_run(home: Path, run: str) -> list[dict]:
    return [json.loads(line) for line in sia_in_process(home, "log", run, "--json").splitlines()]


def test_the_reference_search_explores_candidates_on_branches(reference: dict) -> None:
    branches = [r for r in reference["runs"] if r.startswith("searchy~")]
    assert len(branches) >= 4 and reference["search"], reference["runs"]
    home = reference["home"]
    drawn = sia(home, "tree", "searchy").stdout
    assert "round 0" in drawn and "← adopted" in drawn and "searchy~g0r0c0" in drawn
    listed = sia(home, "runs").stdout
    assert "searchy~" not in listed and f"{len(branches)} candidate branches of searches not listed" in listed
    assert "searchy~g0r0c0" in sia(home, "runs", "--all").stdout


@pytest.mark.parametrize("nth", [3, 13])
def test_kill_inside_the_search_then_resume(nth: int, tmp_path: Path, reference: dict) -> None:
    home, counter = tmp_path / "home", tmp_path / "counter"
    env = {"SIA_CRASH_AT": f"after_execution:{nth}", "SIA_EFFECT_COUNTER": str(counter)}
    crashed = sia(home, *RUN, env=env, check=False)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    log = recorded_run(home, "searchy")
    assert log[-1]["type"] not in ("RunCompleted", "RunFailed"), "the kill landed before the end"
    before = all_settled(home, run_ids(home))
    ran_before = executions(counter)
    sia(home, "resume", "searchy", "--quiet", "--concurrency", "4", env={"SIA_EFFECT_COUNTER": str(counter)})
    final = cli_json(home, "show", "searchy")
    assert final["outcome_hash"] == reference["outcome_hash"]
    assert final["state_hash"] == reference["state_hash"]
    rerun = {e for e in before if (executions(counter) - ran_before)[e]}
    assert not rerun, f"completed effects ran again after resume: {rerun}"
    assert run_ids(home) == reference["runs"]
    for run in reference["runs"]:
        assert sia_in_process(home, "replay", run, "--check").startswith("ok:"), run
        sia_in_process(home, "verify", run)


def test_a_random_time_kill_of_a_search_then_resume(tmp_path: Path, reference: dict) -> None:
    import time

    home, counter = tmp_path / "home", tmp_path / "counter"
    env = {**os.environ, "SIA_HOME": str(home), "SIA_EFFECT_COUNTER": str(counter)}
    process = subprocess.Popen([*SIA, *RUN], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = reference["executions"] // 2
    while executions(counter).total() < target:
        assert process.poll() is None, "the run ended before the kill"
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    sia(home, "resume", "searchy", "--quiet", "--concurrency", "4", env={"SIA_EFFECT_COUNTER": str(counter)})
    assert cli_json(home, "show", "searchy")["state_hash"] == reference["state_hash"]
    assert sia_in_process(home, "replay", "searchy", "--check").startswith("ok:")
