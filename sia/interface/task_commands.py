"""`sia tasks ...`: list the tasks, show one, validate a task folder, score predictions made elsewhere.

Every user error is one line on stderr ("error: ...", naming what was wrong and what would be
right) and exit status 1, never a traceback. `score` goes through `Task.evaluate`, the method
the loop's evaluate handler calls, so a score printed here is the score the loop would record.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, Optional

import typer

from sia.tasks.catalog import TOY, TOY_DESCRIPTION, resolve_task
from sia.tasks.format import TaskSpec
from sia.tasks.loader import (
    BUNDLED_ROOT,
    Task,
    TaskError,
    bundled_task_names,
    load_task,
    read_spec,
    task_spec,
    validate_task,
)

if TYPE_CHECKING:
    from sia.harness.sandbox import Isolation

app = typer.Typer(help="Tasks: list them, show one, validate a task folder, score predictions.",
                  no_args_is_help=True, add_completion=False)

DataOption = Annotated[Optional[Path], typer.Option("--data", help="The user data file a task is built from.")]
SPLIT_CHOICES = ("train", "dev", "test", "all")


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def _one_line(error: TaskError) -> str:
    return "; ".join(" ".join(problem.split()) for problem in error.problems)


def _first_line(text: str, width: int = 90) -> str:
    line = " ".join(text.split())
    sentence = line.split(". ")[0].rstrip(".") + "."
    return sentence if len(sentence) <= width else sentence[: width - 1] + "…"


def _toy_dev_size() -> int:
    return len(resolve_task(TOY).identity.dev_ids)


@app.command("list")
def list_tasks() -> None:
    """Every task `sia run --task` takes: name, reward kind, split sizes and what each is."""
    typer.echo(f"{TOY:<10} {'binary':<11} {f'dev={_toy_dev_size()}':<26} "
               "(built in) the runtime's proving ground: deterministic, no model.")
    for name in bundled_task_names():
        problems: list[str] = []
        spec = read_spec(BUNDLED_ROOT / name, problems)
        if spec is None:
            typer.echo(f"{name:<10} (broken: {problems[0]})")
            continue
        if spec.data.required:
            sizes = "built from --data"
        else:
            sizes = " ".join(f"{k}={v}" for k, v in spec.splits.model_dump().items() if v is not None)
        typer.echo(f"{name:<10} {spec.reward.kind:<11} {sizes:<26} {_first_line(spec.description)}")


def _show_toy() -> None:
    typer.echo(f"task        {TOY}  (built into the runtime; not a task folder)")
    typer.echo("reward      binary, range [0, 1], higher is better")
    typer.echo(f"splits      dev {_toy_dev_size()}")
    typer.echo("handlers    deterministic meta, feedback, target and trainer (no model, no network)")
    typer.echo("description")
    typer.echo("  " + TOY_DESCRIPTION)


def _echo_spec(spec: TaskSpec) -> None:
    low, high = spec.reward.range
    better = "higher" if spec.reward.higher_is_better else "lower"
    typer.echo(f"reward      {spec.reward.kind}, range [{low:g}, {high:g}], {better} is better")


def _echo_limits(spec: TaskSpec) -> None:
    typer.echo(f"limits      wall {spec.limits.wall_s:g} s, cpu {spec.limits.cpu_s} s, "
               f"memory {spec.limits.memory_mb} MB per episode")


def _echo_description(spec: TaskSpec) -> None:
    typer.echo("description")
    typer.echo("  " + " ".join(spec.description.split()))


def _show_without_data(name: str, source: str, spec: TaskSpec) -> None:
    """What can be said of a task built from a data file before the user gives one."""
    typer.echo(f"task        {spec.name}  (from {source})")
    _echo_spec(spec)
    what = spec.data.description or "a data file"
    typer.echo(f"data        built from {what}; pass it with --data FILE")
    _echo_limits(spec)
    _echo_description(spec)
    typer.echo(f"(splits and samples: sia tasks show {name} --data FILE)")


@app.command("show")
def show(task: Annotated[str, typer.Argument(help="A task name (sia tasks list) or a task folder.")],
         data: DataOption = None,
         samples: Annotated[int, typer.Option("--samples", "-n", help="Public samples to print.")] = 3) -> None:
    """A task's spec, split sizes, a few public (train) samples and its reference harness status."""
    if task == TOY:
        _show_toy()
        return
    try:
        root, spec = task_spec(task)
    except TaskError as error:
        _fail(_one_line(error))
    if spec.data.required and data is None:
        _show_without_data(task, str(root) if task not in bundled_task_names() else task, spec)
        return
    try:
        loaded = load_task(task, data=data)
    except TaskError as error:
        _fail(_one_line(error))
    typer.echo(f"task        {spec.name}  (from {loaded.source})")
    if loaded.data is not None:
        typer.echo(f"data        {loaded.data}")
    typer.echo(f"hash        {loaded.task_hash}")
    _echo_spec(spec)
    typer.echo("splits      " + ", ".join(f"{k} {v}" for k, v in loaded.split_sizes().items()))
    typer.echo(f"rollouts    {loaded.identity().rollouts_per_generation} train samples per generation")
    _echo_limits(spec)
    has_reference = loaded.reference_harness() is not None
    typer.echo(f"reference   {'reference_harness.py' if has_reference else 'no reference harness'}")
    _echo_description(spec)
    typer.echo("public samples (train)")
    for sample in loaded.samples("train")[:max(0, samples)]:
        shown = {k: (v if not isinstance(v, str) or len(v) <= 200 else v[:200] + "…")
                 for k, v in sample.items()}
        if isinstance(shown.get("options"), list) and len(shown["options"]) > 12:
            shown["options"] = [*shown["options"][:12], f"… {len(sample['options']) - 12} more"]
        typer.echo("  " + json.dumps(shown, ensure_ascii=False))


