"""The event vocabulary of a sia run: one frozen pydantic model per event type.

Events are facts. Three sources append them, and each type has exactly one source:

* the shell (a user command): RunCreated, RunForked, RunPaused, RunResumed;
* `decide` (the pure state machine): GenerationStarted, EffectRequested, HarnessEdited,
  RolledBack, CandidateChosen, GenerationCompleted, RunCompleted, RunFailed;
* an effect's outcome, through the pure `interpret` (the runtime appends it in the same
  transaction as the EffectCompleted it came from): HarnessProposed, EpisodeRecorded,
  EvaluationRecorded, FeedbackDecided, CandidatesProposed, CandidateEvaluated, TestScored,
  TrainingJobSubmitted, AnswerRefused, AgentStepRecorded, AdapterCheckpointed, plus
  EffectCompleted / EffectFailed.

Large payloads (harness source, trajectories, adapters) live in the blob store; events
carry their sha256. Each class has a `schema_version`; older stored versions are brought
up to date by the upcasters in `sia.core.events.upcasting`.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Union, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer

Mode = Literal["H", "WH"]
Action = Literal["edit_harness", "update_weights", "stop"]
ACTIONS: tuple[str, ...] = get_args(Action)
Algorithm = Literal["ppo_gae", "grpo", "entropic", "reinforce_kl", "dpo", "best_of_n"]
ALGORITHMS: tuple[str, ...] = get_args(Algorithm)
EpisodeStatus = Literal[
    "ok", "crash", "timeout", "memory", "malformed", "invalid_harness", "error"
]
EPISODE_STATUSES: tuple[str, ...] = get_args(EpisodeStatus)
RunStatus = Literal["new", "running", "paused", "completed", "failed"]


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# ---------------------------------------------------------------- value types


class ForceError(ValueError):
    """A `feedback.force` value that names no action or no known algorithm."""


class Force(Frozen):
    """A decision the run's settings impose on the Feedback Agent (a fork's `feedback.force`).

    Written `edit_harness`, `stop`, `update_weights` or `update_weights:ALGORITHM`; parsed
    once, here, and recorded in that same written form.
    """

    action: Action
    algorithm: Algorithm | None = None

    @classmethod
    def parse(cls, text: str) -> Force:
        action, _, algorithm = text.partition(":")
        if action not in ACTIONS:
            raise ForceError(f"feedback.force: unknown action {action!r} "
                             "(edit_harness | update_weights[:ALGORITHM] | stop)")
        if algorithm and algorithm not in ALGORITHMS:
            raise ForceError(f"feedback.force: unknown algorithm {algorithm!r} "
                             f"(one of {', '.join(ALGORITHMS)})")
        if algorithm and action != "update_weights":
            raise ForceError(f"feedback.force: only update_weights takes an algorithm, not {action!r}")
        return cls(action=action, algorithm=algorithm or None)

    def __str__(self) -> str:
        return f"{self.action}:{self.algorithm}" if self.algorithm else self.action


def _force_from_text(value: object) -> object:
    return Force.parse(value) if isinstance(value, str) else value


ForceValue = Annotated[Force, BeforeValidator(_force_from_text), PlainSerializer(str, return_type=str)]
"""A Force that reads and writes as its text form, in settings, configs and requests."""


class Budget(Frozen):
    """Spend limits; None means unlimited. Wall time is the sum of recorded effect times."""

    tokens: int | None = None
    dollars: float | None = None
    wall_s: float | None = None
    gpu_s: float | None = None
    episodes: int | None = Field(default=None, ge=1)
    """Episodes executed (cache hits are free), a search's candidate branches included."""


class AgentLimits(Frozen):
    """How far an LLM agent may investigate before it must answer, per decision."""

    max_turns: int = Field(default=12, ge=1)
    max_tokens: int | None = Field(default=400_000, ge=1)
    max_dollars: float | None = Field(default=2.0, gt=0)


ParentPolicy = Literal["incumbent", "pareto"]


