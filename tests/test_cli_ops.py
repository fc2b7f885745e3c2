"""Issue B's operations through the real CLI: fork, diff, audit (and --rejudge), replay."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli import sia, sia_json


def feedback_boundary(home: Path, run_id: str, nth: int = 0) -> int:
    events = [json.loads(line) for line in sia(home, "log", run_id, "--json").stdout.splitlines()]
    requests = [e["seq"] for e in events if e["type"] == "EffectRequested"
                and e["payload"]["kind"] == "feedback"]
    return requests[nth] - 1


@pytest.mark.slow
def test_fork_diff_audit_and_rejudge(tmp_path: Path) -> None:
    home = tmp_path / "home"
    parent = sia(home, "run", "--task", "toy", "--max-gen", "3", "--quiet").stdout.split()[-1]
    at = feedback_boundary(home, parent, nth=1)
    fork = sia(home, "fork", parent, "--at", str(at), "--set", "feedback.force=update_weights:entropic",
               "--set", "max_gen=4").stdout.split()[-1]
    assert sia_json(home, "show", fork)["seq"] == at + 1
    sia(home, "resume", fork, "--quiet")

    diff = sia_json(home, "diff", parent, fork)
    assert diff["common_events"] == at and diff["common_ancestor"] == parent
    assert diff["first_divergence"][fork] == f"seq {at + 1} RunForked"
    assert [row["generation"] for row in diff["scores"]] == [0, 1, 2, 3]
    assert diff["scores"][1][parent] == diff["scores"][1][fork]
    spend = diff["spend"][fork]
    assert spend["inherited"]["tokens"] > 0 and spend["own"]["tokens"] > 0
    assert spend["total"]["tokens"] == spend["own"]["tokens"] + spend["inherited"]["tokens"]
    assert "harness" in sia(home, "diff", parent, fork).stdout

    rows = sia_json(home, "audit", fork)
    forced = rows[1]
    assert (forced["action"], forced["algorithm"], forced["forced"]) == ("update_weights", "entropic", True)
    assert forced["recommended_algorithm"] and forced["evidence"]["digest_hash"]
    assert forced["delta"] == round(rows[2]["score_before"] - forced["score_before"], 6)
    table = sia(home, "audit", fork).stdout
    assert "entropic" in table and "by" in table and "deterministic" in table

    judged = sia_json(home, "audit", parent, "--rejudge", "deterministic")
    assert judged["rejudge"] == {"decisions": 2, "agreed": 2, "agreement": 1.0}
    rejudge_runs = [d["rejudged"]["run_id"] for d in judged["decisions"]]
    statuses = {r["run_id"]: r["status"] for r in sia_json(home, "runs")}
    assert all(statuses[r] == "paused" for r in rejudge_runs)
    for run in (fork, *rejudge_runs):
        assert sia(home, "replay", run, "--check").returncode == 0


def test_replay_to_folds_only_a_prefix_and_fork_refuses_seqs_outside_the_history(tmp_path: Path) -> None:
    home = tmp_path / "home"
    run = sia(home, "run", "--task", "toy", "--max-gen", "2", "--quiet").stdout.split()[-1]
    state = sia_json(home, "replay", run, "--to", "12")
    assert state["seq"] == 12 and state["status"] == "running"
    assert sia_json(home, "replay", run, "--to", "12", "--check")["check"]["ok"]
    last = sia_json(home, "show", run)["seq"]
    for at in ("0", "9999"):
        result = sia(home, "fork", run, "--at", at, check=False)
        assert result.returncode == 1
        assert f"whose events are seq 1 to {last}" in result.stderr
    assert len(sia_json(home, "runs")) == 1


@pytest.mark.slow
def test_ctrl_c_pauses_a_real_run_and_resume_finishes_it(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    home = tmp_path / "home"
    env = {**os.environ, "SIA_HOME": str(home)}
    # Each episode takes 20 ms, so the interrupt lands mid-run however fast the machine is.
    slowed = ("import sys, time, sia.effects.deterministic as d\n"
              "real = d.DeterministicEpisode.run\n"
              "def run(self, request, ctx):\n    time.sleep(0.02)\n    return real(self, request, ctx)\n"
              "d.DeterministicEpisode.run = run\n"
              "sys.argv = ['sia', 'run', '--task', 'toy', '--max-gen', '150', '--quiet', '--run-id', 'long',"
              " '--set', 'patience=150']\n"
              "from sia.interface.cli import entrypoint; entrypoint()\n")
    # A suite started in the background of a non-interactive shell inherits SIGINT ignored,
    # and Python keeps an ignored SIGINT ignored: give the run the default disposition.
    process = subprocess.Popen([sys.executable, "-c", slowed], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.3)
        if (home / "sia.sqlite").exists() and any(r["run_id"] == "long" and r["events"] > 50
                                                  for r in sia_json(home, "runs")):
            break
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "paused; continue with: sia resume long" in err
    assert sia_json(home, "show", "long")["status"] == "paused"
    events = [json.loads(line)["type"] for line in sia(home, "log", "long", "--json").stdout.splitlines()]
    assert "RunPaused" in events
    sia(home, "resume", "long", "--quiet")
    final = sia_json(home, "show", "long")
    assert final["status"] == "completed" and sia(home, "replay", "long", "--check").returncode == 0
