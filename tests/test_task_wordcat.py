"""wordcat, the default task: reproducible stratified splits, exact-match reward, a naive
reference harness in the template's knob format, and a label-free pretraining corpus."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from pathlib import Path

import pytest

from sia.agents.template import Knobs, read_knobs, render
from sia.harness.contract import validate_harness
from sia.tasks.loader import BUNDLED_ROOT, load_task, validate_task

ROOT = BUNDLED_ROOT / "wordcat"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"wordcat_{name}_under_test", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


recipe = _module("task")


def labels() -> dict[str, str]:
    rows = [json.loads(line) for line in (ROOT / "private/labels.jsonl").read_text().splitlines()]
    return {row["id"]: row["label"] for row in rows}


def word_of(question: str) -> str:
    return next(w for ws in recipe.WORDS.values() for w in ws
                if question.replace('"', " ").replace("?", " ").split().count(w))


@pytest.fixture(scope="module")
def task():
    return load_task("wordcat")


def test_the_files_on_disk_are_what_the_recipe_generates() -> None:
    for rel, content in recipe.generated_files().items():
        assert (ROOT / rel).read_text(encoding="utf-8") == content, f"{rel}: run task.py to regenerate"
    assert validate_task("wordcat") == []


def test_split_sizes_and_stratification(task) -> None:
    assert task.split_sizes() == {"train": 64, "dev": 32, "test": 32}
    gold = labels()
    test_questions = {s["id"]: s["question"] for s in task.test_samples()}
    by_split = {"train": task.samples("train"), "dev": task.samples("dev"),
                "test": task.test_samples()}
    all_words = {w for ws in recipe.WORDS.values() for w in ws}
    assert len(all_words) == 32
    for split, rows in by_split.items():
        words = Counter(word_of(s["question"]) for s in rows)
        assert set(words) == all_words, f"{split} misses words"
        per_word = {"train": 2, "dev": 1, "test": 1}[split]
        assert set(words.values()) == {per_word}
        categories = Counter(gold[s["id"]] for s in rows)
        assert categories == {c: 8 * per_word for c in recipe.CATEGORIES}
    # each template lands in dev (and test) 8 times: spread over the splits, not clumped
    for split in ("dev", "test"):
        used = Counter(next(i for i, t in enumerate(recipe.TEMPLATES)
                            if t.split("{word}")[0] in s["question"] and t.split("{word}")[1] in s["question"])
                       for s in by_split[split])
        assert sorted(used.values()) == [8, 8, 8, 8]
    assert len(test_questions) == 32 and len(gold) == 128


def test_public_fields_and_fixed_options(task) -> None:
    for sample in task.samples("train") + task.samples("dev"):
        assert set(sample) == {"id", "question", "options"}
        assert sample["options"] == ["fruit", "animal", "color", "tool"]
    assert task.options_of(task.samples("dev")[0]["id"]) == ["fruit", "animal", "color", "tool"]


def test_reward_is_exact_category_after_normalising(task) -> None:
    gold = labels()
    sample_id = task.samples("dev")[0]["id"]
    right = gold[sample_id]
    wrong = next(c for c in recipe.CATEGORIES if c != right)
    assert task.reward(sample_id, right) == 1.0
    assert task.reward(sample_id, f"  {right.upper()}. \n") == 1.0
    assert task.reward(sample_id, f'"{right}!"') == 1.0
    assert task.reward(sample_id, f"a {right}") == 0.0
    assert task.reward(sample_id, wrong) == 0.0
    assert task.reward(sample_id, None) == 0.0 and task.reward(sample_id, "") == 0.0
    dev = task.samples("dev")
    result = task.evaluate([(s["id"], gold[s["id"]]) for s in dev])
    assert result["score"] == 1.0 and result["failures"] == {}
    result = task.evaluate([(dev[0]["id"], wrong), (dev[1]["id"], "banana"), (dev[2]["id"], None)])
    assert result["failures"] == {"wrong_option": 1, "not_an_option": 1, "unanswered": 1}
    assert result["metrics"]["option_rate"] == pytest.approx(1 / 3)
    test = task.evaluate_test([(s["id"], gold[s["id"]]) for s in task.test_samples()[:16]])
    assert test["score"] == 0.5 and test["n"] == 32 and "rewards" not in test


def test_snapshot(task) -> None:
    snapshot = task.identity()
    assert snapshot.name == "wordcat" and snapshot.source == "wordcat" and snapshot.data is None
    assert snapshot.reward_kind == "binary" and snapshot.rollouts_per_generation == 64
    assert len(snapshot.dev_ids) == 32 and len(snapshot.train_ids) == 64
    held_out = {s["id"] for s in task.test_samples()}
    assert not held_out & (set(snapshot.dev_ids) | set(snapshot.train_ids))
    assert "wordcat" in task.spec.description.lower() or "categor" in task.spec.description.lower()


def test_reference_harness_is_the_naive_template_render(task) -> None:
    source = task.reference_harness()
    assert source is not None and validate_harness(source) == []
    assert read_knobs(source) == Knobs(prompt="bare", extract="raw", samples=1, temperature=1.0,
                                       max_tokens=4, fallback="none")
    assert source == render(Knobs(prompt="bare")), (
        "reference_harness.py must equal render(Knobs(prompt='bare')); regenerate it if the template changed")


def test_reference_harness_runs_with_a_model(task) -> None:
    namespace: dict = {}
    exec(task.reference_harness(), namespace)

    class Model:
        def __init__(self) -> None:
            self.prompts: list[str] = []

        def complete(self, prompt, *, max_tokens=64, temperature=1.0, stop=None, n=1):
            self.prompts.append(prompt)
            return " Animal\n"

    model = Model()
    sample = task.samples("dev")[0]
    assert namespace["solve"](sample, model) == "Animal"
    assert sample["question"] in model.prompts[0]


def test_pretraining_corpus_teaches_format_not_answers(task) -> None:
    corpus = task.pretraining_corpus()
    public = task.samples("train") + task.samples("dev")
    assert len(corpus) == 2 * len(public)
    gold = labels()
    prompts, bare = corpus[: len(public)], corpus[len(public):]
    assert bare == [s["question"] for s in public]
    matches = 0
    for text, sample in zip(prompts, public):
        head, answer = text.rsplit("\nanswer: ", 1)
        assert head == f"question: {sample['question']}\noptions: fruit, animal, color, tool"
        assert answer in recipe.CATEGORIES
        matches += answer == gold[sample["id"]]
    assert matches < len(public) / 2  # seeded random options, not labels (about a quarter match)
    assert task.pretraining_corpus() == corpus and task.pretraining_corpus(seed=1) != corpus
    held_out = {s["question"] for s in task.test_samples()}
    assert not any(text in held_out or text.split("\n")[0][10:] in held_out for text in corpus)


def test_the_recipe_is_deterministic_per_seed() -> None:
    assert recipe.generated_files(0) == recipe.generated_files(0)
    assert recipe.generated_files(1) != recipe.generated_files(0)


def test_generate_writes_a_loadable_task(tmp_path: Path) -> None:
    folder = tmp_path / "wc"
    folder.mkdir()
    for name in ("task.toml", "evaluator.py", "task.py", "reference_harness.py"):
        (folder / name).write_text((ROOT / name).read_text())
    recipe.generate(folder, seed=5)
    task = load_task(folder)
    assert task.split_sizes() == {"train": 64, "dev": 32, "test": 32}
    assert task.identity().task_hash != load_task("wordcat").identity().task_hash