class SearchConfig(Frozen):
    """How many candidates each generation explores, and what they start from.

    With `candidates` > 1 the Feedback Agent proposes that many decisions per generation,
    each explored on its own fork of the run and scored on dev; the run adopts the best
    one only if it strictly beats the incumbent (the keep-best gate), else it asks again.
    """

    candidates: int = Field(default=1, ge=1, le=16)
    parents: ParentPolicy = "incumbent"
    """`pareto`: candidates may start from any archived variant that is best on some dev
    sample (GEPA's parent selection), not only from the incumbent."""
    explore: int | None = None
    """Set on a candidate's own fork only: the index of the candidate that branch explores."""
    good_enough: float | None = None
    """A dev score that ends the run once its incumbent reaches it: no further round or
    generation is explored (the final answer's test score is still measured)."""


class RunConfig(Frozen):
    """Everything that steers a run's decisions. Recorded in RunCreated, amended by RunForked."""

    task: str
    mode: Mode = "WH"
    max_generations: int = Field(default=3, ge=1)
    patience: int = Field(default=3, ge=1)
    budget: Budget = Budget()
    seed: int = 0
    meta: str = "builtin"
    feedback: str = "builtin"
    target: str = "tiny"
    trainer: str = "local"
    feedback_force: ForceValue | None = None
    max_meta_attempts: int = Field(default=3, ge=1)
    max_effect_attempts: int = Field(default=3, ge=1)
    sandbox: Literal["bwrap", "process"] = "bwrap"
    """Where harness code runs: the bubblewrap OS sandbox, or the weaker process sandbox
    a user chose explicitly (`--set sandbox=process`) where bwrap is unusable."""
    search: SearchConfig = SearchConfig()
    agent: AgentLimits = AgentLimits()


class TaskIdentity(Frozen):
    """What a run knows about its task: public identity only, never held-out labels.

    Each generation runs every dev sample (scored) and, in mode WH, a seeded subset of
    `rollouts_per_generation` train samples whose trajectories are the training data, so
    a weight update never learns from the samples that judge it.
    """

    name: str
    task_hash: str
    dev_ids: tuple[str, ...]
    reward_kind: str = "binary"
    train_ids: tuple[str, ...] = ()
    rollouts_per_generation: int = 0
    source: str | None = None
    """Where the task was loaded from (a bundled name or a folder), for handlers."""
    data: str | None = None
    """A user data path the task was built from (e.g. LawBench's 3-3.json)."""
    test_size: int = 0
    """Held-out samples the final answer is scored on once, at the end (0: none)."""


class Usage(Frozen):
    """What one effect cost. Wall time is measured by the shell and only ever summed."""

    tokens_in: int = 0
    tokens_out: int = 0
    dollars: float = 0.0
    wall_s: float = 0.0
    gpu_s: float = 0.0


# ---------------------------------------------------------------- events


class BaseEvent(Frozen):
    schema_version: ClassVar[int] = 1
    type: str


class RunCreated(BaseEvent):
    type: Literal["RunCreated"] = "RunCreated"
    config: RunConfig
    task: TaskIdentity
    decider_version: int = Field(default=1, ge=1)
    """The version of `sia.core.decide` that drives this run (logs from before versioning are 1).
    A run keeps its version for life, forks included, so its log always replays."""


class RunForked(BaseEvent):
    """First own event of a fork: its history before this is the parent's, by reference."""

    type: Literal["RunForked"] = "RunForked"
    parent_run_id: str
    fork_seq: int
    overrides: dict[str, str] = {}
    config: RunConfig


class RunPaused(BaseEvent):
    type: Literal["RunPaused"] = "RunPaused"
    reason: str


class RunResumed(BaseEvent):
    type: Literal["RunResumed"] = "RunResumed"
    reason: str = "resume"


class RunCompleted(BaseEvent):
    type: Literal["RunCompleted"] = "RunCompleted"
    reason: str
    best_generation: int | None
    best_score: float | None


class RunFailed(BaseEvent):
    type: Literal["RunFailed"] = "RunFailed"
    error: str


