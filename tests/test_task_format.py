"""The task folder format: a well-formed task serves and scores; every malformed part is named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sia.core.events.types import TaskIdentity
from sia.interface.task_commands import app
from sia.tasks.loader import TaskError, bundled_task_names, load_task, validate_task

TOML = """\
name = "mini"
description = "Say which colour a fruit is."
rollouts_per_generation = 2

[reward]
kind = "binary"
range = [0.0, 1.0]
higher_is_better = true

[splits]
train = 2
dev = 2
test = 1
"""

EVALUATOR = """\
def reward(sample, prediction, label):
    if prediction.strip() == "boom":
        raise RuntimeError("evaluator broke")
    return 1.0 if prediction.strip().lower() == label else 0.0


def metrics(samples, predictions, labels, rewards):
    return {"long_answers": sum(len(p or "") > 10 for p in predictions) / len(samples)}
"""

OPTIONS = ["red", "yellow", "green"]
SPLITS = {
    "public/train.jsonl": [("t1", "banana", "yellow"), ("t2", "cherry", "red")],
    "public/dev.jsonl": [("d1", "lime", "green"), ("d2", "lemon", "yellow")],
    "private/test.jsonl": [("x1", "tomato", "red")],
}


def _jsonl(rows: list[object]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def write_task(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "task.toml").write_text(TOML)
    (root / "evaluator.py").write_text(EVALUATOR)
    labels = []
    for rel, rows in SPLITS.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(_jsonl([{"id": i, "question": f"Colour of {w}?", "options": OPTIONS}
                                        for i, w, _ in rows]))
        labels += [{"id": i, "label": label} for i, _, label in rows]
    (root / "private/labels.jsonl").write_text(_jsonl(labels))
    return root


@pytest.fixture
def task_dir(tmp_path: Path) -> Path:
    return write_task(tmp_path / "mini")


def problems_of(root: Path, **kwargs: object) -> list[str]:
    problems = validate_task(root, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(TaskError) as raised:
        load_task(root, **kwargs)  # type: ignore[arg-type]
    assert raised.value.problems == problems
    for problem in problems:
        assert problem in str(raised.value)
    return problems


def only_problem(root: Path, **kwargs: object) -> str:
    problems = problems_of(root, **kwargs)
    assert len(problems) == 1, problems
    return problems[0]


# ---------------------------------------------------------------- a well-formed task


def test_public_samples_and_refusals(task_dir: Path) -> None:
    task = load_task(task_dir)
    assert [s["id"] for s in task.samples("train")] == ["t1", "t2"]
    assert task.samples("dev")[0] == {"id": "d1", "question": "Colour of lime?", "options": OPTIONS}
    assert task.sample("t2")["question"] == "Colour of cherry?"
    assert task.options_of("d2") == OPTIONS
    assert task.reference_harness() is None
    assert task.split_sizes() == {"train": 2, "dev": 2, "test": 1}
    with pytest.raises(TaskError, match="held out"):
        task.samples("test")
    with pytest.raises(TaskError, match="held-out"):
        task.sample("x1")
    with pytest.raises(TaskError, match="no sample 'nope'"):
        task.sample("nope")
    with pytest.raises(TaskError, match="unknown split"):
        task.samples("validation")
    # callers get copies: mutating one changes nothing inside the task
    task.samples("dev")[0]["question"] = "changed"
    assert task.sample("d1")["question"] == "Colour of lime?"
    assert all("label" not in s for s in task.samples("train") + task.samples("dev"))


def test_evaluate_scores_the_first_scored_and_counts_unanswered_as_wrong(task_dir: Path) -> None:
    task = load_task(task_dir)
    result = task.evaluate([("d1", " Green "), ("d2", None), ("t1", "yellow"), ("t2", "   ")], scored=2)
    assert result["rewards"] == [1.0, 0.0, 1.0, 0.0]
    assert result["failure_kinds"] == [None, "unanswered", None, "unanswered"]
    assert result["score"] == 0.5 and result["n"] == 2 and result["n_answered"] == 1
    assert result["failures"] == {"unanswered": 1}
    assert result["metrics"] == {"answered_rate": 0.5, "long_answers": 0.0}
    whole = task.evaluate([("d1", "red"), ("d2", "yellow")])
    assert whole["score"] == 0.5 and whole["failures"] == {"wrong": 1} and whole["n"] == 2
    assert task.reward("d1", "green") == 1.0 and task.reward("d1", "") == 0.0
    with pytest.raises(TaskError, match="evaluate_test"):
        task.evaluate([("x1", "red")])
    with pytest.raises(TaskError, match="scored=3"):
        task.evaluate([("d1", "red")], scored=3)
    assert task.evaluate([("t1", "red")], scored=0)["score"] is None


def test_an_answer_that_breaks_the_evaluator_is_that_episodes_failure(task_dir: Path) -> None:
    result = load_task(task_dir).evaluate([("d1", "boom"), ("d2", "yellow")])
    assert result["rewards"] == [0.0, 1.0]
    assert result["failures"] == {"evaluator_error": 1}


def test_evaluate_test_returns_aggregates_only(task_dir: Path) -> None:
    task = load_task(task_dir)
    assert [s["id"] for s in task.test_samples()] == ["x1"]
    result = task.evaluate_test([("x1", "Red")])
    assert result == {"score": 1.0, "n": 1, "n_answered": 1, "failures": {},
                      "metrics": {"answered_rate": 1.0, "long_answers": 0.0}}
    missing = task.evaluate_test([])
    assert missing["score"] == 0.0 and missing["failures"] == {"unanswered": 1}
    with pytest.raises(TaskError, match="not test"):
        task.evaluate_test([("d1", "green")])


def test_snapshot_and_hash(task_dir: Path) -> None:
    snapshot = load_task(task_dir).identity()
    assert isinstance(snapshot, TaskIdentity)
    assert snapshot.name == "mini" and snapshot.reward_kind == "binary"
    assert snapshot.dev_ids == ("d1", "d2") and snapshot.train_ids == ("t1", "t2")
    assert snapshot.rollouts_per_generation == 2
    assert snapshot.source == str(task_dir.resolve()) and snapshot.data is None
    assert len(snapshot.task_hash) == 64
    assert load_task(task_dir).identity() == snapshot
    # the hash covers private content too: changing a held-out label changes it
    labels = task_dir / "private/labels.jsonl"
    labels.write_text(labels.read_text().replace('"x1", "label": "red"', '"x1", "label": "green"'))
    assert load_task(task_dir).identity().task_hash != snapshot.task_hash


def test_default_pretraining_corpus_is_public_prompts(task_dir: Path) -> None:
    corpus = load_task(task_dir).pretraining_corpus()
    assert corpus[0] == "question: Colour of banana?\noptions: red, yellow, green\nanswer:"
    assert len(corpus) == 4 and not any("tomato" in text for text in corpus)


def test_rollouts_are_capped_at_the_train_size(task_dir: Path) -> None:
    toml = task_dir / "task.toml"
    toml.write_text(toml.read_text().replace("rollouts_per_generation = 2", "rollouts_per_generation = 50"))
    assert load_task(task_dir).identity().rollouts_per_generation == 2


def test_a_reference_harness_is_served(task_dir: Path) -> None:
    source = "def solve(sample, model):\n    return 'red'\n"
    (task_dir / "reference_harness.py").write_text(source)
    assert load_task(task_dir).reference_harness() == source


# ---------------------------------------------------------------- malformed tasks


def test_unknown_task_name() -> None:
    with pytest.raises(TaskError, match="unknown task 'no-such-task'.*wordcat"):
        load_task("no-such-task")
    assert "neither a bundled task" in validate_task("no-such-task")[0]


def test_missing_task_toml(task_dir: Path) -> None:
    (task_dir / "task.toml").unlink()
    assert "no task.toml" in only_problem(task_dir)


def test_bad_toml(task_dir: Path) -> None:
    (task_dir / "task.toml").write_text("name = \"mini\"\n[reward\nkind = 1\n")
    assert only_problem(task_dir).startswith("task.toml: not valid TOML")


def test_unknown_reward_kind(task_dir: Path) -> None:
    toml = task_dir / "task.toml"
    toml.write_text(toml.read_text().replace('kind = "binary"', 'kind = "ordinal"'))
    problem = only_problem(task_dir)
    assert "task.toml: field `reward.kind`" in problem and "binary" in problem


def test_reward_range_min_not_below_max(task_dir: Path) -> None:
    toml = task_dir / "task.toml"
    toml.write_text(toml.read_text().replace('kind = "binary"', 'kind = "continuous"')
                    .replace("range = [0.0, 1.0]", "range = [1.0, 1.0]"))
    assert only_problem(task_dir) == ("task.toml: field `reward`: reward range min must be below "
                                      "max, got [1.0, 1.0]")


def test_missing_and_unknown_spec_fields(task_dir: Path) -> None:
    toml = task_dir / "task.toml"
    toml.write_text(toml.read_text().replace('description = "Say which colour a fruit is."\n', "")
                    + "\n[limits]\nwall_seconds = 3\n")
    problems = problems_of(task_dir)
    assert "task.toml: field `description`: required field is missing" in problems
    assert "task.toml: field `limits.wall_seconds`: unknown field (not part of the task format)" in problems


@pytest.mark.parametrize("rel", ["public/train.jsonl", "public/dev.jsonl", "private/test.jsonl",
                                 "private/labels.jsonl"])
def test_missing_split_file(task_dir: Path, rel: str) -> None:
    (task_dir / rel).unlink()
    problems = problems_of(task_dir)
    assert any(p.startswith(f"{rel}: missing") for p in problems), problems


def test_line_that_is_not_an_object(task_dir: Path) -> None:
    with (task_dir / "public/train.jsonl").open("a") as handle:
        handle.write('["t3", "plum"]\n')
    assert only_problem(task_dir) == "public/train.jsonl line 3: expected a JSON object, got list"


def test_line_that_is_not_json(task_dir: Path) -> None:
    with (task_dir / "public/dev.jsonl").open("a") as handle:
        handle.write('{"id": "d3", \n')
    assert only_problem(task_dir).startswith("public/dev.jsonl line 3: not valid JSON")


@pytest.mark.parametrize("row", [{"question": "no id"}, {"id": "", "question": "empty id"},
                                 {"id": 7, "question": "numeric id"}])
def test_line_without_an_id(task_dir: Path, row: dict) -> None:
    with (task_dir / "public/train.jsonl").open("a") as handle:
        handle.write(json.dumps(row) + "\n")
    assert only_problem(task_dir) == 'public/train.jsonl line 3: no "id" field holding a non-empty string'


def test_duplicate_ids_within_and_across_splits(task_dir: Path) -> None:
    with (task_dir / "public/train.jsonl").open("a") as handle:
        handle.write(json.dumps({"id": "t1", "question": "again"}) + "\n")
    with (task_dir / "private/test.jsonl").open("a") as handle:
        handle.write(json.dumps({"id": "d2", "question": "leaked dev"}) + "\n")
    problems = problems_of(task_dir)
    assert "public/train.jsonl line 3: duplicate id 't1' (also in public/train.jsonl line 1)" in problems
    assert "private/test.jsonl line 2: duplicate id 'd2' (also in public/dev.jsonl line 2)" in problems


@pytest.mark.parametrize("field", ["label", "answer", "labels"])
def test_label_field_in_a_public_split(task_dir: Path, field: str) -> None:
    path = task_dir / "public/dev.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[1][field] = "whatever"
    path.write_text(_jsonl(rows))
    problem = only_problem(task_dir)
    assert problem.startswith(f"public/dev.jsonl line 2 (id 'd2'): field {field!r} would give the label away")


def test_label_value_verbatim_in_a_public_field(task_dir: Path) -> None:
    path = task_dir / "public/train.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[0]["hint"] = "yellow"
    path.write_text(_jsonl(rows))
    assert only_problem(task_dir) == "public/train.jsonl (id 't1'): field 'hint' holds the label verbatim"


def test_labels_missing_or_for_unknown_ids(task_dir: Path) -> None:
    path = task_dir / "private/labels.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows = [r for r in rows if r["id"] != "x1"] + [{"id": "zz", "label": "red"}, {"id": "t1"}]
    path.write_text(_jsonl(rows))
    problems = problems_of(task_dir)
    assert "private/labels.jsonl line 5: label for id 'zz', which is in no split" in problems
    assert 'private/labels.jsonl line 6: no "label" field' in problems
    assert "private/labels.jsonl: no label for 'x1'" in problems


def test_dev_split_must_not_be_empty(task_dir: Path) -> None:
    (task_dir / "public/dev.jsonl").write_text("\n")
    toml = task_dir / "task.toml"
    toml.write_text(toml.read_text().replace("dev = 2", "dev = 0"))
    path = task_dir / "private/labels.jsonl"
    path.write_text(_jsonl([r for r in map(json.loads, path.read_text().splitlines())
                            if not r["id"].startswith("d")]))
    assert only_problem(task_dir) == "public/dev.jsonl: no samples (the dev split scores every generation)"


def test_split_size_mismatch(task_dir: Path) -> None:
    toml = task_dir / "task.toml"
    toml.write_text(toml.read_text().replace("train = 2", "train = 3"))
    assert only_problem(task_dir) == "public/train.jsonl: 2 samples, but task.toml [splits] says train = 3"


def test_missing_evaluator(task_dir: Path) -> None:
    (task_dir / "evaluator.py").unlink()
    assert only_problem(task_dir).startswith("evaluator.py: missing")


def test_evaluator_that_does_not_import(task_dir: Path) -> None:
    (task_dir / "evaluator.py").write_text("import no_such_module_anywhere\n\ndef reward(s, p, l):\n    return 0.0\n")
    assert only_problem(task_dir) == ("evaluator.py: does not import (ModuleNotFoundError: "
                                      "No module named 'no_such_module_anywhere')")
    (task_dir / "evaluator.py").write_text("def reward(s, p, l)\n    return 0.0\n")
    assert only_problem(task_dir).startswith("evaluator.py: does not import (SyntaxError")


def test_evaluator_without_reward(task_dir: Path) -> None:
    (task_dir / "evaluator.py").write_text("def score(sample, prediction, label):\n    return 1.0\n")
    assert only_problem(task_dir) == "evaluator.py: no function `reward(sample, prediction, label)`"


def test_invalid_reference_harness(task_dir: Path) -> None:
    (task_dir / "reference_harness.py").write_text("def answer(sample):\n    return 'red'\n")
    assert only_problem(task_dir) == "reference_harness.py: no top-level function `solve(sample, model)` is defined"


# ---------------------------------------------------------------- tasks built from user data

BUILDER = """\
import json
from pathlib import Path


