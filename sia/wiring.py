"""Which effect handlers serve a run, chosen from its recorded config and task snapshot,
so `resume`, `fork` and `replay` use the same backends and the same task it started with."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from sia.effects.base import EffectError, HandlerRegistry
from sia.events.types import RunConfig, TaskSnapshot


class BackendUnavailable(ValueError):
    pass


def handlers_for(config: RunConfig, task: TaskSnapshot | None = None) -> HandlerRegistry:
    roles = {config.meta, config.feedback, config.target, config.trainer}
    if roles == {"deterministic"}:
        from sia.effects.deterministic import deterministic_registry

        return deterministic_registry()
    if task is None:
        raise BackendUnavailable("real handlers need the run's task snapshot")
    return _real_handlers(config, task)


def task_loader_for(snapshot: TaskSnapshot) -> Any:
    """Load the run's task once; refuse if its files changed since the run started."""

    @lru_cache(maxsize=1)
    def load() -> Any:
        from sia.tasks.loader import load_task

        data = None if snapshot.data is None else Path(snapshot.data)
        task = load_task(snapshot.source or snapshot.name, data=data)
        if task.task_hash != snapshot.task_hash:
            raise EffectError(f"task {snapshot.name} changed on disk since the run started "
                              f"(hash {task.task_hash[:12]} != recorded {snapshot.task_hash[:12]})")
        return task

    return lambda request=None: load()


def _real_handlers(config: RunConfig, snapshot: TaskSnapshot) -> HandlerRegistry:
    from sia.effects.evaluate import EvaluateHandler

    load = task_loader_for(snapshot)
    registry = HandlerRegistry(name="default")
    registry.register(EvaluateHandler(load))
    return registry
