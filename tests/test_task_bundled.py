"""The bundled tasks load and score: lawbench (built from the user's 3-3.json), trimul and
denoise (answers are code, scored in a limited child process)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sia.tasks.code_answers import extract_code, run_isolated
from sia.tasks.loader import BUNDLED_ROOT, bundled_task_names, load_task, validate_task

LAWBENCH_FILE = Path("/work/shared/data/lawbench/3-3.json")
INSTRUCTION = "请你模拟法官依据下面事实给出罪名，只需要给出罪名的名称，将答案写在[罪名]和<eoa>之间。"


def test_bundled_tasks() -> None:
    assert bundled_task_names() == ["denoise", "lawbench", "trimul", "wordcat"]
    for name in ("denoise", "trimul", "wordcat"):
        assert validate_task(name) == [], name


def run_reference(task, sample_id: str) -> str:
    namespace: dict = {}
    exec(task.reference_harness(), namespace)
    return namespace["solve"](task.sample(sample_id), None)


# ---------------------------------------------------------------- lawbench


def synthetic_cases(n: int = 20) -> list[dict]:
    charges = ["盗窃", "诈骗", "抢劫", "故意伤害"]
    return [{"instruction": INSTRUCTION, "question": f"事实:案件{i}，被告人某甲。",
             "answer": "罪名:" + (charges[i % 4] if i % 5 else f"{charges[i % 4]};故意伤害")}
            for i in range(n)]


@pytest.fixture
def lawbench_data(tmp_path: Path) -> Path:
    path = tmp_path / "3-3.json"
    path.write_text(json.dumps(synthetic_cases(), ensure_ascii=False), encoding="utf-8")
    return path


def test_lawbench_needs_its_data_file(tmp_path: Path) -> None:
    problems = validate_task("lawbench", cache=tmp_path)
    assert len(problems) == 1 and "pass it with --data" in problems[0] and "3-3.json" in problems[0]


def test_lawbench_rejects_a_malformed_data_file(tmp_path: Path) -> None:
    bad = tmp_path / "3-3.json"
    bad.write_text(json.dumps([{"instruction": "x", "question": "y", "answer": "盗窃"}]), encoding="utf-8")
    problems = validate_task("lawbench", data=bad, cache=tmp_path / "cache")
    assert len(problems) == 1
    assert problems[0].startswith("task.py: building the task from")
    assert "does not start with '罪名:'" in problems[0]


def test_lawbench_built_from_a_small_file(lawbench_data: Path, tmp_path: Path) -> None:
    task = load_task("lawbench", data=lawbench_data, cache=tmp_path / "cache")
    assert task.split_sizes() == {"train": 12, "dev": 4, "test": 4}
    sample = task.samples("dev")[0]
    assert set(sample) == {"id", "instruction", "question", "options"}
    official = json.loads((BUNDLED_ROOT / "lawbench" / "charges.json").read_text(encoding="utf-8"))
    assert sample["options"] == official and len(official) == 189  # LawBench's list, not the labels'
    assert task.options_of(sample["id"]) == sample["options"]
    assert not list(Path(task.root).glob("public"))  # built into the cache, not the package
    snapshot = task.identity()
    assert snapshot.data == str(lawbench_data.resolve()) and snapshot.source == "lawbench"
    assert snapshot.rollouts_per_generation == 12 and snapshot.reward_kind == "categorical"

    gold = {i: synthetic_cases()[int(i[3:]) - 1]["answer"][3:].split(";") for i in snapshot.dev_ids}
    answers = []
    for sample_id in snapshot.dev_ids:
        charges = gold[sample_id]
        answers.append((sample_id, f"[罪名]{';'.join(charges)}<eoa>"))
    perfect = task.evaluate(answers)
    assert perfect["score"] == 1.0 and perfect["metrics"]["f1"] == 1.0
    assert perfect["metrics"]["abstention_rate"] == 0.0

    first, second, third, fourth = snapshot.dev_ids
    extra = "抢劫" if "抢劫" not in gold[third] else "盗窃"
    two_named = f"[罪名]{gold[third][0]};{extra}<eoa>"
    mixed = task.evaluate([(first, "无法判断"), (second, None), (third, two_named),
                           (fourth, "[罪名]" + next(c for c in ("妨害公务", "重婚") if c not in gold[fourth]))])
    third_f1 = 2 * 0.5 * (1 / len(gold[third])) / (0.5 + 1 / len(gold[third]))  # P = 1/2, R = 1/|gold|
    assert mixed["rewards"] == [0.0, 0.0, pytest.approx(third_f1), 0.0]  # the reward is the case's F1
    assert mixed["failures"] == {"abstained": 1, "unanswered": 1, "wrong": 1}
    assert mixed["metrics"]["abstention_rate"] == 0.5  # unanswered abstains too, as in LawBench
    assert mixed["metrics"]["f1"] == pytest.approx(mixed["score"])
    assert mixed["metrics"]["top1_accuracy"] == 0.25

    corpus = task.pretraining_corpus()
    assert INSTRUCTION in corpus and not any("罪名:" in text for text in corpus)


@pytest.mark.skipif(not LAWBENCH_FILE.is_file(),
                    reason=f"LawBench data file {LAWBENCH_FILE} is absent (it is never copied into the repo)")
def test_lawbench_with_the_real_file(tmp_path: Path) -> None:
    task = load_task("lawbench", data=LAWBENCH_FILE, cache=tmp_path)
    assert task.split_sizes() == {"train": 300, "dev": 100, "test": 100}
    ids = [*task.ids("train"), *task.ids("dev"), *(s["id"] for s in task.test_samples())]
    assert len(set(ids)) == 500
    options = task.options_of(task.ids("dev")[0])
    assert len(options) == 189 and "盗窃" in options
    for sample in task.samples("dev"):
        assert sample["question"].startswith("事实") and "罪名:" not in sample["question"]
    again = load_task("lawbench", data=LAWBENCH_FILE, cache=tmp_path / "other")
    assert again.identity() == task.identity()  # the seeded split is reproducible
    result = task.evaluate([(i, "[罪名]盗窃<eoa>") for i in task.ids("dev")])
    assert 0.0 < result["score"] < 0.5 and result["metrics"]["f1"] == pytest.approx(result["score"])


# ---------------------------------------------------------------- trimul

WRONG_KERNEL = """
import torch