@app.command("validate")
def validate(path: Annotated[str, typer.Argument(help="A task folder (or a task name).")],
             data: DataOption = None) -> None:
    """Check a task folder: prints "ok", or every problem found (exit status 1)."""
    if path == TOY:
        typer.echo(f"ok ({TOY} is built into the runtime; there is no folder to check)")
        return
    problems = validate_task(path, data=data)
    if not problems:
        typer.echo("ok")
        return
    typer.echo(f"{path}: {len(problems)} problem{'s' if len(problems) != 1 else ''}")
    for problem in problems:
        typer.echo(f"  - {problem}")
    raise typer.Exit(1)


# ---------------------------------------------------------------- score


def _answer_predictions(loaded: Task, answer: Path, split: str) -> list[tuple[str, str | None]]:
    """The one answer module as the prediction of every sample of `split` ("all": every split)."""
    from sia.tasks.code_answers import FUNCTION_OF

    if loaded.name not in FUNCTION_OF:
        _fail(f"task {loaded.name!r} answers each sample separately: give --predictions FILE "
              f"(JSONL, one {{\"id\", \"prediction\"}} per line), not --answer; --answer takes a "
              f"module for the code tasks ({', '.join(sorted(FUNCTION_OF))})")
    if not answer.is_file():
        _fail(f"answer file {answer} not found (--answer takes a Python module defining "
              f"{FUNCTION_OF[loaded.name]}(...))")
    try:
        source = answer.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        _fail(f"answer file {answer} is not UTF-8 text ({error.reason})")
    ids = [i for i in loaded.sample_ids() if split == "all" or loaded.split_of(i) == split]
    return [(sample_id, source) for sample_id in ids]


def _file_predictions(loaded: Task, predictions: Path) -> list[tuple[str, str | None]]:
    from sia.tasks.predictions import PredictionFileError, read_predictions

    try:
        return read_predictions(predictions, loaded.prediction_id, loaded.sample_ids(), loaded.name)
    except PredictionFileError as error:
        _fail(str(error))


def scored_summary(loaded: Task, pairs: list[tuple[str, str | None]], result: dict[str, Any]) -> dict[str, Any]:
    """What `sia tasks score --json` prints: the evaluator's aggregates and every sample's reward."""
    return {
        "task": loaded.name,
        "task_hash": loaded.task_hash,
        "score": result["score"],
        "n": result["n"],
        "n_answered": result["n_answered"],
        "failures": result["failures"],
        "metrics": result["metrics"],
        "splits": dict(sorted(Counter(loaded.split_of(i) for i, _ in pairs).items())),
        "samples": [{"id": sample_id, "reward": reward, "failure": failure}
                    for (sample_id, _), reward, failure in zip(pairs, result["rewards"],
                                                                result["failure_kinds"])],
    }


