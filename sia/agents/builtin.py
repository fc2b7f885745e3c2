"""The built-in Meta and Feedback policy: deterministic rules, no LLM, no network.

It is the offline default and is named as such everywhere (provider "builtin"). Meta
returns the task's reference harness, or the template harness. Feedback reads the dev
episodes and applies rules, in order:

1. a forced decision (a fork's `feedback.force`) is obeyed;
2. after a regression, roll back to the best generation and decide from there;
3. many unparseable answers or crashes → edit the harness: a prompt that lists the
   options and cues the answer, option extraction, a majority vote over several
   samples, a fallback answer — and, in mode H when the task's training labels are
   public, the answer constrained to the labels of the nearest training examples, with
   their similarity-weighted vote as the fallback (`HarnessContext`);
4. in mode WH, once answers parse, update the weights with the algorithm the reward
   shape recommends, and keep doing so while it helps — unless the shape says there is
   no learning signal, or that update already had none in this generation;
5. otherwise turn the next harness knob: with public training labels, constrain the
   answer to the nearest examples' labels, then rerank them by how much of each the
   sample's text contains, then show the nearest examples as labelled demonstrations;
   then more votes, a lower temperature;
6. nothing left to try, or a near-perfect score → stop.

When the run searches (`search.candidates` > 1) it proposes that many different
decisions instead: the one the rules above take, then single-knob neighbours of each
parent harness (the incumbent, or each generation on the Pareto front) and, in mode WH,
weight updates with the algorithms that suit the reward shape, never one already tried
in this generation. The neighbours reach further than the rules: finer steps of the
nearest-neighbour knobs and, when labels are lists, naming several answers.

Every rule is task-agnostic: it reads the diagnosis, the knobs and `HarnessContext`, never a
task's name. Demonstrations bootstrapped from the model's own successful train rollouts
(DSPy's BootstrapFewShot) are not in the repertoire: a Feedback request names the train
rollouts without their rewards, and dev episodes (which have rewards) must never become
demonstrations, since dev labels stay with the evaluator.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sia.agents.reward_view import RewardShapeOf, with_trainer_view
from sia.agents.template import Knobs, read_knobs, render
from sia.core.effect_models import (
    FeedbackEpisode,
    FeedbackRequest,
    FeedbackResult,
    MetaRequest,
    MetaResult,
)
from sia.core.events.types import Candidate
from sia.effects.base import EffectContext, EffectResult

UNPARSEABLE_SHARE = 0.3
"""Above this share of unparseable dev answers, fixing the format beats anything else."""
GOOD_ENOUGH = 0.95
NEIGHBOURS = 10
"""Nearest training examples whose labels become the candidates: the nearest-neighbour vote
alone scored a LawBench 3-3 dev F1 of 0.304 with 1, 0.324 with 3, 0.326 with 5, 0.336 with 7,
0.342 with 10 and 0.293 with 20 (bench/lawbench_harness.py knn, 5 splits; chosen on dev)."""
DEMOS = 2
OVERLAP = 2.0
"""How much the reread vote weighs an answer's characters found in the sample (`Knobs.overlap`):
with 10 neighbours on LawBench 3-3 (5 splits) the dev F1 of the vote went from 0.342 to 0.407
with 1, 0.433 with 2, 0.431 with 3 and 0.416 with 5 (bench/lawbench_harness.py knn --overlaps;
chosen on dev; test F1 0.298 → 0.362)."""
ALSO = 0.8
"""How strong another voted answer must be, relative to the chosen one, to be named too, when
labels are lists (`Knobs.also`): with 10 neighbours and overlap 2 on LawBench 3-3 (5 splits)
the dev F1 was 0.433 with one answer, 0.429 at 0.8, 0.419 at 0.6 and 0.415 at 0.5 (chosen on
dev: the highest of the thresholds; a search weighs it on its own dev split)."""


@dataclass(frozen=True)
class HarnessContext:
    """What the harness edits may draw on besides the dev episodes, told at wiring time."""

    examples_public: bool = False
    """The task's training labels are public: harnesses find them in SIA_TRAIN_EXAMPLES."""
    context_tokens: int | None = None
    """The target model's context length in tokens, when it is small enough to matter."""
    labels_are_lists: bool = False
    """The public labels are lists (a multi-label task): a harness may name several answers."""

    @property
    def prompt_chars(self) -> int:
        """The prompt budget in characters (0 = none): 7/8 of the context, the rest left for
        the answer. A token is at least one character (the embedded model's tokenizers cut
        into characters or words), so a prompt within it fits the context."""
        return self.context_tokens * 7 // 8 if self.context_tokens else 0


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
                    knobs_at: Callable[[int], Knobs | None],
                    context: HarnessContext = HarnessContext()) -> dict[str, Any]:
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
            edit = _next_edit(current, context)
            knobs = edit[0] if edit else (current or Knobs()).with_(samples=(current or Knobs()).samples + 2)
            return {**decision, "action": action, "rationale": note + "forced by the run's settings",
                    "harness": render(knobs)}
        return {**decision, "action": "stop", "rationale": note + "forced by the run's settings"}

    if score >= GOOD_ENOUGH:
        return {**decision, "action": "stop", "rationale": f"dev score {score:.3f} is good enough"}

    broken = diagnosis.unparseable + diagnosis.crashed
    if diagnosis.share(broken) >= UNPARSEABLE_SHARE:
        fixed, why = _format_fix(current or Knobs(), context, constrain=request.mode == "H")
        if fixed != current:
            return {**decision, "action": "edit_harness", "harness": render(fixed),
                    "rationale": note + f"{broken}/{diagnosis.n} dev answers unparseable or crashed: {why}"}

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
    edit = _next_edit(current, context)
    if edit is not None:
        return {**decision, "action": "edit_harness", "harness": render(edit[0]),
                "rationale": note + "plateau: turn the next harness knob " + edit[1]}
    return {**decision, "action": "stop", "rationale": note + "no rule has anything left to try"}