def custom_kernel(x, mask, weights):
    return torch.zeros_like(x)
"""


@pytest.mark.measures_time
def test_trimul_reference_answer_scores_about_one_and_wrong_code_scores_zero() -> None:
    task = load_task("trimul")
    assert task.split_sizes() == {"train": 4, "dev": 2, "test": 2}
    assert task.identity().reward_kind == "continuous"
    reference = run_reference(task, "tm-dev-1")
    result = task.evaluate([("tm-dev-1", f"Here it is:\n```python\n{reference}```\n"),
                            ("tm-dev-2", WRONG_KERNEL),
                            ("tm-train-1", "def custom_kernel(x, mask, weights:\n    pass"),
                            ("tm-train-2", "")], scored=2)
    rewards = result["rewards"]
    assert 0.3 < rewards[0] < 3.0, rewards  # the reference against itself: speedup ~1 (noisy CPU)
    assert rewards[1:] == [0.0, 0.0, 0.0]
    assert result["failure_kinds"] == [None, "incorrect", "syntax_error", "unanswered"]
    assert result["metrics"]["correct_rate"] == 0.5


# ---------------------------------------------------------------- denoise


def test_denoise_reference_answer_and_failures() -> None:
    task = load_task("denoise")
    assert task.split_sizes() == {"train": 4, "dev": 2, "test": 2}
    reference = run_reference(task, "dn-dev-1")
    result = task.evaluate([("dn-dev-1", reference),
                            ("dn-dev-2", "def denoise(train_counts):\n    return train_counts\n"),
                            ("dn-train-1", "def denoise(train_counts):\n    return -train_counts\n"),
                            ("dn-train-2", "import numpy as np\n")])
    assert 0.15 < result["rewards"][0] < 0.3  # MAGIC-style diffusion (0.22 on this seed)
    assert result["rewards"][1:] == [0.0, 0.0, 0.0]
    assert result["failure_kinds"] == [None, None, "incorrect", "no_function"]


def test_code_answers_are_limited_in_time_and_memory() -> None:
    config = {"seed": 1, "n_cells": 20, "n_genes": 30}
    hang = run_isolated("denoise", "while True:\n    pass\n", config, wall_s=1.5)
    assert hang.failure == "timeout" and hang.reward == 0.0
    hog = run_isolated("denoise", "blob = bytearray(3 * 2**30)\n", config, memory_mb=1024)
    assert hog.failure == "memory" and hog.reward == 0.0
    crash = run_isolated("denoise", "import os\nos._exit(3)\n", config)
    assert crash.failure == "crash" and "exited with 3" in crash.detail


def test_extract_code_takes_the_first_fenced_block() -> None:
    assert extract_code("text\n```python\na = 1\n```\nmore\n```\nb = 2\n```") == "a = 1\n"
    assert extract_code("a = 1\n") == "a = 1\n"
