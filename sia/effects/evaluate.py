"""Evaluation: a generation's answers scored by the task's evaluator, the only code that
reads labels; what leaves it is rewards, counts and aggregate metrics.

`Task.evaluate` is the one scoring path: `sia tasks score` (predictions made outside the
loop) calls it too, so its figures are the ones a run would record."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sia.core.effect_models import EvaluateRequest, EvaluateResult
from sia.effects.base import EffectContext, EffectResult
from sia.harness.sandbox import Isolation

if TYPE_CHECKING:
    from sia.tasks.loader import Task


class EvaluateHandler:
    """Dev answers first (they make the score), then the rollouts (rewards only)."""

    kind = "evaluate"

    def __init__(self, task: Task, *, isolation: Isolation = "bwrap") -> None:
        self.task, self.isolation = task, isolation

    def run(self, request: EvaluateRequest, ctx: EffectContext) -> EffectResult:
        # imported here, not at start-up: most tasks have no code answers
        from sia.tasks.code_answers import answers_isolated_by

        with answers_isolated_by(self.isolation):  # where code answers (trimul, denoise) run
            result = self.task.evaluate(list(request.predictions), scored=len(self.task.ids("dev")))
        result.pop("failure_kinds", None)
        return EffectResult(EvaluateResult.model_validate(result))
