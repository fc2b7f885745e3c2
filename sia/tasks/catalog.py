"""Resolving `--task NAME` to what a run records about its task and how it is served."""

from __future__ import annotations

from dataclasses import dataclass, field

from sia.events.types import TaskSnapshot


class UnknownTask(ValueError):
    pass


@dataclass(frozen=True)
class ResolvedTask:
    snapshot: TaskSnapshot
    defaults: dict[str, str] = field(default_factory=dict)
    """Config settings this task needs unless the user overrides them."""


DETERMINISTIC = {"meta": "deterministic", "feedback": "deterministic",
                 "target": "deterministic", "trainer": "deterministic"}


def resolve_task(name: str) -> ResolvedTask:
    if name == "toy":
        from sia.effects.deterministic import toy_task

        return ResolvedTask(toy_task(), dict(DETERMINISTIC))
    raise UnknownTask(f"unknown task {name!r}; available: toy")


def task_names() -> list[str]:
    return ["toy"]
