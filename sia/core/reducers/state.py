"""The folded state of a run: immutable values that only `evolve` produces.

Collections are tuples and dicts that are copied, never mutated, so every intermediate
state stays valid (a fork at seq N is exactly the state at N) and `state_hash` can prove
that two folds agree byte for byte (`outcome_hash`, that two runs agree but for timings).

The records are NamedTuples: immutable, and built and copied in C. Folding makes a few
copies per event, and on a small CPU frozen dataclasses made that 4-10x slower.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, NamedTuple

from sia.core.events.canonical import GENESIS_HASH, content_hash
from sia.core.events.types import Candidate, RunConfig, RunStatus, TaskIdentity, TrainingPlan, Usage

EMPTY: Any = MappingProxyType({})
"""The default for mapping fields: shared, so it must be (and is) read-only."""


class Spend(NamedTuple):
    tokens_in: int = 0
    tokens_out: int = 0
    dollars: float = 0.0
    wall_s: float = 0.0
    gpu_s: float = 0.0
    effects: int = 0
    cache_hits: int = 0
    failures: int = 0

    def add(self, usage: Usage, *, cache_hit: bool = False, failed: bool = False) -> Spend:
        return Spend(
            self.tokens_in + usage.tokens_in,
            self.tokens_out + usage.tokens_out,
            self.dollars + usage.dollars,
            self.wall_s + usage.wall_s,
            self.gpu_s + usage.gpu_s,
            self.effects + (0 if failed else 1),
            self.cache_hits + int(cache_hit),
            self.failures + int(failed),
        )

    @property
    def tokens(self) -> int:
        return self.tokens_in + self.tokens_out


ZERO = Spend()


class Ledger(NamedTuple):
    """Spend of the whole branch (`total`), of this run's own events (`own`), and by kind
    (of the branch, and of this run's own events)."""

    total: Spend = ZERO
    own: Spend = ZERO
    by_kind: dict[str, Spend] = EMPTY
    own_by_kind: dict[str, Spend] = EMPTY

    def add(self, kind: str, usage: Usage, own: bool, *, cache_hit: bool = False,
            failed: bool = False) -> Ledger:
        total = self.total.add(usage, cache_hit=cache_hit, failed=failed)
        if not own:
            mine = self.own
        elif self.own is self.total:
            mine = total  # an unforked run: its own spend is the branch's, computed once
        else:
            mine = self.own.add(usage, cache_hit=cache_hit, failed=failed)
        spent = self.by_kind.get(kind, ZERO).add(usage, cache_hit=cache_hit, failed=failed)
        own_by_kind = self.own_by_kind
        if own:
            own_spent = own_by_kind.get(kind, ZERO).add(usage, cache_hit=cache_hit, failed=failed)
            own_by_kind = {**own_by_kind, kind: own_spent}
        return Ledger(total, mine, {**self.by_kind, kind: spent}, own_by_kind)


class AgentStep(NamedTuple):
    """A journaled step of an effect's investigation (AgentStepRecorded)."""

    # A NamedTuple field named index shadows the tuple.index method.
    index: int  # type: ignore[assignment]
    kind: str
    name: str
    blob_hash: str
    summary: str
    usage: Usage


class PendingEffect(NamedTuple):
    """Requested, not yet completed: what resume must reconcile."""

    effect_id: str
    kind: str
    request: dict[str, Any]
    request_hash: str
    seq: int
    attempts: int = 0
    job_id: str | None = None
    call_id: str | None = None
    steps: tuple[AgentStep, ...] = ()
    """The investigation so far, when the effect is an agent's: resumed, never repeated."""


class FailedEffect(NamedTuple):
    effect_id: str
    kind: str
    request: dict[str, Any]
    error: str


class Episode(NamedTuple):
    episode_id: str
    sample_id: str
    status: str
    prediction: str | None
    trajectory_hash: str | None
    error: str | None


class Decision(NamedTuple):
    generation: int
    seq: int
    action: str
    rationale: str
    algorithm: str | None
    recommended_algorithm: str | None
    evidence: tuple[str, ...]
    digest_hash: str | None
    digest_summary: str
    harness_hash: str | None
    plan: TrainingPlan | None
    rollback_to: int | None
    provider: str
    forced: bool


class NoSignal(NamedTuple):
    """A weight update of a generation that had no learning signal, and the decision it served."""

    algorithm: str
    params: dict[str, Any]
    reason: str
    decision_seq: int


class CandidateRecord(NamedTuple):
    """A candidate's branch, run to its dev score (`score` None: the branch failed)."""

    # A NamedTuple field named index shadows the tuple.index method.
    index: int  # type: ignore[assignment]
    run_id: str
    score: float | None
    rewards: tuple[float, ...]
    harness_hash: str | None
    adapter_hash: str | None
    episodes: int
    error: str | None


class SearchRound(NamedTuple):
    """One round of a generation's search: the candidates proposed and what became of them."""

    round: int
    seq: int
    """The seq of CandidatesProposed: where each candidate's branch forks."""
    provider: str
    digest_summary: str
    candidates: tuple[Candidate, ...]
    outcomes: tuple[CandidateRecord, ...] = ()
    decided: bool = False
    chosen: int | None = None
    reason: str = ""

    def outcome(self, index: int) -> CandidateRecord | None:
        return next((o for o in self.outcomes if o.index == index), None)


class TestRecord(NamedTuple):
    """The final answer's held-out score."""

    generation: int
    harness_hash: str
    adapter_hash: str | None
    score: float | None
    n: int
    n_answered: int
    metrics: dict[str, float] = EMPTY


class Generation(NamedTuple):
    # A NamedTuple field named index shadows the tuple.index method.
    index: int  # type: ignore[assignment]
    harness_hash: str
    adapter_hash: str | None
    episodes: tuple[Episode, ...] = ()
    recorded_samples: frozenset[str] = frozenset()
    score: float | None = None
    rewards: tuple[float, ...] = ()
    failures: dict[str, int] = EMPTY
    completed: bool = False
    decision: Decision | None = None
    rolled_back: bool = False
    harness_edited: bool = False
    adapter_hash_after: str | None = None
    spend: Spend = ZERO
    no_signal: tuple[NoSignal, ...] = ()
    rounds: tuple[SearchRound, ...] = ()


class LoopState(NamedTuple):
    run_id: str | None = None
    seq: int = 0
    decider_version: int = 1
    last_hash: str = GENESIS_HASH
    status: RunStatus = "new"
    config: RunConfig | None = None
    task: TaskIdentity | None = None
    parent_run_id: str | None = None
    fork_seq: int | None = None
    overrides: dict[str, str] = EMPTY
    harness_hash: str | None = None
    adapter_hash: str | None = None
    meta_attempts: int = 0
    meta_problems: tuple[str, ...] = ()
    generations: tuple[Generation, ...] = ()
    pending: dict[str, PendingEffect] = EMPTY
    failed: tuple[FailedEffect, ...] = ()
    best_generation: int | None = None
    best_score: float | None = None
    ledger: Ledger = Ledger()
    stop_reason: str | None = None
    error: str | None = None
    candidate_episodes: int = 0
    """Episodes the branches of this run's search executed (its own ledger has the rest)."""
    test: TestRecord | None = None

    @property
    def generation(self) -> int | None:
        return self.generations[-1].index if self.generations else None

    @property
    def current(self) -> Generation | None:
        return self.generations[-1] if self.generations else None

    @property
    def decisions(self) -> tuple[Decision, ...]:
        return tuple(g.decision for g in self.generations if g.decision is not None)

    @property
    def dev_scores(self) -> tuple[float | None, ...]:
        return tuple(g.score for g in self.generations)


def to_jsonable(value: Any) -> Any:
    """A plain-JSON view of state values, for hashing and `sia show --json`."""
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return {name: to_jsonable(item) for name, item in zip(value._fields, value)}
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, (dict, MappingProxyType)):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, frozenset):
        return sorted(to_jsonable(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value


def state_hash(state: LoopState) -> str:
    """sha256 of the canonical JSON of the state: equal folds, equal hashes.

    `last_hash` is left out: it chains the log's bytes, wall-clock stamps included, and
    the hash chain already proves those. Everything else is in, measured timings too, so
    two runs of the same settings (in two homes, or one resumed after a crash that re-ran
    an effect) differ here whenever their effects took different times: compare those
    by `outcome_hash`.
    """
    view = to_jsonable(state)
    del view["last_hash"]
    return content_hash(view)


MEASURED: tuple[str, ...] = ("wall_s", "gpu_s")
"""Spend fields a clock measures: how fast this machine was, not what the run did."""

NAMES: tuple[str, ...] = ("last_hash", "run_id", "parent_run_id")
"""State fields that name a history rather than describe it: run ids carry the clock
time and a random token they were created with, and `last_hash` chains the stamps."""


def outcome_hash(state: LoopState) -> str:
    """`state_hash` without measurements or names: what a run decided, scored and spent.

    Two runs of the same settings whose effects returned the same results have the same
    outcome hash, in any home and at any speed, while their state hashes differ by their
    timings. Left out: the names in `NAMES` and the `MEASURED` timings of every Spend
    (the ledger's and each generation's). Kept: tokens, dollars and the counts of effects,
    cache hits and failures, which follow from the recorded results rather than from a
    clock, and every setting, budgets in seconds included, since those steer decisions.
    """
    view = to_jsonable(state)
    for name in NAMES:
        del view[name]
    ledger = state.ledger
    view["ledger"] = {"total": _unmeasured(ledger.total), "own": _unmeasured(ledger.own),
                      "by_kind": {k: _unmeasured(s) for k, s in ledger.by_kind.items()},
                      "own_by_kind": {k: _unmeasured(s) for k, s in ledger.own_by_kind.items()}}
    for generation, folded in zip(view["generations"], state.generations):
        generation["spend"] = _unmeasured(folded.spend)
    return content_hash(view)


def _unmeasured(spend: Spend) -> dict[str, Any]:
    return {k: v for k, v in zip(spend._fields, spend) if k not in MEASURED}