class HarnessProposed(BaseEvent):
    """A candidate harness (from the Meta Agent) and whether it passed validation."""

    type: Literal["HarnessProposed"] = "HarnessProposed"
    effect_id: str
    harness_hash: str | None
    valid: bool
    problems: tuple[str, ...] = ()


class GenerationStarted(BaseEvent):
    type: Literal["GenerationStarted"] = "GenerationStarted"
    generation: int
    harness_hash: str
    adapter_hash: str | None


class EffectRequested(BaseEvent):
    """Committed before the handler runs: the effect's identity and full canonical request."""

    type: Literal["EffectRequested"] = "EffectRequested"
    effect_id: str
    kind: str
    request: dict[str, Any]
    request_hash: str


class EffectCompleted(BaseEvent):
    type: Literal["EffectCompleted"] = "EffectCompleted"
    effect_id: str
    kind: str
    result: dict[str, Any]
    usage: Usage = Usage()
    cached_from: str | None = None
    """Set on a cache hit: the effect id whose recorded result was reused."""


class EffectFailed(BaseEvent):
    type: Literal["EffectFailed"] = "EffectFailed"
    effect_id: str
    kind: str
    error: str
    attempt: int
    will_retry: bool
    retry_in_s: float = 0.0
    usage: Usage = Usage()


class EpisodeRecorded(BaseEvent):
    type: Literal["EpisodeRecorded"] = "EpisodeRecorded"
    generation: int
    episode_id: str
    sample_id: str
    status: EpisodeStatus
    prediction: str | None
    trajectory_hash: str | None
    error: str | None = None


class EvaluationRecorded(BaseEvent):
    """Per-episode rewards in dev-id order; unanswered samples count as reward 0."""

    type: Literal["EvaluationRecorded"] = "EvaluationRecorded"
    generation: int
    split: Literal["dev"] = "dev"
    score: float
    rewards: tuple[float, ...]
    n: int
    n_answered: int
    failures: dict[str, int] = {}
    metrics: dict[str, float] = {}
    """Task-specific aggregates beside the score (e.g. LawBench F1, abstention rate)."""


class TrainingPlan(Frozen):
    algorithm: Algorithm
    params: dict[str, Any] = {}
    episodes: tuple[str, ...] = ()


class FeedbackDecided(BaseEvent):
    type: Literal["FeedbackDecided"] = "FeedbackDecided"
    generation: int
    action: Action
    rationale: str
    evidence: tuple[str, ...] = ()
    digest_hash: str | None = None
    digest_summary: str = ""
    recommended_algorithm: str | None = None
    harness_hash: str | None = None
    plan: TrainingPlan | None = None
    rollback_to: int | None = None
    provider: str = "builtin"
    forced: bool = False


class HarnessEdited(BaseEvent):
    type: Literal["HarnessEdited"] = "HarnessEdited"
    generation: int
    from_hash: str
    to_hash: str


class RolledBack(BaseEvent):
    """The decision restored an earlier generation's harness and adapter before acting."""

    type: Literal["RolledBack"] = "RolledBack"
    generation: int
    to_generation: int
    harness_hash: str
    adapter_hash: str | None


class TrainingJobSubmitted(BaseEvent):
    """Recorded as soon as a trainer accepts a job, so resume can re-attach by call id."""

    type: Literal["TrainingJobSubmitted"] = "TrainingJobSubmitted"
    effect_id: str
    job_id: str
    backend: str
    call_id: str | None = None


class AnswerRefused(BaseEvent):
    """An agent's answer that failed validation and was re-asked within the same effect,
    recorded as it happens so the audit shows every attempt, not only the accepted one."""

    type: Literal["AnswerRefused"] = "AnswerRefused"
    effect_id: str
    kind: str
    attempt: int
    problems: tuple[str, ...]


