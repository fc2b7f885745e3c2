"""The evaluate effect: score a generation's predictions with the task's own evaluator.

Dev labels live in the task folder and are read only here; the result carries rewards
and aggregates, never a label.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sia.effects.base import EffectContext, EffectError, EffectResult


class EvaluateHandler:
    kind = "evaluate"

    def __init__(self, task_loader: Callable[[dict[str, Any]], Any]) -> None:
        self.task_loader = task_loader

    def run(self, request: dict[str, Any], ctx: EffectContext) -> EffectResult:
        task = self.task_loader(request)
        predictions = [(sample_id, prediction) for sample_id, prediction in request["predictions"]]
        try:
            report = task.evaluate(predictions)
        except Exception as exc:
            raise EffectError(f"the task's evaluator failed: {type(exc).__name__}: {exc}") from exc
        rewards = [float(r) for r in report["rewards"]]
        statuses: dict[str, int] = {}
        for (_, prediction), reward in zip(predictions, rewards):
            kind = "unanswered" if not prediction else ("correct" if reward > 0 else "wrong")
            statuses[kind] = statuses.get(kind, 0) + 1
        return EffectResult({"score": float(report["score"]), "rewards": rewards,
                             "n": int(report["n"]), "n_answered": int(report["n_answered"]),
                             "failures": statuses})
