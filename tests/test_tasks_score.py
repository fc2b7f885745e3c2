"""`sia tasks score|show|list`: official LawBench numbers through the CLI, the loop's own scoring
path, toy in the listing, and one clear stderr line with a non-zero exit for every user error."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sia.core.effect_models import EvaluateRequest
from sia.effects.base import EffectContext
from sia.effects.evaluate import EvaluateHandler
from sia.interface.task_commands import app
from sia.store.blobs import MemoryBlobStore
from sia.tasks.loader import load_task
from sia.tasks.trimul.reference import reference_kernel_source
from tests.cli import sia

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "lawbench"
DATA = SHARED / "3-3.json"
MODELS = ("GPT4", "chatglm2-6b-hf", "qwen-7b-chat-hf", "internlm-chat-7b-hf")
needs_lawbench = pytest.mark.skipif(
    not (DATA.is_file() and (SHARED / "official_scores.json").is_file()),
    reason=f"LawBench data and published predictions are not at {SHARED} (never committed; see its README)")

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


def assert_user_error(result, *fragments: str) -> None:
    """Exit 1, no traceback, exactly one line on stderr naming every fragment."""
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def write_jsonl(path: Path, rows: Sequence[object]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


# ---------------------------------------------------------------- LawBench's official numbers


@needs_lawbench
@pytest.mark.parametrize("model", MODELS)
def test_published_lawbench_predictions_score_the_official_numbers_through_the_cli(
        model: str, tmp_path: Path) -> None:
    official = json.loads((SHARED / "official_scores.json").read_text(encoding="utf-8"))["zero_shot"][model]
    result = sia(tmp_path / "home", "tasks", "score", "lawbench", "--data", str(DATA), "--predictions",
                 str(SHARED / "predictions" / f"{model}.3-3.jsonl"), "--json")
    scored = json.loads(result.stdout)
    assert scored["n"] == 500 and scored["splits"] == {"dev": 100, "test": 100, "train": 300}
    assert abs(scored["metrics"]["f1"] - official["score"]) < 1e-9
    assert abs(scored["score"] - official["score"]) < 1e-9  # the reward is LawBench's F1
    assert abs(scored["metrics"]["abstention_rate"] - official["abstention_rate"]) < 1e-9


@needs_lawbench
def test_cli_text_output_names_the_official_figures(tmp_path: Path) -> None:
    result = sia(tmp_path / "home", "tasks", "score", "lawbench", "--data", str(DATA), "--predictions",
                 str(SHARED / "predictions" / "GPT4.3-3.jsonl"))
    lines = dict(line.split(maxsplit=1) for line in result.stdout.splitlines())
    assert lines["task"].startswith("lawbench  (500 predictions: dev 100, test 100, train 300)")
    assert lines["f1"] == "0.419867" and lines["abstention_rate"] == "0.250000"
    assert lines["answered"] == "499 of 500"


# ---------------------------------------------------------------- the loop's scoring path


def test_score_is_what_the_loops_evaluate_handler_records(tmp_path: Path) -> None:
    task = load_task("wordcat")
    dev = task.ids("dev")
    answers = ["animal", "fruit", "tool", None, "Animal!", "banana"]
    pairs = [(i, answers[n % len(answers)]) for n, i in enumerate(dev)]
    predictions = write_jsonl(tmp_path / "p.jsonl", [{"id": i, "prediction": p} for i, p in pairs])
    result = invoke("score", "wordcat", "--predictions", str(predictions), "--json")
    assert result.exit_code == 0, result.output
    scored = json.loads(result.stdout)
    ctx = EffectContext(run_id="r", effect_id="e", kind="evaluate", seed=0, attempt=1,
                        blobs=MemoryBlobStore(), home=tmp_path)
    asked = EvaluateRequest(task="wordcat", task_hash="-", generation=0, predictions=tuple(pairs))
    recorded = EvaluateHandler(task).run(asked, ctx).result.record()
    for key in ("score", "n", "n_answered", "failures", "metrics"):
        assert scored[key] == recorded[key], key
    assert [s["reward"] for s in scored["samples"]] == recorded["rewards"]
    assert 0.0 < scored["score"] < 1.0 and scored["failures"]["unanswered"] >= 1


def test_held_out_samples_are_scored_for_a_user_but_never_in_the_loop(tmp_path: Path) -> None:
    task = load_task("wordcat")
    test_id = task.test_samples()[0]["id"]
    predictions = write_jsonl(tmp_path / "p.jsonl", [{"id": test_id, "prediction": "fruit"}])
    result = invoke("score", "wordcat", "--predictions", str(predictions), "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["splits"] == {"test": 1}
    with pytest.raises(ValueError, match="held out"):
        task.evaluate([(test_id, "fruit")])


# ---------------------------------------------------------------- list and show


def test_list_marks_toy_as_built_in() -> None:
    result = invoke("list")
    assert result.exit_code == 0
    toy = result.stdout.splitlines()[0]
    assert toy.split()[0] == "toy" and "(built in)" in toy and "proving ground" in toy


def test_show_toy() -> None:
    result = invoke("show", "toy")
    assert result.exit_code == 0 and "proving ground" in result.stdout and "dev 8" in result.stdout


def test_show_lawbench_without_data_shows_what_it_can() -> None:
    result = invoke("show", "lawbench")
    assert result.exit_code == 0, result.output
    assert "reward      categorical, range [0, 1], higher is better" in result.stdout
    assert "data/zero_shot/3-3.json" in result.stdout and "github.com/open-compass/LawBench" in result.stdout
    assert "pass it with --data FILE" in result.stdout and "LawBench task 3-3" in result.stdout


def test_show_unknown_task_is_one_line() -> None:
    assert_user_error(invoke("show", "no-such-task"), "unknown task 'no-such-task'", "wordcat")


def test_show_lawbench_with_a_missing_data_file(tmp_path: Path) -> None:
    assert_user_error(invoke("show", "lawbench", "--data", str(tmp_path / "3-3.json")),
                      "data file", "not found", "3-3.json")


# ---------------------------------------------------------------- score: every user error


def test_score_lawbench_without_data_says_where_the_file_comes_from(tmp_path: Path) -> None:
    predictions = write_jsonl(tmp_path / "p.jsonl", [{"id": "lb-0001", "prediction": "盗窃"}])
    assert_user_error(invoke("score", "lawbench", "--predictions", str(predictions)),
                      "--data", "data/zero_shot/3-3.json", "github.com/open-compass/LawBench")


def test_score_through_the_real_console_script_is_one_line_without_traceback(tmp_path: Path) -> None:
    result = sia(tmp_path / "home", "tasks", "score", "lawbench", "--predictions", "p.jsonl", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "--data" in result.stderr


def test_score_needs_exactly_one_of_predictions_and_answer(tmp_path: Path) -> None:
    assert_user_error(invoke("score", "wordcat"), "exactly one of --predictions FILE", "--answer FILE")
    both = write_jsonl(tmp_path / "p.jsonl", [{"id": "wc-003", "prediction": "animal"}])
    assert_user_error(invoke("score", "wordcat", "--predictions", str(both), "--answer", str(both)),
                      "exactly one of")


def test_score_missing_predictions_file(tmp_path: Path) -> None:
    assert_user_error(invoke("score", "wordcat", "--predictions", str(tmp_path / "absent.jsonl")),
                      "absent.jsonl not found", '{"id": "<sample id>", "prediction": "<answer>"}')


def test_score_bad_json_line(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "wc-003", "prediction": "animal"}\n{"id": \n', encoding="utf-8")
    assert_user_error(invoke("score", "wordcat", "--predictions", str(path)),
                      "line 2: not valid JSON", "each line must be")


def test_score_line_without_id_or_prediction(tmp_path: Path) -> None:
    no_id = write_jsonl(tmp_path / "a.jsonl", [{"prediction": "animal"}])
    assert_user_error(invoke("score", "wordcat", "--predictions", str(no_id)),
                      "line 1: no \"id\" naming a sample of task 'wordcat'")
    no_prediction = write_jsonl(tmp_path / "b.jsonl", [{"id": "wc-003", "answer": "animal"}])
    assert_user_error(invoke("score", "wordcat", "--predictions", str(no_prediction)),
                      "line 1: no \"prediction\" field")
    not_text = write_jsonl(tmp_path / "c.jsonl", [{"id": "wc-003", "prediction": 3}])
    assert_user_error(invoke("score", "wordcat", "--predictions", str(not_text)),
                      "\"prediction\" must be a string or null, got int")
    not_object = write_jsonl(tmp_path / "d.jsonl", [["wc-003", "animal"]])
    assert_user_error(invoke("score", "wordcat", "--predictions", str(not_object)),
                      "line 1: expected a JSON object")


def test_score_unknown_and_duplicate_ids(tmp_path: Path) -> None:
    unknown = write_jsonl(tmp_path / "a.jsonl", [{"id": "wc-003", "prediction": "animal"},
                                                 {"id": "nope", "prediction": "animal"}])
    assert_user_error(invoke("score", "wordcat", "--predictions", str(unknown)),
                      "line 2: task 'wordcat' has no sample 'nope'", "ids look like 'wc-")
    twice = write_jsonl(tmp_path / "b.jsonl", [{"id": "wc-003", "prediction": "animal"},
                                               {"id": "wc-003", "prediction": "fruit"}])
    assert_user_error(invoke("score", "wordcat", "--predictions", str(twice)),
                      "line 2: a second prediction for 'wc-003' (the first is on line 1)")


def test_score_empty_predictions_file(tmp_path: Path) -> None:
    (tmp_path / "p.jsonl").write_text("\n", encoding="utf-8")
    assert_user_error(invoke("score", "wordcat", "--predictions", str(tmp_path / "p.jsonl")),
                      "no predictions")


def test_score_answer_module_for_a_task_answered_per_sample(tmp_path: Path) -> None:
    module = tmp_path / "kernel.py"
    module.write_text("def custom_kernel(x, mask, weights):\n    return x\n", encoding="utf-8")
    assert_user_error(invoke("score", "wordcat", "--answer", str(module)),
                      "answers each sample separately", "--predictions FILE", "denoise, trimul")
    assert_user_error(invoke("score", "trimul", "--answer", str(tmp_path / "absent.py")),
                      "answer file", "not found", "custom_kernel")


def test_score_split_errors(tmp_path: Path) -> None:
    predictions = write_jsonl(tmp_path / "p.jsonl", [{"id": "wc-003", "prediction": "animal"}])
    assert_user_error(invoke("score", "wordcat", "--predictions", str(predictions), "--split", "dev"),
                      "--split applies to --answer only")
    module = tmp_path / "kernel.py"
    module.write_text("def custom_kernel(x, mask, weights):\n    return x\n", encoding="utf-8")
    assert_user_error(invoke("score", "trimul", "--answer", str(module), "--split", "validation"),
                      "--split 'validation' is not a split", "train, dev, test, all")


def test_score_toy_says_it_scores_nothing(tmp_path: Path) -> None:
    predictions = write_jsonl(tmp_path / "p.jsonl", [{"id": "toy-00", "prediction": "x"}])
    assert_user_error(invoke("score", "toy", "--predictions", str(predictions)),
                      "toy is the runtime's proving ground", "scores no predictions")


def test_score_lawbench_published_format_maps_index_to_ids(tmp_path: Path) -> None:
    cases = [{"instruction": "给出罪名", "question": f"事实:案件{i}",
              "answer": "罪名:" + ("盗窃" if i % 2 else "诈骗")} for i in range(10)]
    data = tmp_path / "3-3.json"
    data.write_text(json.dumps(cases, ensure_ascii=False), encoding="utf-8")
    rows = [{"index": i, "prediction": "[罪名]盗窃<eoa>", "refr": c["answer"]} for i, c in enumerate(cases)]
    predictions = write_jsonl(tmp_path / "p.jsonl", rows)
    runner_env = {"SIA_TASK_CACHE": str(tmp_path / "cache")}
    result = runner.invoke(app, ["score", "lawbench", "--data", str(data), "--predictions", str(predictions),
                                 "--json"], env=runner_env)
    assert result.exit_code == 0, result.output
    scored = json.loads(result.stdout)
    assert scored["n"] == 10 and scored["score"] == 0.5
    assert [s["id"] for s in scored["samples"]] == [f"lb-{i + 1:04d}" for i in range(10)]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"index": 10, "prediction": "盗窃"}])
    assert_user_error(runner.invoke(app, ["score", "lawbench", "--data", str(data), "--predictions", str(bad)],
                                    env=runner_env),
                      "line 1: task 'lawbench' has no sample 'lb-0011'", "same data file")


# ---------------------------------------------------------------- trimul --answer

MEMO_KERNEL = reference_kernel_source().replace("custom_kernel = _outgoing", '''
_CACHE = {}


def custom_kernel(x, mask, weights):
    key = (tuple(x.shape), float(x.sum()), float(mask.sum()), float(weights["to_out.weight"].sum()))
    if key not in _CACHE:
        _CACHE[key] = _outgoing(x, mask, weights)
    return _CACHE[key]
''')
"""The reference's own computation, memoised by a fingerprint of its inputs."""