def _choose_answer_sandbox(loaded: Task, sandbox: str) -> Isolation:
    """Where this command's code answers run, refusing up front when bwrap is unusable."""
    from sia.harness.bwrap import SandboxUnavailable, require_bwrap
    from sia.harness.sandbox import ISOLATIONS
    from sia.tasks.code_answers import FUNCTION_OF

    if sandbox not in ISOLATIONS:
        _fail(f"--sandbox {sandbox!r} is not a sandbox; use one of {', '.join(ISOLATIONS)}")
    if sandbox == "bwrap" and loaded.name in FUNCTION_OF:
        try:
            require_bwrap()
        except SandboxUnavailable as error:
            _fail(str(error))
    return sandbox  # type: ignore[return-value]


@app.command("score")
def score(task: Annotated[str, typer.Argument(help="A task name (sia tasks list) or a task folder.")],
          data: DataOption = None,
          predictions: Annotated[Optional[Path], typer.Option(
              "--predictions", help='JSONL, one {"id", "prediction"} per line (lawbench also takes '
                                    "LawBench's published {\"index\", \"prediction\", \"refr\"} lines).")] = None,
          answer: Annotated[Optional[Path], typer.Option(
              "--answer", help="For tasks whose answer is a module (trimul, denoise): the module, "
                               "scored on every sample of --split.")] = None,
          split: Annotated[Optional[str], typer.Option(
              "--split", help="With --answer: train, dev, test or all (default all).")] = None,
          sandbox: Annotated[str, typer.Option(
              "--sandbox", help="Where code answers (trimul, denoise) run: bwrap (default, the OS "
                                "sandbox) or process (weaker; an answer can forge its score).")] = "bwrap",
          as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False) -> None:
    """Score predictions made elsewhere with the task's own evaluator (the loop's scoring path)."""
    if task == TOY:
        _fail(f"{TOY} is the runtime's proving ground: it has no evaluator and scores no predictions; "
              f"score a task folder or one of: {', '.join(bundled_task_names())}")
    if (predictions is None) == (answer is None):
        _fail("give exactly one of --predictions FILE (JSONL, one {\"id\", \"prediction\"} per line) "
              "or --answer FILE (a module, for trimul and denoise)")
    if split is not None and answer is None:
        _fail("--split applies to --answer only; --predictions scores exactly the ids in the file")
    if split is not None and split not in SPLIT_CHOICES:
        _fail(f"--split {split!r} is not a split; use one of {', '.join(SPLIT_CHOICES)}")
    try:
        loaded = load_task(task, data=data)
    except TaskError as error:
        _fail(_one_line(error))
    from sia.tasks.code_answers import answers_isolated_by

    isolation = _choose_answer_sandbox(loaded, sandbox)
    pairs = (_answer_predictions(loaded, answer, split or "all") if answer is not None
             else _file_predictions(loaded, predictions))  # type: ignore[arg-type]
    try:
        with answers_isolated_by(isolation):
            result = loaded.evaluate(pairs, held_out=True)
    except TaskError as error:
        _fail(_one_line(error))
    summary = scored_summary(loaded, pairs, result)
    if as_json:
        typer.echo(json.dumps(summary, ensure_ascii=False, indent=1))
        return
    spec = loaded.spec
    splits = ", ".join(f"{name} {count}" for name, count in summary["splits"].items())
    typer.echo(f"task        {loaded.name}  ({summary['n']} predictions: {splits})")
    low, high = spec.reward.range
    typer.echo(f"score       {summary['score']:.6f}  (mean reward; {spec.reward.kind}, "
               f"range [{low:g}, {high:g}])")
    typer.echo(f"answered    {summary['n_answered']} of {summary['n']}")
    failures = ", ".join(f"{kind} {count}" for kind, count in summary["failures"].items()) or "none"
    typer.echo(f"failures    {failures}")
    for name, value in summary["metrics"].items():
        typer.echo(f"{name:<11} {value:.6f}")
