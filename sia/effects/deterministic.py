"""Deterministic handlers: a whole loop with no model, for proving the runtime.

Every result is a pure function of the request (and of blobs the request names), so two
runs with the same recorded history agree byte for byte. The simulated agent gets
better with each harness edit (`STRENGTH` in the harness text) and each adapter
(`level`), so decisions have visible outcomes. Costs are simulated constants, never
measured, so the ledger is deterministic too. `SIA_EFFECT_COUNTER=FILE` appends one
line per finished execution, which crash tests use to prove no effect ran twice.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from sia.core.config import dollars
from sia.core.effect_models import (
    EpisodeRequest,
    EpisodeResult,
    EvaluateRequest,
    EvaluateResult,
    FeedbackRequest,
    FeedbackResult,
    MetaRequest,
    MetaResult,
    TrainRequest,
    TrainResult,
)
from sia.core.events.canonical import canonical_json, content_hash
from sia.core.events.types import Action, Candidate, TrainingJobSubmitted, TrainingPlan, Usage
from sia.effects.base import EffectContext, EffectResult, HandlerRegistry
from sia.tasks.toy import TOY_DEV_IDS, toy_task

__all__ = ["TOY_DEV_IDS", "deterministic_registry", "toy_task"]


def _count(ctx: EffectContext) -> None:
    path = os.environ.get("SIA_EFFECT_COUNTER")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{ctx.effect_id} {ctx.kind}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)


def _unit(seed: int, *salt: Any) -> float:
    return int(content_hash([seed, *salt])[:8], 16) / 0xFFFFFFFF


def _strength(source: str) -> int:
    match = re.search(r"STRENGTH = (\d+)", source)
    return int(match.group(1)) if match else 0


def _harness(strength: int) -> str:
    return f'"""Deterministic harness."""\nSTRENGTH = {strength}\n\n\ndef solve(sample, model):\n    return model.complete(sample["question"])\n'


class DeterministicMeta:
    kind = "meta"

    def run(self, request: MetaRequest, ctx: EffectContext) -> EffectResult:
        sha = ctx.blobs.put_text(_harness(1))
        _count(ctx)
        return EffectResult(MetaResult(harness_hash=sha, valid=True),
                            Usage(tokens_in=120, tokens_out=80, wall_s=2.0))


class DeterministicEpisode:
    kind = "episode"

    def run(self, request: EpisodeRequest, ctx: EffectContext) -> EffectResult:
        strength = _strength(ctx.blobs.get_text(request.harness_hash))
        level = 0
        if request.adapter_hash:
            level = json.loads(ctx.blobs.get_text(request.adapter_hash))["level"]
        p_right = min(0.95, 0.2 + 0.15 * strength + 0.2 * level)
        prediction = "right" if _unit(ctx.seed, "answer") < p_right else "wrong"
        trajectory = {"sample_id": request.sample_id, "calls": [
            {"prompt": f"question {request.sample_id}", "completion": prediction}]}
        sha = ctx.blobs.put_text(canonical_json(trajectory))
        _count(ctx)
        return EffectResult(EpisodeResult(status="ok", prediction=prediction, trajectory_hash=sha),
                            Usage(tokens_in=30, tokens_out=2, wall_s=0.5))


class DeterministicEvaluate:
    kind = "evaluate"

    def run(self, request: EvaluateRequest, ctx: EffectContext) -> EffectResult:
        rewards = tuple(1.0 if p == "right" else 0.0 for _, p in request.predictions)
        answered = sum(1 for _, p in request.predictions if p is not None)
        _count(ctx)
        return EffectResult(EvaluateResult(score=sum(rewards) / len(rewards), rewards=rewards,
                                           n=len(rewards), n_answered=answered),
                            Usage(wall_s=0.1))


class DeterministicFeedback:
    """Alternates harness edits and weight updates; rolls back after a regression."""

    kind = "feedback"

    def run(self, request: FeedbackRequest, ctx: EffectContext) -> EffectResult:
        if request.candidates:
            return self._candidates(request, ctx)
        history, best = request.history, request.best_generation
        scores = [entry.score or 0.0 for entry in history]
        rollback = best if best is not None and scores[-1] < scores[best] else None
        action, algorithm = self._choose(request)
        harness_hash = plan = None
        if action == "edit_harness":
            assert request.harness_hash is not None
            source = ctx.blobs.get_text(request.harness_hash)
            harness_hash = ctx.blobs.put_text(_harness(_strength(source) + 1))
        elif action == "update_weights":
            plan = TrainingPlan(algorithm=algorithm, params={"lr": 1e-4})
        episodes = [e.model_dump(mode="json") for e in request.episodes]
        _count(ctx)
        return EffectResult(
            FeedbackResult(action=action, provider="deterministic", forced=request.force is not None,
                           rationale=f"generation {request.generation} scored {scores[-1]:.2f}",
                           evidence=tuple(e.episode_id for e in request.episodes[:3]),
                           digest_hash=content_hash(episodes), digest_summary=f"{len(episodes)} episodes",
                           rollback_to=rollback, harness_hash=harness_hash, plan=plan),
            Usage(tokens_in=850, tokens_out=150, dollars=dollars("deterministic", 850, 150), wall_s=3.0))

    @staticmethod
    def _candidates(request: FeedbackRequest, ctx: EffectContext) -> EffectResult:
        """Harness edits of growing strength beyond any tried, and (mode WH) weight updates."""
        assert request.harness_hash is not None and request.candidates is not None
        strength = _strength(ctx.blobs.get_text(request.harness_hash))
        tried = {t.harness_hash for t in request.tried}
        candidates: list[Candidate] = []
        step = 1
        while len(candidates) < request.candidates:
            if request.mode == "WH" and len(candidates) % 2 == 1:
                algorithm = ("grpo", "best_of_n", "entropic", "reinforce_kl")[(len(candidates) // 2) % 4]
                candidates.append(Candidate(action="update_weights", rationale=f"train with {algorithm}",
                                            plan=TrainingPlan(algorithm=algorithm, params={"lr": 1e-4})))
                continue
            sha = ctx.blobs.put_text(_harness(strength + step))
            step += 1
            if sha not in tried:
                candidates.append(Candidate(action="edit_harness", harness_hash=sha,
                                            rationale=f"harness strength {strength + step - 1}"))
        _count(ctx)
        return EffectResult(
            FeedbackResult(action=candidates[0].action, provider="deterministic", candidates=tuple(candidates),
                           rationale=f"{len(candidates)} candidates", digest_summary=f"round {request.round}"),
            Usage(tokens_in=850, tokens_out=150, dollars=dollars("deterministic", 850, 150), wall_s=3.0))

    @staticmethod
    def _choose(request: FeedbackRequest) -> tuple[Action, Any]:
        recommended = request.reward_shape.recommended
        if request.force is not None:
            return request.force.action, request.force.algorithm or recommended
        if request.mode == "H" or request.generation % 2 == 0:
            return "edit_harness", recommended
        return "update_weights", recommended


class DeterministicTrain:
    kind = "train"

    def run(self, request: TrainRequest, ctx: EffectContext) -> EffectResult:
        job_id = content_hash({k: v for k, v in request.record().items() if k != "generation"})
        if ctx.call_id is None:
            ctx.report(TrainingJobSubmitted(effect_id=ctx.effect_id, job_id=job_id,
                                            backend="deterministic", call_id=f"det-{job_id[:12]}"))
        level = 0
        if request.initial_adapter_hash:
            level = json.loads(ctx.blobs.get_text(request.initial_adapter_hash))["level"]
        adapter = canonical_json({"level": level + 1, "algorithm": request.algorithm,
                                  "job_id": job_id})
        sha = ctx.blobs.put_text(adapter)
        _count(ctx)
        return EffectResult(TrainResult(job_id=job_id, adapter_hash=sha,
                                        config_hash=content_hash({"r": 32}), algorithm=request.algorithm,
                                        metrics={"loss": round(1.0 / (level + 2), 6)}),
                            Usage(gpu_s=12.0, wall_s=15.0))


def deterministic_registry() -> HandlerRegistry:
    return HandlerRegistry(
        {h.kind: h for h in (DeterministicMeta(), DeterministicEpisode(), DeterministicEvaluate(),
                             DeterministicFeedback(), DeterministicTrain())},
        name="deterministic",
    )
