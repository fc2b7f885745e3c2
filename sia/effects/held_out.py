"""The final answer's held-out test score: measured once, at the end of a run.

The only handler that runs a harness on test samples. It plays the harness on each of
them in the sandbox, exactly as an episode does, and scores the answers with the task's
`evaluate_test`, so what leaves it is aggregates only: no test answer, trajectory or
label is recorded, and nothing that chooses (an agent, a digest) ever sees one.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from sia.core.effect_models import TestRequest, TestResult
from sia.core.events.canonical import content_hash
from sia.core.events.types import Usage
from sia.effects.base import EffectContext, EffectResult
from sia.effects.episode import play, sandbox_limits, target_usage
from sia.effects.targets import TargetPool
from sia.harness.sandbox import Isolation

if TYPE_CHECKING:
    from sia.tasks.loader import Task


class HeldOutTestHandler:
    kind = "test"

    def __init__(self, task: Task, targets: TargetPool, *, isolation: Isolation, workers: int = 4) -> None:
        self.task, self.targets, self.isolation, self.workers = task, targets, isolation, workers
        self.limits = sandbox_limits(task)

    def run(self, request: TestRequest, ctx: EffectContext) -> EffectResult:
        source = ctx.blobs.get_text(request.harness_hash)

        def answer(sample: dict[str, Any]) -> tuple[str | None, Usage]:
            seed = int(content_hash({"seed": ctx.seed, "sample": sample["id"]})[:12], 16)
            outcome, calls = play(source, sample, episode_id=f"{ctx.effect_id}-{sample['id']}", seed=seed,
                                  adapter_hash=request.adapter_hash, targets=self.targets, blobs=ctx.blobs,
                                  limits=self.limits, isolation=self.isolation, task=self.task)
            return (outcome.answer if outcome.status == "ok" else None), target_usage(calls, outcome.wall_s)

        # imported here, not at start-up: most tasks have no code answers
        from sia.tasks.code_answers import answers_isolated_by

        samples = self.task.test_samples()
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="sia-test") as pool:
            answers = list(pool.map(answer, samples))
        with answers_isolated_by(self.isolation):
            scored = self.task.evaluate_test([(s["id"], text) for s, (text, _) in zip(samples, answers)])
        return EffectResult(TestResult(score=scored["score"], n=scored["n"], n_answered=scored["n_answered"],
                                       metrics=scored.get("metrics") or {}),
                            Usage(tokens_in=sum(u.tokens_in for _, u in answers),
                                  tokens_out=sum(u.tokens_out for _, u in answers)))
