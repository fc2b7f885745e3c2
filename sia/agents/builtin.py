"""The built-in Meta and Feedback policy: deterministic rules, no LLM, no network.

It is the offline default and is named as such everywhere (provider "builtin"). Meta
returns the task's reference harness, or the template harness. Feedback reads the dev
episodes and applies rules, in order:

1. a forced decision (a fork's `feedback.force`) is obeyed;
2. after a regression, roll back to the best generation and decide from there;
3. many unparseable answers or crashes → edit the harness: a prompt that lists the
   options and cues the answer, option extraction, a majority vote over several
   samples, a fallback answer;
4. in mode WH, once answers parse, update the weights with the algorithm the reward
   shape recommends, and keep doing so while it helps — unless the shape says there is
   no learning signal, or that update already had none in this generation;
5. otherwise turn the next harness knob (more votes, lower temperature);
6. nothing left to try, or a near-perfect score → stop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sia.agents.reward_view import RewardShapeOf, with_trainer_view
from sia.agents.template import Knobs, read_knobs, render
from sia.core.effect_models import FeedbackEpisode, FeedbackRequest, FeedbackResult, MetaRequest, MetaResult
from sia.effects.base import EffectContext, EffectResult

UNPARSEABLE_SHARE = 0.3
"""Above this share of unparseable dev answers, fixing the format beats anything else."""
GOOD_ENOUGH = 0.95


class PublicTask(Protocol):
    @property
    def name(self) -> str: ...

    def reference_harness(self) -> str | None: ...


@dataclass(frozen=True)
class Diagnosis:
    n: int
    unparseable: int
    crashed: int
    correct: int

    def share(self, count: int) -> float:
        return count / self.n if self.n else 0.0

    @property
    def summary(self) -> str:
        return (f"{self.n} dev episodes: {self.correct} correct, {self.unparseable} unparseable, "
                f"{self.crashed} crashed, {self.n - self.correct - self.unparseable - self.crashed} wrong")


def diagnose(episodes: Sequence[FeedbackEpisode], options: dict[str, list[str]]) -> Diagnosis:
    """Sort dev episodes by failure kind; `options` maps sample id → its answer options."""
    unparseable = crashed = correct = 0
    for episode in episodes:
        if episode.status != "ok":
            crashed += 1
        elif episode.reward > 0:
            correct += 1
        elif not _parses(episode.prediction, options.get(episode.sample_id, [])):
            unparseable += 1
    return Diagnosis(len(episodes), unparseable, crashed, correct)


def _parses(prediction: str | None, options: list[str]) -> bool:
    if not prediction or not prediction.strip():
        return False
    return not options or prediction.strip().lower() in {o.lower() for o in options}


def decide_feedback(request: FeedbackRequest, current: Knobs | None, diagnosis: Diagnosis,
                    knobs_at: Callable[[int], Knobs | None]) -> dict[str, Any]:
    """The built-in Feedback decision for one generation (pure).

    `current` are the knobs of the harness in use (None when it is not a template
    harness); `knobs_at(g)` gives those of generation g, for decisions after a rollback.
    """
    history, generation = request.history, request.generation
    recommended = request.reward_shape.recommended
    score = history[-1].score or 0.0
    best = request.best_generation
    decision: dict[str, Any] = {"provider": "builtin", "rollback_to": None, "forced": False,
                                "digest_summary": diagnosis.summary}

    if best is not None and best != generation and score < (history[best].score or 0.0):
        decision["rollback_to"] = best
        current = knobs_at(best)
        note = f"generation {generation} scored {score:.3f} < best {history[best].score or 0.0:.3f}: roll back to {best}; "
    else:
        note = ""

    tried: set[str | None] = {t.algorithm for t in request.no_signal}
    force = request.force
    forced_algorithm = force.algorithm if force else None
    if force and force.action == "update_weights" and (forced_algorithm or recommended) in tried | {None}:
        note += f"the forced update ({forced_algorithm or recommended or 'any algorithm'}) has no learning signal; "
    elif force:
        action, algorithm = force.action, forced_algorithm
        decision["forced"] = True
        if action == "update_weights":
            return {**decision, "action": action, "rationale": note + "forced by the run's settings",
                    "plan": {"algorithm": algorithm or recommended, "params": {}}}
        if action == "edit_harness":
            knobs = _next_knobs(current, diagnosis) or (current or Knobs()).with_(samples=(current or Knobs()).samples + 2)
            return {**decision, "action": action, "rationale": note + "forced by the run's settings",
                    "harness": render(knobs)}
        return {**decision, "action": "stop", "rationale": note + "forced by the run's settings"}

    if score >= GOOD_ENOUGH:
        return {**decision, "action": "stop", "rationale": f"dev score {score:.3f} is good enough"}

    broken = diagnosis.unparseable + diagnosis.crashed
    if diagnosis.share(broken) >= UNPARSEABLE_SHARE:
        fixed = (current or Knobs()).with_(prompt="fields", extract="option",
                                          samples=max(5, (current or Knobs()).samples),
                                          fallback="first_option")
        if fixed != current:
            return {**decision, "action": "edit_harness", "harness": render(fixed),
                    "rationale": note + f"{broken}/{diagnosis.n} dev answers unparseable or crashed: "
                                        "extract a listed option, vote over 5 samples, never abstain"}

    last = history[-2] if len(history) >= 2 else None
    improved = last is not None and score > (last.score or 0.0)
    trained_last = last is not None and last.action == "update_weights"
    learnable = recommended is not None and recommended not in tried
    if request.mode == "WH" and (not trained_last or improved) and learnable:
        return {**decision, "action": "update_weights",
                "rationale": note + f"answers parse ({diagnosis.summary}); the remaining errors are "
                                    f"wrong answers, so learn from rewards: "
                                    f"{request.reward_shape.reason} → {recommended}",
                "plan": {"algorithm": recommended, "params": {}}}

    if request.mode == "WH" and not learnable:
        note += (f"no weight update: {request.reward_shape.reason}; " if recommended is None else
                 f"no weight update: {recommended} already had no learning signal in this generation; ")
    next_knobs = _next_knobs(current, diagnosis)
    if next_knobs is not None:
        return {**decision, "action": "edit_harness", "harness": render(next_knobs),
                "rationale": note + "plateau: turn the next harness knob "
                                    f"(samples {next_knobs.samples}, temperature {next_knobs.temperature})"}
    return {**decision, "action": "stop", "rationale": note + "no rule has anything left to try"}


def _next_knobs(current: Knobs | None, diagnosis: Diagnosis) -> Knobs | None:
    knobs = current or Knobs()
    if knobs.extract != "option" or knobs.prompt != "fields":
        return knobs.with_(prompt="fields", extract="option", samples=max(5, knobs.samples),
                           fallback="first_option")
    if knobs.samples < 9:
        return knobs.with_(samples=9)
    if knobs.temperature > 0.7:
        return knobs.with_(temperature=0.7)
    return None


class BuiltinMeta:
    """Meta Agent without an LLM: the task's reference harness, else the template."""

    kind = "meta"

    def __init__(self, task_loader: Callable[[MetaRequest], PublicTask],
                 validate: Callable[[str], list[str]]) -> None:
        self.task_loader, self.validate = task_loader, validate

    def run(self, request: MetaRequest, ctx: EffectContext) -> EffectResult:
        task = self.task_loader(request)
        source = task.reference_harness() if request.attempt == 1 else None
        source = source or render(Knobs())
        problems = self.validate(source)
        return EffectResult(MetaResult(harness_hash=ctx.blobs.put_text(source), valid=not problems,
                                       problems=tuple(problems)))


class BuiltinFeedback:
    kind = "feedback"

    def __init__(self, options_of: Callable[[FeedbackRequest], dict[str, list[str]]],
                 reward_shape_of: RewardShapeOf | None = None) -> None:
        self.options_of = options_of
        self.reward_shape_of = reward_shape_of

    def run(self, request: FeedbackRequest, ctx: EffectContext) -> EffectResult:
        request, shape = with_trainer_view(request, self.reward_shape_of, ctx.blobs)

        def knobs_at(generation: int) -> Knobs | None:
            return read_knobs(ctx.blobs.get_text(request.history[generation].harness_hash))

        assert request.harness_hash is not None
        current = read_knobs(ctx.blobs.get_text(request.harness_hash))
        diagnosis = diagnose(request.episodes, self.options_of(request))
        decision = decide_feedback(request, current, diagnosis, knobs_at)
        harness = decision.pop("harness", None)
        if harness is not None:
            decision["harness_hash"] = ctx.blobs.put_text(harness)
        decision["evidence"] = [e.episode_id for e in request.episodes[:5]]
        if shape is not None:
            decision["reward_shape"] = shape
        return EffectResult(FeedbackResult.model_validate(decision))
