"""The toy task's identity: the runtime's proving ground, run by the deterministic handlers of
`sia.effects.deterministic` (no model, no sandbox). It lives with the tasks so the task
catalog never has to import the effect layer."""

from __future__ import annotations

from sia.core.events.canonical import content_hash
from sia.core.events.types import TaskIdentity

TOY_DEV_IDS = tuple(f"toy-{i:02d}" for i in range(8))


def toy_task() -> TaskIdentity:
    return TaskIdentity(name="toy", task_hash=content_hash("sia toy task v1"),
                        dev_ids=TOY_DEV_IDS, reward_kind="binary")