def build(data, out, params):
    words = json.loads(Path(data).read_text())
    if not isinstance(words, dict):
        raise ValueError("expected an object of word -> colour")
    items = sorted(words.items())
    cut = params["dev"]
    for rel, part in (("public/train.jsonl", items[2 * cut:]), ("public/dev.jsonl", items[:cut]),
                      ("private/test.jsonl", items[cut:2 * cut])):
        (Path(out) / rel).parent.mkdir(parents=True, exist_ok=True)
        (Path(out) / rel).write_text("".join(json.dumps({"id": w, "question": w}) + "\\n" for w, _ in part))
    (Path(out) / "private/labels.jsonl").write_text(
        "".join(json.dumps({"id": w, "label": c}) + "\\n" for w, c in items))
"""


@pytest.fixture
def data_task(tmp_path: Path) -> Path:
    root = tmp_path / "built"
    root.mkdir()
    (root / "task.toml").write_text(TOML.replace('name = "mini"', 'name = "built"').split("[splits]")[0]
                                    + '[data]\nrequired = true\ndescription = "a JSON object word -> colour"\n'
                                    + "[build]\ndev = 1\n")
    (root / "evaluator.py").write_text(EVALUATOR)
    (root / "task.py").write_text(BUILDER)
    return root


def test_data_task_builds_into_the_cache(data_task: Path, tmp_path: Path) -> None:
    data = tmp_path / "words.json"
    data.write_text(json.dumps({"banana": "yellow", "cherry": "red", "lime": "green", "plum": "purple"}))
    cache = tmp_path / "cache"
    task = load_task(data_task, data=data, cache=cache)
    assert task.split_sizes() == {"train": 2, "dev": 1, "test": 1}
    assert task.evaluate([("banana", "yellow")])["score"] == 1.0
    snapshot = task.identity()
    assert snapshot.data == str(data.resolve()) and snapshot.dev_ids == ("banana",)
    built = [p for p in cache.iterdir() if not p.name.startswith(".")]
    assert len(built) == 1 and not list(data_task.glob("public"))  # nothing written into the task folder
    stamp = (built[0] / "public/dev.jsonl").stat().st_mtime_ns
    assert load_task(data_task, data=data, cache=cache).identity() == snapshot  # reused, not rebuilt
    assert (built[0] / "public/dev.jsonl").stat().st_mtime_ns == stamp
    data.write_text(json.dumps({"apple": "red", "cherry": "red", "lime": "green", "plum": "purple"}))
    changed = load_task(data_task, data=data, cache=cache).identity()
    assert changed.task_hash != snapshot.task_hash and changed.dev_ids == ("apple",)


def test_data_required_but_not_given(data_task: Path, tmp_path: Path) -> None:
    assert only_problem(data_task, cache=tmp_path) == (
        "task 'built' is built from a data file you provide (a JSON object word -> colour): pass it with --data FILE")


def test_data_file_not_found(data_task: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.json"
    assert only_problem(data_task, data=missing, cache=tmp_path).startswith(f"data file {missing} not found")


def test_data_that_the_builder_rejects(data_task: Path, tmp_path: Path) -> None:
    data = tmp_path / "words.json"
    data.write_text("[1, 2]")
    assert only_problem(data_task, data=data, cache=tmp_path / "c") == (
        f"task.py: building the task from {data} failed: ValueError: expected an object of word -> colour")
    assert not [p for p in (tmp_path / "c").iterdir()]  # no half-built folder left behind


def test_data_task_without_build_function(data_task: Path, tmp_path: Path) -> None:
    (data_task / "task.py").write_text("X = 1\n")
    data = tmp_path / "words.json"
    data.write_text("{}")
    assert only_problem(data_task, data=data, cache=tmp_path).startswith(
        "task.py: a task with [data] required = true needs a `build(data, out, params)` function")


def test_data_given_to_a_task_without_data(task_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "words.json"
    data.write_text("{}")
    assert only_problem(task_dir, data=data) == f"task 'mini' takes no data file, but --data {data} was given"


def test_every_problem_is_listed_at_once(task_dir: Path) -> None:
    (task_dir / "evaluator.py").write_text("def score(s, p, l):\n    return 1.0\n")
    (task_dir / "private/test.jsonl").unlink()
    with (task_dir / "public/train.jsonl").open("a") as handle:
        handle.write("[]\n")
    problems = problems_of(task_dir)
    assert len(problems) == 3, problems


# ---------------------------------------------------------------- the `sia tasks` sub-app

runner = CliRunner()


def test_cli_list_names_every_bundled_task() -> None:
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split()[0] for line in lines] == ["toy", *bundled_task_names()]
    wordcat = next(line for line in lines if line.startswith("wordcat"))
    assert "binary" in wordcat and "train=64 dev=32 test=32" in wordcat
    assert "built from --data" in next(line for line in lines if line.startswith("lawbench"))


def test_cli_show(task_dir: Path) -> None:
    result = runner.invoke(app, ["show", str(task_dir), "-n", "1"])
    assert result.exit_code == 0, result.output
    assert "reward      binary, range [0, 1], higher is better" in result.output
    assert "splits      train 2, dev 2, test 1" in result.output
    assert "no reference harness" in result.output
    assert '"id": "t1"' in result.output and '"id": "t2"' not in result.output
    assert "tomato" not in result.output  # nothing of the test split
    assert runner.invoke(app, ["show", "wordcat"]).output.count("reference_harness.py") == 1


def test_cli_show_unusable_task(tmp_path: Path) -> None:
    result = runner.invoke(app, ["show", str(tmp_path)])
    assert result.exit_code == 1 and "no task.toml" in result.output


def test_cli_validate(task_dir: Path) -> None:
    ok = runner.invoke(app, ["validate", str(task_dir)])
    assert ok.exit_code == 0 and ok.output.strip() == "ok"
    (task_dir / "evaluator.py").write_text("x = 1\n")
    (task_dir / "public/dev.jsonl").unlink()
    bad = runner.invoke(app, ["validate", str(task_dir)])
    assert bad.exit_code == 1
    assert "2 problems" in bad.output
    assert "  - evaluator.py: no function `reward(sample, prediction, label)`" in bad.output
    assert "  - public/dev.jsonl: missing (the dev split)" in bad.output
