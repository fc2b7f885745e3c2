"""LawBench charge prediction end to end with the built-in policy and the tiny model, on
the real 3-3.json when it is present: split hygiene and both LawBench measures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli import sia

pytestmark = pytest.mark.slow

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "lawbench" / "3-3.json"


@pytest.mark.skipif(not DATA.is_file(), reason=f"LawBench 3-3.json is not at {DATA} "
                                                "(it is never committed; see its README)")
def test_lawbench_runs_end_to_end_with_clean_splits_and_both_measures(tmp_path: Path) -> None:
    home = tmp_path / "home"
    result = sia(home, "run", "--task", "lawbench", "--data", str(DATA), "--mode", "H",
                 "--max-gen", "1", "--quiet", env={"ANTHROPIC_API_KEY": ""}, timeout=900)
    run = result.stdout.split()[-1]
    created = json.loads(sia(home, "log", run, "--type", "RunCreated", "--json").stdout)["payload"]
    task = created["task"]
    dev, train = set(task["dev_ids"]), set(task["train_ids"])
    assert len(dev) == 100 and len(train) == 300 and not dev & train
    assert task["data"] == str(DATA)
    (evaluation,) = [json.loads(line)["payload"] for line in
                     sia(home, "log", run, "--type", "EvaluationRecorded", "--json").stdout.splitlines()]
    assert evaluation["n"] == 100
    assert {"f1", "abstention_rate", "top1_accuracy"} <= set(evaluation["metrics"])
    assert 0.0 <= evaluation["metrics"]["f1"] <= 1.0
    assert evaluation["score"] == pytest.approx(evaluation["metrics"]["f1"])  # the reward is LawBench's F1
    assert sum(evaluation["failures"].values()) <= 100
