"""What each effect kind is asked and what it answers: one frozen model per request and result.

`decide` builds a request model and records its `record()` form in EffectRequested; the
runtime parses a recorded request back into its model (`parse_request`) before a handler
sees it, and a handler returns its kind's result model, which `interpret` turns into
events. The recorded form is plain canonical JSON, so request hashes (and with them
effect ids and the effect cache) do not depend on these classes: keys added by a later
decider version appear only when they have content, as they did when they were dicts.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import SerializerFunctionWrapHandler, model_serializer

from sia.core.events.types import Action, AgentLimits, Algorithm, Candidate, ForceValue, Frozen, Mode, TrainingPlan

EffectKind = Literal["meta", "episode", "evaluate", "feedback", "train", "candidate", "test"]


# ---------------------------------------------------------------- requests


class Recorded(Frozen):
    """A value whose JSON form leaves out, when unset, the keys a later decider version added,
    so a request asked the same way as before records (and hashes) the same bytes; nested
    values drop theirs too, as they are serialized."""

    added_later: ClassVar[frozenset[str]] = frozenset()
    """Keys a later decider version added: recorded only when set (not None, not empty)."""

    @model_serializer(mode="wrap")
    def _without_unset_later_keys(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        for key in self.added_later:
            if data.get(key) in (None, [], (), {}):
                del data[key]
        return data


class EffectRequest(Recorded):
    """Fields every request carries: the task it runs on and the seed its handler draws from."""

    kind: ClassVar[EffectKind]

    task: str
    task_hash: str
    seed: int = 0
    """Derived by `decide` from the run seed and the rest of the request."""

    def record(self, *, with_seed: bool = True) -> dict[str, Any]:
        """The recorded (and hashed) JSON form."""
        data = self.model_dump(mode="json")
        if not with_seed:
            del data["seed"]
        return data


class MetaRequest(EffectRequest):
    kind: ClassVar[EffectKind] = "meta"
    added_later: ClassVar[frozenset[str]] = frozenset({"limits"})
    provider: str
    attempt: int
    problems: tuple[str, ...] = ()
    limits: AgentLimits | None = None
    """How far an LLM agent may investigate (decider version 4 on)."""


class EpisodeRequest(EffectRequest):
    kind: ClassVar[EffectKind] = "episode"
    generation: int
    sample_id: str
    harness_hash: str
    adapter_hash: str | None
    target: str


class EvaluateRequest(EffectRequest):
    kind: ClassVar[EffectKind] = "evaluate"
    generation: int
    predictions: tuple[tuple[str, str | None], ...]
    """(sample id, prediction) pairs: dev samples first, then the generation's rollouts."""


class NoSignalRecord(Frozen):
    algorithm: str
    params: dict[str, Any] = {}
    reason: str


class HistoryEntry(Recorded):
    """One earlier generation as the Feedback Agent sees it."""

    added_later: ClassVar[frozenset[str]] = frozenset({"no_signal"})

    generation: int
    score: float | None
    harness_hash: str
    adapter_hash: str | None
    action: Action | None
    algorithm: str | None
    no_signal: tuple[NoSignalRecord, ...] = ()


class EpisodeRef(Frozen):
    """A recorded episode a Feedback or train request points at (its trajectory is a blob)."""

    episode_id: str
    sample_id: str
    trajectory_hash: str | None


class FeedbackEpisode(EpisodeRef):
    status: str
    prediction: str | None
    reward: float


class TrainEpisode(EpisodeRef):
    reward: float


class RewardShapeView(Frozen):
    kind: str
    recommended: str | None
    reason: str


class CandidateOutcome(Frozen):
    """A candidate of an earlier search round and what became of it."""

    generation: int
    round: int
    index: int
    action: Action
    harness_hash: str | None
    algorithm: str | None
    parent_generation: int | None
    score: float | None
    chosen: bool
    note: str
    """Why it was not adopted (or that it was)."""


class FeedbackRequest(EffectRequest):
    kind: ClassVar[EffectKind] = "feedback"
    added_later: ClassVar[frozenset[str]] = frozenset(
        {"rollouts", "no_signal", "candidates", "round", "tried", "parents", "limits"})
    generation: int
    provider: str
    mode: Mode
    harness_hash: str | None
    adapter_hash: str | None
    history: tuple[HistoryEntry, ...]
    best_generation: int | None
    episodes: tuple[FeedbackEpisode, ...]
    """The dev episodes of this generation, with their rewards."""
    reward_shape: RewardShapeView
    force: ForceValue | None = None
    rollouts: tuple[EpisodeRef, ...] = ()
    """The train rollouts a weight update would learn from (decider version 2 on)."""
    no_signal: tuple[NoSignalRecord, ...] = ()
    """Weight updates already found to have no learning signal in this generation."""
    candidates: int | None = None
    """Set when the run searches: propose up to this many different decisions."""
    round: int | None = None
    """The search round of this generation the candidates are for (0 first)."""
    tried: tuple[CandidateOutcome, ...] = ()
    """Every candidate of earlier rounds and generations, with its dev score: not to repeat."""
    limits: AgentLimits | None = None
    """How far an LLM agent may investigate (decider version 4 on)."""
    parents: tuple[int, ...] = ()
    """Generations a candidate may start from (`search.parents = pareto`): the Pareto front
    of per-sample dev scores. Empty: the incumbent only."""