@pytest.mark.slow
@pytest.mark.measures_time
def test_a_memoising_trimul_answer_scores_no_better_than_the_reference_through_the_cli(tmp_path: Path) -> None:
    module = tmp_path / "kernel.py"
    module.write_text(MEMO_KERNEL, encoding="utf-8")
    result = sia(tmp_path / "home", "tasks", "score", "trimul", "--answer", str(module), "--split", "dev",
                 "--json", timeout=300)
    scored = json.loads(result.stdout)
    assert scored["n"] == 2 and scored["splits"] == {"dev": 2}
    assert all(sample["reward"] < 1.5 for sample in scored["samples"]), scored["samples"]


def test_run_lawbench_without_data_is_one_line_naming_the_source(tmp_path: Path) -> None:
    result = sia(tmp_path / "home", "run", "--task", "lawbench", "--quiet", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--data FILE" in lines[0]
    assert "data/zero_shot/3-3.json" in lines[0] and "github.com/open-compass/LawBench" in lines[0]


def test_show_and_score_a_malformed_lawbench_file(tmp_path: Path) -> None:
    bad = tmp_path / "3-3.json"
    bad.write_text(json.dumps([{"instruction": "x", "question": "y", "answer": "盗窃"}]), encoding="utf-8")
    env = {"SIA_TASK_CACHE": str(tmp_path / "cache")}
    assert_user_error(runner.invoke(app, ["show", "lawbench", "--data", str(bad)], env=env),
                      "building the task from", "does not start with '罪名:'")
    predictions = write_jsonl(tmp_path / "p.jsonl", [{"id": "lb-0001", "prediction": "盗窃"}])
    assert_user_error(runner.invoke(app, ["score", "lawbench", "--data", str(bad), "--predictions",
                                          str(predictions)], env=env), "does not start with '罪名:'")


def test_validate_toy_is_ok() -> None:
    result = invoke("validate", "toy")
    assert result.exit_code == 0 and result.stdout.startswith("ok")
