"""`sia tasks ...`: list the bundled tasks, show one, validate a task folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from sia.tasks.loader import (
    BUNDLED_ROOT,
    TaskError,
    bundled_task_names,
    load_task,
    read_spec,
    validate_task,
)

app = typer.Typer(help="Tasks: list the bundled ones, show one, validate a task folder.",
                  no_args_is_help=True, add_completion=False)

DataOption = Annotated[Optional[Path], typer.Option("--data", help="The user data file a task is built from.")]


def _first_line(text: str, width: int = 90) -> str:
    line = " ".join(text.split())
    sentence = line.split(". ")[0].rstrip(".") + "."
    return sentence if len(sentence) <= width else sentence[: width - 1] + "…"


@app.command("list")
def list_tasks() -> None:
    """The bundled tasks: name, reward kind, split sizes and what each is."""
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


@app.command("show")
def show(task: Annotated[str, typer.Argument(help="A bundled task name or a task folder.")],
         data: DataOption = None,
         samples: Annotated[int, typer.Option("--samples", "-n", help="Public samples to print.")] = 3) -> None:
    """A task's spec, split sizes, a few public (train) samples and its reference harness status."""
    try:
        loaded = load_task(task, data=data)
    except TaskError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(1) from None
    spec = loaded.spec
    typer.echo(f"task        {spec.name}  (from {loaded.source})")
    if loaded.data is not None:
        typer.echo(f"data        {loaded.data}")
    typer.echo(f"hash        {loaded.task_hash}")
    low, high = spec.reward.range
    better = "higher" if spec.reward.higher_is_better else "lower"
    typer.echo(f"reward      {spec.reward.kind}, range [{low:g}, {high:g}], {better} is better")
    typer.echo("splits      " + ", ".join(f"{k} {v}" for k, v in loaded.split_sizes().items()))
    typer.echo(f"rollouts    {loaded.snapshot().rollouts_per_generation} train samples per generation")
    typer.echo(f"limits      wall {spec.limits.wall_s:g} s, cpu {spec.limits.cpu_s} s, "
               f"memory {spec.limits.memory_mb} MB per episode")
    has_reference = loaded.reference_harness() is not None
    typer.echo(f"reference   {'reference_harness.py' if has_reference else 'no reference harness'}")
    typer.echo("description")
    typer.echo("  " + " ".join(spec.description.split()))
    typer.echo("public samples (train)")
    for sample in loaded.samples("train")[:max(0, samples)]:
        shown = {k: (v if not isinstance(v, str) or len(v) <= 200 else v[:200] + "…")
                 for k, v in sample.items()}
        if isinstance(shown.get("options"), list) and len(shown["options"]) > 12:
            shown["options"] = [*shown["options"][:12], f"… {len(sample['options']) - 12} more"]
        typer.echo("  " + json.dumps(shown, ensure_ascii=False))


@app.command("validate")
def validate(path: Annotated[str, typer.Argument(help="A task folder (or a bundled task name).")],
             data: DataOption = None) -> None:
    """Check a task folder: prints "ok", or every problem found (exit status 1)."""
    problems = validate_task(path, data=data)
    if not problems:
        typer.echo("ok")
        return
    typer.echo(f"{path}: {len(problems)} problem{'s' if len(problems) != 1 else ''}")
    for problem in problems:
        typer.echo(f"  - {problem}")
    raise typer.Exit(1)
