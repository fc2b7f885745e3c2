"""Resolving `--task NAME|PATH` to what a run records about its task.

`toy` is the runtime's own proving ground (deterministic handlers, no model); every
other name is a bundled task folder or a path to the user's own (see `sia.tasks.format`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sia.core.events.types import TaskIdentity


class UnknownTask(ValueError):
    pass


@dataclass(frozen=True)
class ResolvedTask:
    identity: TaskIdentity
    defaults: dict[str, str] = field(default_factory=dict)
    """Config settings this task needs unless the user overrides them."""


TOY = "toy"
TOY_DESCRIPTION = (
    "The runtime's proving ground: a whole loop with deterministic handlers and a simulated "
    "agent that improves with each harness edit and adapter, no model and no task folder. "
    "It proves resume, fork, replay and crash safety; it scores no predictions."
)

DETERMINISTIC = {"meta": "deterministic", "feedback": "deterministic",
                 "target": "deterministic", "trainer": "deterministic"}


def resolve_task(name: str, data: Path | None = None, cache: Path | None = None) -> ResolvedTask:
    if name == TOY:
        from sia.tasks.toy import toy_task

        return ResolvedTask(toy_task(), dict(DETERMINISTIC))
    from sia.tasks.loader import TaskError, load_task

    try:
        return ResolvedTask(load_task(name, data=data, cache=cache).identity())
    except TaskError as exc:  # one line: the CLI prints it as its error
        raise UnknownTask("; ".join(" ".join(p.split()) for p in exc.problems)) from None


def task_names() -> list[str]:
    from sia.tasks.loader import bundled_task_names

    return [TOY, *bundled_task_names()]