class TrainRequest(EffectRequest):
    kind: ClassVar[EffectKind] = "train"
    generation: int
    trainer: str
    target: str
    algorithm: Algorithm
    params: dict[str, Any] = {}
    initial_adapter_hash: str | None
    harness_hash: str | None
    episodes: tuple[TrainEpisode, ...]


class CandidateRequest(EffectRequest):
    """Explore one candidate on its own fork of the run, up to its dev score."""

    kind: ClassVar[EffectKind] = "candidate"
    generation: int
    round: int
    index: int
    fork_seq: int
    """Where the branch forks: just after the candidates were proposed."""
    candidate: Candidate


class TestRequest(EffectRequest):
    """Score the final answer (a generation's harness and adapter) on the held-out split."""

    __test__: ClassVar[bool] = False
    kind: ClassVar[EffectKind] = "test"
    generation: int
    harness_hash: str
    adapter_hash: str | None
    target: str


REQUEST_MODELS: dict[str, type[EffectRequest]] = {
    model.kind: model for model in (MetaRequest, EpisodeRequest, EvaluateRequest, FeedbackRequest,
                                    TrainRequest, CandidateRequest, TestRequest)
}


class RequestInvalid(ValueError):
    """A recorded request that does not fit its kind (or names no known kind)."""


def parse_request(kind: str, request: dict[str, Any]) -> EffectRequest:
    """The typed form of a recorded request."""
    model = REQUEST_MODELS.get(kind)
    if model is None:
        raise RequestInvalid(f"no request model for effect kind {kind!r} (known: {', '.join(REQUEST_MODELS)})")
    try:
        return model.model_validate(request)
    except ValueError as exc:
        raise RequestInvalid(f"{kind} request does not fit its schema: {exc}") from exc


# ---------------------------------------------------------------- results


class EffectAnswer(Frozen):
    """What a handler returns; recorded as its JSON form in EffectCompleted."""

    def record(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class MetaResult(EffectAnswer):
    harness_hash: str | None
    valid: bool
    problems: tuple[str, ...] = ()


class EpisodeResult(EffectAnswer):
    status: str
    prediction: str | None = None
    trajectory_hash: str | None = None
    error: str | None = None


class EvaluateResult(EffectAnswer):
    score: float
    rewards: tuple[float, ...]
    n: int
    n_answered: int
    failures: dict[str, int] = {}
    metrics: dict[str, float] = {}


class FeedbackResult(EffectAnswer):
    action: Action
    rationale: str
    evidence: tuple[str, ...] = ()
    digest_hash: str | None = None
    digest_summary: str = ""
    harness_hash: str | None = None
    plan: TrainingPlan | None = None
    rollback_to: int | None = None
    provider: str = "builtin"
    forced: bool = False
    reward_shape: dict[str, Any] | None = None
    """The shape of the rewards the trainer would see, as the handler classified them."""
    candidates: tuple[Candidate, ...] = ()
    """When the request asked for candidates: the different decisions proposed."""


class TrainResult(EffectAnswer):
    """An adapter (job_id, adapter_hash, config_hash), or `no_signal`: why there is none."""

    algorithm: str
    job_id: str | None = None
    adapter_hash: str | None = None
    config_hash: str | None = None
    metrics: dict[str, float] = {}
    no_signal: str | None = None


class CandidateResult(EffectAnswer):
    """A candidate branch's outcome: its dev score (None when the branch failed)."""

    run_id: str
    score: float | None
    rewards: tuple[float, ...] = ()
    harness_hash: str | None = None
    adapter_hash: str | None = None
    episodes: int = 0
    error: str | None = None


class TestResult(EffectAnswer):
    __test__: ClassVar[bool] = False
    score: float | None
    n: int
    n_answered: int
    metrics: dict[str, float] = {}


RESULT_MODELS: dict[str, type[EffectAnswer]] = {
    "meta": MetaResult, "episode": EpisodeResult, "evaluate": EvaluateResult,
    "feedback": FeedbackResult, "train": TrainResult, "candidate": CandidateResult, "test": TestResult,
}