class AgentStepRecorded(BaseEvent):
    """One step of an agent's investigation inside an effect (a model turn or a tool call),
    recorded as it completes: a run killed mid-investigation resumes the effect from its
    journal instead of asking the model again, and the audit shows every step.

    The step itself (the turn, or the call and its result) is a blob; `usage` is what it
    cost, counted in the effect's own usage when it completes (never twice)."""

    type: Literal["AgentStepRecorded"] = "AgentStepRecorded"
    effect_id: str
    index: int = Field(ge=0)
    kind: Literal["turn", "tool"]
    name: str
    """The model's name for a turn, the tool's for a tool call."""
    blob_hash: str
    summary: str = ""
    usage: Usage = Usage()


class AdapterCheckpointed(BaseEvent):
    type: Literal["AdapterCheckpointed"] = "AdapterCheckpointed"
    generation: int
    job_id: str
    adapter_hash: str
    config_hash: str
    algorithm: Algorithm
    metrics: dict[str, float] = {}


class TrainingNoSignal(BaseEvent):
    """A weight update that could not change, or did not change, the adapter: every group's
    rewards constant, nothing to clone, or a trained adapter bit-identical to where it
    started. The adapter stays; it is never counted as an update (design invariant 8)."""

    type: Literal["TrainingNoSignal"] = "TrainingNoSignal"
    generation: int
    algorithm: Algorithm
    reason: str
    job_id: str | None = None
    metrics: dict[str, float] = {}


class Candidate(Frozen):
    """One decision a search explores: what the Feedback Agent proposed, from which parent."""

    action: Action
    rationale: str
    harness_hash: str | None = None
    plan: TrainingPlan | None = None
    parent_generation: int | None = None
    """The generation whose harness and adapter it starts from (None: the incumbent)."""


class CandidatesProposed(BaseEvent):
    """The Feedback Agent's candidates for a generation (one search round)."""

    type: Literal["CandidatesProposed"] = "CandidatesProposed"
    generation: int
    round: int
    candidates: tuple[Candidate, ...]
    provider: str = "builtin"
    digest_summary: str = ""


class CandidateEvaluated(BaseEvent):
    """A candidate's branch, run to its dev score."""

    type: Literal["CandidateEvaluated"] = "CandidateEvaluated"
    generation: int
    round: int
    index: int
    run_id: str
    """The candidate's own fork of the run, where its episodes are recorded."""
    score: float | None
    rewards: tuple[float, ...] = ()
    harness_hash: str | None = None
    adapter_hash: str | None = None
    episodes: int = 0
    """Episodes the branch executed (for the episode budget)."""
    error: str | None = None


class CandidateChosen(BaseEvent):
    """The search round's outcome: the candidate adopted (None: the incumbent is kept)."""

    type: Literal["CandidateChosen"] = "CandidateChosen"
    generation: int
    round: int
    index: int | None
    reason: str


class TestScored(BaseEvent):
    """The final answer's held-out test score, measured once, at the end of the run."""

    __test__: ClassVar[bool] = False  # a pytest collector must not take it for a test class

    type: Literal["TestScored"] = "TestScored"
    generation: int
    harness_hash: str
    adapter_hash: str | None
    score: float | None
    n: int
    n_answered: int
    metrics: dict[str, float] = {}


class GenerationCompleted(BaseEvent):
    type: Literal["GenerationCompleted"] = "GenerationCompleted"
    generation: int
    dev_score: float
    best_generation: int


Event = Annotated[
    Union[
        RunCreated,
        RunForked,
        RunPaused,
        RunResumed,
        RunCompleted,
        RunFailed,
        HarnessProposed,
        GenerationStarted,
        EffectRequested,
        EffectCompleted,
        EffectFailed,
        EpisodeRecorded,
        EvaluationRecorded,
        FeedbackDecided,
        HarnessEdited,
        RolledBack,
        TrainingJobSubmitted,
        AnswerRefused,
        AgentStepRecorded,
        AdapterCheckpointed,
        TrainingNoSignal,
        CandidatesProposed,
        CandidateEvaluated,
        CandidateChosen,
        TestScored,
        GenerationCompleted,
    ],
    Field(discriminator="type"),
]

EVENT_CLASSES: dict[str, type[BaseEvent]] = {
    cls.model_fields["type"].default: cls
    for cls in BaseEvent.__subclasses__()
}