ALGORITHMS_BY_SHAPE: dict[str, tuple[str, ...]] = {
    "binary": ("grpo", "best_of_n", "entropic", "reinforce_kl", "dpo"),
    "continuous": ("ppo_gae", "grpo", "reinforce_kl", "entropic", "best_of_n"),
}
"""The algorithms a search tries for a reward shape, most suitable first (after the recommended one)."""


def knob_neighbours(knobs: Knobs, context: HarnessContext = HarnessContext()) -> list[Knobs]:
    """Harnesses one knob away from `knobs`, the changes most likely to help first.

    With public training labels, a harness that already answers from the nearest examples'
    labels is refined there first (how much the sample's text weighs, how many examples vote,
    several answers for a multi-label task): the sampling knobs come after, since only a model
    that names a candidate heeds them. Any other harness tries the sampling knobs first."""
    sampling: list[Knobs] = [
        _format_fix(knobs, context, constrain=False)[0],
        knobs.with_(samples=min(15, knobs.samples + 4)),
        knobs.with_(temperature=0.7 if knobs.temperature > 0.7 else 1.0),
        knobs.with_(fallback="first_option" if knobs.fallback == "none" else "none"),
        knobs.with_(temperature=0.4),
        knobs.with_(samples=max(1, knobs.samples - 2)),
        knobs.with_(extract="option" if knobs.extract != "option" else "first_line"),
        knobs.with_(prompt="bare" if knobs.prompt == "fields" else "fields"),
        knobs.with_(max_tokens=knobs.max_tokens * 2),
    ]
    examples: list[Knobs] = []
    if context.examples_public:
        constrained = _format_fix(knobs, context)[0]
        examples = [
            constrained,
            constrained.with_(overlap=OVERLAP if knobs.overlap == 0 else 0.0),
            *([constrained.with_(overlap=knobs.overlap * 1.5)] if knobs.overlap else []),
            constrained.with_(neighbours=constrained.neighbours + NEIGHBOURS // 2),
            *([constrained.with_(also=ALSO if knobs.also == 0 else 0.0)] if context.labels_are_lists else []),
            constrained.with_(demos=DEMOS if knobs.demos == 0 else 0),
            constrained.with_(neighbours=1 if knobs.neighbours > 1 else NEIGHBOURS * 2),
            knobs.with_(fallback="nearest" if knobs.fallback != "nearest" else "first_option",
                        neighbours=knobs.neighbours or NEIGHBOURS),
        ]
    options = examples + sampling if knobs.candidates == "knn" else sampling + examples
    return [k for k in dict.fromkeys(options) if k != knobs]


def propose_candidates(request: FeedbackRequest, current: Knobs | None, diagnosis: Diagnosis,
                       knobs_at: Callable[[int], Knobs | None],
                       context: HarnessContext = HarnessContext()) -> list[dict[str, Any]]:
    """Up to `request.candidates` different decisions (pure), as candidate fields with the
    harness *source* under "harness" (the handler stores it and drops repeats)."""
    limit = request.candidates or 1
    primary = decide_feedback(request, current, diagnosis, knobs_at, context)
    proposals: list[dict[str, Any]] = []
    if primary["action"] != "stop":
        proposals.append({"action": primary["action"], "rationale": primary["rationale"],
                          "harness": primary.get("harness"), "plan": primary.get("plan"),
                          "parent_generation": primary.get("rollback_to")})
    bases: list[tuple[int | None, Knobs]] = [(None, current or Knobs())]
    if request.parents:
        bases = [(g, knobs_at(g) or Knobs()) for g in request.parents]
    harnesses = [(parent, knobs) for parent, base in bases for knobs in knob_neighbours(base, context)]
    if request.mode == "WH" and context.examples_public:
        # The line's first fix in WH leaves the answer to the model, so that training has its
        # turn; a search weighs every candidate on dev, so the harnesses constrained to the
        # nearest examples' labels stand beside the weight updates from the first round.
        harnesses.sort(key=lambda proposal: proposal[1].candidates != "knn")
    tried = {t.algorithm for t in request.tried
             if t.generation == request.generation and t.action == "update_weights"}
    tried |= {n.algorithm for n in request.no_signal}
    recommended = request.reward_shape.recommended
    algorithms: list[str] = []
    if request.mode == "WH" and recommended is not None:
        preferred = ALGORITHMS_BY_SHAPE.get(request.reward_shape.kind, ALGORITHMS_BY_SHAPE["binary"])
        algorithms = [a for a in dict.fromkeys((recommended, *preferred)) if a not in tried]
    while len(proposals) < 4 * limit and (harnesses or algorithms):
        if harnesses:
            parent, knobs = harnesses.pop(0)
            origin = "the incumbent" if parent is None else f"generation {parent}"
            proposals.append({"action": "edit_harness", "harness": render(knobs), "plan": None,
                              "parent_generation": parent,
                              "rationale": f"a harness one knob from {origin}'s: samples {knobs.samples}, "
                                           f"temperature {knobs.temperature}, extract {knobs.extract}, "
                                           f"prompt {knobs.prompt}, fallback {knobs.fallback}"
                                           + _optimizer_summary(knobs)})
        if algorithms:
            algorithm = algorithms.pop(0)
            proposals.append({"action": "update_weights", "harness": None, "parent_generation": None,
                              "plan": {"algorithm": algorithm, "params": {}},
                              "rationale": f"update the weights with {algorithm} "
                                           f"({request.reward_shape.reason})"})
    return proposals


def _format_fix(knobs: Knobs, context: HarnessContext, *, constrain: bool = True) -> tuple[Knobs, str]:
    """The harness that makes answers parse, and why: a listed option, extracted, voted on and
    never abstained from; with public training labels (and `constrain`), the option list
    narrowed to the labels of the nearest training examples, whose weighted vote answers when
    no sample names one.

    A weight update learns from the rewards of the harness's own rollouts, and a reward earned
    by the neighbours' vote says nothing about the completions: so in mode WH the first fix
    leaves the answer to the model (`constrain=False`), and the constraint comes on the
    plateau, once training has had its turn."""
    fixed = knobs.with_(prompt="fields", extract="option", samples=max(5, knobs.samples), fallback="first_option")
    if not (context.examples_public and constrain):
        return fixed, "extract a listed option, vote over 5 samples, never abstain"
    fixed = fixed.with_(candidates="knn", neighbours=knobs.neighbours or NEIGHBOURS, fallback="nearest",
                        prompt_chars=context.prompt_chars)
    return fixed, (f"constrain the answer to the labels of the {fixed.neighbours} nearest training examples "
                   f"(character n-gram similarity), vote over {fixed.samples} samples, and answer their "
                   f"similarity-weighted vote when no sample names one{_budget_note(fixed)}")


def _budget_note(knobs: Knobs) -> str:
    return f"; the prompt is cut to {knobs.prompt_chars} characters to fit the target's context" if knobs.prompt_chars else ""


def _next_edit(current: Knobs | None, context: HarnessContext) -> tuple[Knobs, str] | None:
    """The next knob to turn on a plateau, with its reason; None when every one is turned."""
    knobs = current or Knobs()
    if knobs.extract != "option" or knobs.prompt != "fields" or (
            context.examples_public and knobs.candidates != "knn"):
        fixed, why = _format_fix(knobs, context)
        if context.examples_public:
            return fixed, f"(answers constrained to the nearest examples' labels): {why}"
        return fixed, f"(samples {fixed.samples}, temperature {fixed.temperature})"
    if context.examples_public and knobs.overlap == 0:
        return knobs.with_(overlap=OVERLAP), (f"(reading the sample): rerank the nearest examples' labels by "
                                              f"how much of each the sample's own text contains (overlap {OVERLAP:g})")
    if context.examples_public and knobs.demos == 0:
        shown = knobs.with_(demos=DEMOS, neighbours=max(knobs.neighbours, DEMOS))
        return shown, (f"(k-nearest-neighbour few-shot): show the {DEMOS} nearest training examples with "
                       f"their labels before the sample{_budget_note(shown)}")
    if knobs.samples < 9:
        return knobs.with_(samples=9), f"(samples 9, temperature {knobs.temperature})"
    if knobs.temperature > 0.7:
        return knobs.with_(temperature=0.7), f"(samples {knobs.samples}, temperature 0.7)"
    return None


def _optimizer_summary(knobs: Knobs) -> str:
    if not knobs.optimized:
        return ""
    return (f", candidates {knobs.candidates}, neighbours {knobs.neighbours}, demos {knobs.demos}, "
            f"overlap {knobs.overlap:g}, prompt_chars {knobs.prompt_chars}"
            + (f", also {knobs.also:g}" if knobs.also else ""))


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
                 reward_shape_of: RewardShapeOf | None = None,
                 context: HarnessContext = HarnessContext()) -> None:
        self.options_of = options_of
        self.reward_shape_of = reward_shape_of
        self.context = context

    def run(self, request: FeedbackRequest, ctx: EffectContext) -> EffectResult:
        request, shape = with_trainer_view(request, self.reward_shape_of, ctx.blobs)

        def knobs_at(generation: int) -> Knobs | None:
            return read_knobs(ctx.blobs.get_text(request.history[generation].harness_hash))

        assert request.harness_hash is not None
        current = read_knobs(ctx.blobs.get_text(request.harness_hash))
        diagnosis = diagnose(request.episodes, self.options_of(request))
        if request.candidates:
            return EffectResult(self._candidates(request, current, diagnosis, knobs_at, shape, ctx))
        decision = decide_feedback(request, current, diagnosis, knobs_at, self.context)
        harness = decision.pop("harness", None)
        if harness is not None:
            decision["harness_hash"] = ctx.blobs.put_text(harness)
        decision["evidence"] = [e.episode_id for e in request.episodes[:5]]
        if shape is not None:
            decision["reward_shape"] = shape
        return EffectResult(FeedbackResult.model_validate(decision))

    def _candidates(self, request: FeedbackRequest, current: Knobs | None, diagnosis: Diagnosis,
                    knobs_at: Callable[[int], Knobs | None], shape: dict[str, Any] | None,
                    ctx: EffectContext) -> FeedbackResult:
        """The proposals, stored, without repeats of each other or of anything tried."""
        seen = {t.harness_hash for t in request.tried if t.harness_hash}
        seen |= {entry.harness_hash for entry in request.history}
        plans: set[str] = set()
        candidates: list[Candidate] = []
        for proposal in propose_candidates(request, current, diagnosis, knobs_at, self.context):
            harness_hash = None
            if proposal["harness"] is not None:
                harness_hash = ctx.blobs.put_text(proposal["harness"])
                if harness_hash in seen:
                    continue
                seen.add(harness_hash)
            if proposal["plan"] is not None:
                if proposal["plan"]["algorithm"] in plans:
                    continue
                plans.add(proposal["plan"]["algorithm"])
            candidates.append(Candidate(action=proposal["action"], rationale=proposal["rationale"],
                                        harness_hash=harness_hash, plan=proposal["plan"],
                                        parent_generation=proposal["parent_generation"]))
            if len(candidates) == request.candidates:
                break
        if not candidates:
            return FeedbackResult(action="stop", rationale="no candidate left that was not tried",
                                  digest_summary=diagnosis.summary, reward_shape=shape)
        return FeedbackResult(action=candidates[0].action, candidates=tuple(candidates),
                              rationale=f"{len(candidates)} candidates for round {request.round}",
                              digest_summary=diagnosis.summary, reward_shape=shape,
                              evidence=tuple(e.episode_id for e in request.episodes[:5]))
