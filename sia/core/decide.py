"""The state machine of the loop: every transition, in one pure function.

    decide(state) -> events

`decide` looks at the folded state and returns the next events to append: pure
transitions (a generation starts, completes, a decision is applied, the run ends) and
`EffectRequested` for anything that needs the outside world (an LLM, the sandbox, a
trainer). It keeps stepping through pure transitions until it needs an effect or the run
ends, so each batch it returns is one transaction, and `replay --check` can re-run it at
every batch boundary of a recorded log and demand the same answer.

While effects are pending it returns nothing: the runtime settles them first.

The loop, per generation g, once the meta effect has proposed a valid first harness
(re-asked until it does):

    GenerationStarted(g) → episode effects (one per dev sample) → evaluate effect
    → GenerationCompleted(g) → stop? RunCompleted : feedback effect
    → FeedbackDecided → [RolledBack] → HarnessEdited | train effect → AdapterCheckpointed
    → GenerationStarted(g+1)

A train effect with no learning signal ends in TrainingNoSignal instead of an adapter:
the generation has not moved, so the Feedback Agent is asked again (its request lists
the updates that had no signal), at most MAX_NO_SIGNAL times per generation; a decision
that repeats a plan already found to have no signal is recorded as such without training.

A search (version 4, `search.candidates` > 1) replaces the feedback step of each generation:

    feedback effect → CandidatesProposed → one candidate effect per candidate (each a fork
    of the run, driven to its dev score) → CandidateChosen: the best one if it beats the
    incumbent, and then the line above as if the Feedback Agent had decided it; otherwise
    the incumbent stays and feedback is asked again. From version 5, a round whose
    candidates are all explored is chosen before any stop condition is looked at.

At the end (version 4) a test effect scores the best generation once on held-out test.
"""

from __future__ import annotations

from typing import Any

from sia.core.effect_models import (
    CandidateOutcome,
    CandidateRequest,
    EffectRequest,
    EpisodeRef,
    EpisodeRequest,
    EvaluateRequest,
    FeedbackEpisode,
    FeedbackRequest,
    HistoryEntry,
    MetaRequest,
    NoSignalRecord,
    RewardShapeView,
    TestRequest,
    TrainEpisode,
    TrainRequest,
)
from sia.core.events.canonical import content_hash
from sia.core.events.types import (
    AgentLimits,
    BaseEvent,
    CandidateChosen,
    EffectRequested,
    GenerationCompleted,
    GenerationStarted,
    HarnessEdited,
    RolledBack,
    RunCompleted,
    RunFailed,
    TrainingNoSignal,
)
from sia.core.reducers.loop import evolve_unrecorded
from sia.core.reducers.state import Generation, LoopState, SearchRound
from sia.core.reward_shape import classify_episode_scores

DECIDER_VERSION = 5
"""The version of the transitions below that a new run records in RunCreated.

A recorded run is always decided by the version it was created with (as Temporal's
`patched` keeps old workflow histories on their old path), so its log keeps replaying
under `replay --check` after `decide` changes; a run recorded by a newer sia is refused.

1. milestone 1: the Feedback request carries the dev scores' shape only.
2. the Feedback request also names the generation's train rollouts (whose per-completion
   rewards are what a weight update sees), and updates without a learning signal are
   recorded as TrainingNoSignal and asked about again.
3. a rollback restores the adapter the target generation ran with, as it restores that
   generation's harness (versions 1 and 2 restored the adapter trained after it).
4. the final answer (the best generation's harness and adapter) is scored once on the
   held-out test split before the run completes, and a run with `search.candidates` > 1
   explores that many candidates per generation, each on its own fork, behind a keep-best gate.
5. a search round whose candidates have all been explored is concluded (the keep-best gate
   chooses) before a stop condition can end the run: under version 4 a budget spent by the
   round's own candidates ended the run first, and the best of them was thrown away.
"""


class UnknownDeciderVersion(Exception):
    """The run was recorded by a newer `decide` than this one; deciding it would diverge."""


MAX_PURE_STEPS = 32
"""Pure transitions per batch; a loop needs at most a handful before it needs an effect."""
MAX_NO_SIGNAL = 3
"""Weight updates without a learning signal a generation may record before it moves on."""


def decide(state: LoopState) -> list[BaseEvent]:
    """All events up to and including the next effect requests (or the run's end)."""
    if state.decider_version > DECIDER_VERSION:
        raise UnknownDeciderVersion(
            f"run {state.run_id} was recorded by decider version {state.decider_version}; this "
            f"sia decides with version {DECIDER_VERSION}: upgrade sia to resume or replay it")
    batch: list[BaseEvent] = []
    for _ in range(MAX_PURE_STEPS):
        events = step(state)
        if not events:
            break
        batch.extend(events)
        for event in events:
            state = evolve_unrecorded(state, event, state.seq + 1, state.run_id)._replace(seq=state.seq + 1)
        if state.pending or state.status != "running":
            break
    return batch


def step(state: LoopState) -> list[BaseEvent]:
    """The next transition from `state`: a short list of events, or [] to wait or stop."""
    if state.status != "running" or state.pending or state.config is None or state.task is None:
        return []
    config = state.config
    if state.harness_hash is None:
        if state.meta_attempts >= config.max_meta_attempts:
            problems = "; ".join(state.meta_problems) or "no harness"
            return [RunFailed(error=f"the Meta Agent gave no valid harness in "
                                    f"{state.meta_attempts} attempts: {problems}")]
        return [request_meta(state)]

    current = state.current
    if current is None:
        return [GenerationStarted(generation=0, harness_hash=state.harness_hash,
                                  adapter_hash=state.adapter_hash)]

    missing = [s for s in episode_ids(state, current.index) if s not in current.recorded_samples]
    if missing:
        return [request_episode(state, current, sample_id) for sample_id in missing]

    if current.score is None:
        failure = failed_effect(state, "evaluate", current.index)
        if failure:
            return [RunFailed(error=f"evaluation of generation {current.index} failed: {failure}")]
        return [request_evaluation(state, current)]

    if not current.completed:
        return [GenerationCompleted(generation=current.index, dev_score=current.score,
                                    best_generation=best_generation(state))]

    decision = current.decision
    if decision is None and exploring(state):
        return explore_step(state, current)
    if decision is None and state.decider_version >= 5 and searching(state):
        explored = explored_round(current)
        if explored is not None:
            return [choose(state, current, explored)]
    if decision is None:
        reason = stop_reason(state)
        if reason:
            return finish(state, reason)
        if searching(state):
            return search_step(state, current)
        failure = failed_effect(state, "feedback", current.index)
        if failure:
            return [RunFailed(error=f"feedback for generation {current.index} failed: {failure}")]
        return [request_feedback(state, current)]

    if current.no_signal and current.no_signal[-1].decision_seq == decision.seq:
        if exploring(state):
            return [completed(state, f"candidate {config.search.explore}: its weight update had no "
                                     f"learning signal: {current.no_signal[-1].reason}")]
        if len(current.no_signal) < MAX_NO_SIGNAL:
            failure = failed_effect(state, "feedback", current.index)
            if failure:
                return [RunFailed(error=f"feedback for generation {current.index} failed: {failure}")]
            return [request_feedback(state, current)]
        return [GenerationStarted(generation=current.index + 1, harness_hash=state.harness_hash,
                                  adapter_hash=state.adapter_hash)]

    if decision.action == "stop":
        return finish(state, f"the Feedback Agent decided to stop: {decision.rationale}")

    if decision.rollback_to is not None and not current.rolled_back:
        target = rollback_target(state, decision.rollback_to)
        if target is not None:
            return [RolledBack(generation=current.index, to_generation=target.index,
                               harness_hash=target.harness_hash,
                               adapter_hash=rollback_adapter(state, target))]

    if (decision.action == "edit_harness" and decision.harness_hash
            and not current.harness_edited and decision.harness_hash != state.harness_hash):
        return [HarnessEdited(generation=current.index, from_hash=state.harness_hash,
                              to_hash=decision.harness_hash)]

    if (decision.action == "update_weights" and config.mode == "WH" and decision.plan
            and current.adapter_hash_after is None
            and failed_effect(state, "train", current.index) is None):
        earlier = next((n for n in current.no_signal if n.algorithm == decision.plan.algorithm
                        and n.params == decision.plan.params), None)
        if earlier is not None:
            return [TrainingNoSignal(generation=current.index, algorithm=decision.plan.algorithm,
                                     reason=f"this plan already had no learning signal in generation "
                                            f"{current.index}: {earlier.reason}")]
        return [request_training(state, current)]

    return [GenerationStarted(generation=current.index + 1, harness_hash=state.harness_hash,
                              adapter_hash=state.adapter_hash)]


# ---------------------------------------------------------------- search


def searching(state: LoopState) -> bool:
    """Whether this run explores several candidates per generation (decider version 4 on)."""
    assert state.config is not None
    return state.decider_version >= 4 and state.config.search.candidates > 1


def exploring(state: LoopState) -> bool:
    """Whether this run is one candidate's branch of a search."""
    assert state.config is not None
    return state.decider_version >= 4 and state.config.search.explore is not None


def explore_step(state: LoopState, current: Generation) -> list[BaseEvent]:
    """A candidate's branch: adopt its candidate, run one generation, stop at its dev score."""
    assert state.config is not None
    index = state.config.search.explore
    if not current.rounds:
        return [completed(state, f"candidate {index} explored: dev score {current.score}")]
    search = current.rounds[-1]
    if search.decided or index is None or not 0 <= index < len(search.candidates):
        return [RunFailed(error=f"this branch explores candidate {index}, which round {search.round} "
                                f"of generation {current.index} does not offer")]
    return [CandidateChosen(generation=current.index, round=search.round, index=index,
                            reason=f"this branch explores candidate {index}")]


def explored_round(current: Generation) -> SearchRound | None:
    """The generation's last round, when every candidate has an outcome and none is chosen yet."""
    search = current.rounds[-1] if current.rounds else None
    if search is None or search.decided:
        return None
    return search if all(search.outcome(i) is not None for i in range(len(search.candidates))) else None


def search_step(state: LoopState, current: Generation) -> list[BaseEvent]:
    """One generation's search: ask for candidates, explore each, adopt the best or ask again."""
    assert state.config is not None
    rounds = current.rounds
    search = rounds[-1] if rounds else None
    if search is None or search.decided:
        rejected = len(rounds)
        if rejected >= state.config.patience:
            return finish(state, f"no candidate beat the incumbent in {rejected} rounds of generation "
                                 f"{current.index} (patience {state.config.patience})")
        failure = failed_effect(state, "feedback", current.index)
        if failure:
            return [RunFailed(error=f"feedback for generation {current.index} failed: {failure}")]
        return [request_feedback(state, current, search_round=len(rounds))]
    missing = [i for i in range(len(search.candidates)) if search.outcome(i) is None]
    if missing:
        return [request_candidate(state, current, search, i) for i in missing]
    return [choose(state, current, search)]


def choose(state: LoopState, current: Generation, search: SearchRound) -> CandidateChosen:
    """The keep-best gate: adopt the best candidate only if it strictly beats the incumbent."""
    incumbent = state.best_score
    scored = [o for o in search.outcomes if o.score is not None]
    if not scored:
        errors = "; ".join(f"{o.index}: {o.error}" for o in search.outcomes)
        return CandidateChosen(generation=current.index, round=search.round, index=None,
                               reason=f"every candidate's branch failed ({errors}); the incumbent is kept")
    best = max(scored, key=lambda o: (o.score, -o.index))
    assert best.score is not None
    if incumbent is None or best.score > incumbent:
        return CandidateChosen(generation=current.index, round=search.round, index=best.index,
                               reason=f"candidate {best.index} scored {best.score:.4f} on dev, above the "
                                      f"incumbent's {incumbent if incumbent is None else round(incumbent, 4)}")
    return CandidateChosen(generation=current.index, round=search.round, index=None,
                           reason=f"no candidate beat the incumbent's {incumbent:.4f} (best: candidate "
                                  f"{best.index} at {best.score:.4f}); the incumbent is kept")


def pareto_parents(state: LoopState) -> tuple[int, ...]:
    """Generations best on at least one dev sample and dominated by none (GEPA's front)."""
    assert state.task is not None
    n = len(state.task.dev_ids)
    scored = [(g.index, g.rewards[:n]) for g in state.generations if g.completed and len(g.rewards) >= n]
    if not scored:
        return ()
    tops = [max(rewards[i] for _, rewards in scored) for i in range(n)]
    leaders = [(index, rewards) for index, rewards in scored
               if any(rewards[i] == tops[i] for i in range(n))]

    def dominated(rewards: tuple[float, ...]) -> bool:
        return any(all(o >= r for o, r in zip(other, rewards)) and other != rewards
                   for _, other in leaders)

    return tuple(index for index, rewards in leaders if not dominated(rewards))


def tried_candidates(state: LoopState) -> tuple[CandidateOutcome, ...]:
    """Every candidate of every earlier round, with what became of it."""
    tried: list[CandidateOutcome] = []
    for generation in state.generations:
        for search in generation.rounds:
            for index, candidate in enumerate(search.candidates):
                outcome = search.outcome(index)
                chosen = search.decided and search.chosen == index
                note = ("adopted" if chosen else search.reason if search.decided else "being explored")
                if outcome is not None and outcome.error:
                    note = f"its branch failed: {outcome.error}"
                tried.append(CandidateOutcome(
                    generation=generation.index, round=search.round, index=index, action=candidate.action,
                    harness_hash=candidate.harness_hash,
                    algorithm=candidate.plan.algorithm if candidate.plan else None,
                    parent_generation=candidate.parent_generation,
                    score=outcome.score if outcome else None, chosen=chosen, note=note))
    return tuple(tried)


# ---------------------------------------------------------------- which samples run


def rollout_ids(state: LoopState, generation: int) -> tuple[str, ...]:
    """The train samples whose trajectories feed a weight update (mode WH only)."""
    task, config = state.task, state.config
    assert task is not None and config is not None
    if config.mode != "WH" or not task.rollouts_per_generation or not task.train_ids:
        return ()
    ranked = sorted(task.train_ids,
                    key=lambda i: content_hash({"seed": config.seed, "generation": generation, "id": i}))
    return tuple(ranked[: task.rollouts_per_generation])


def episode_ids(state: LoopState, generation: int) -> tuple[str, ...]:
    """Dev samples (scored) first, then this generation's rollouts (training data)."""
    assert state.task is not None
    return state.task.dev_ids + rollout_ids(state, generation)


# ---------------------------------------------------------------- stopping and best


def best_generation(state: LoopState) -> int:
    """Highest dev score wins; the earliest on a tie, so a later equal score is no 'gain'."""
    scored = [g for g in state.generations if g.score is not None]
    return max(scored, key=lambda g: (g.score, -g.index)).index


def stop_reason(state: LoopState) -> str | None:
    config = state.config
    assert config is not None and state.current is not None
    done = sum(1 for g in state.generations if g.completed)
    if done >= config.max_generations:
        return f"max_generations ({config.max_generations}) reached"
    spent, budget = state.ledger.total, config.budget
    for name, used, limit in (
        ("tokens", spent.tokens, budget.tokens),
        ("dollars", spent.dollars, budget.dollars),
        ("wall_s", spent.wall_s, budget.wall_s),
        ("gpu_s", spent.gpu_s, budget.gpu_s),
    ):
        if limit is not None and used >= limit:
            return f"budget exhausted: {name} {used:g} >= {limit:g}"
    episodes = episodes_spent(state)
    if budget.episodes is not None and episodes >= budget.episodes:
        return f"budget exhausted: episodes {episodes} >= {budget.episodes}"
    good_enough = config.search.good_enough
    if good_enough is not None and state.best_score is not None and state.best_score >= good_enough:
        return f"good enough: the incumbent's dev score {state.best_score:.4f} >= {good_enough:g}"
    if state.best_generation is not None:
        stale = state.current.index - state.best_generation
        if stale >= config.patience:
            return f"no improvement for {stale} generations (patience {config.patience})"
    return None


def episodes_spent(state: LoopState) -> int:
    """Episodes executed for this run: its own (cache hits are free) and its candidates'."""
    own = state.ledger.by_kind.get("episode")
    return (own.effects - own.cache_hits if own else 0) + state.candidate_episodes


def completed(state: LoopState, reason: str) -> RunCompleted:
    best = state.best_generation
    return RunCompleted(reason=reason, best_generation=best, best_score=state.best_score)


def finish(state: LoopState, reason: str) -> list[BaseEvent]:
    """End the run; from decider version 4, first score the final answer on held-out test."""
    task, best = state.task, state.best_generation
    assert task is not None
    if (state.decider_version < 4 or not task.test_size or best is None or state.test is not None
            or exploring(state)):
        return [completed(state, reason)]
    failure = failed_effect(state, "test", best)
    if failure:
        return [completed(state, f"{reason}; the held-out test score could not be measured: {failure}")]
    return [request_test(state, state.generations[best])]


def rollback_target(state: LoopState, index: int) -> Generation | None:
    return state.generations[index] if 0 <= index < len(state.generations) else None


def failed_effect(state: LoopState, kind: str, generation: int) -> str | None:
    for failure in state.failed[::-1]:  # mypy types reversed() of NamedTuples as Any
        if failure.kind == kind and failure.request.get("generation") == generation:
            return failure.error
    return None


# ---------------------------------------------------------------- effect requests


def derive_seed(run_seed: int, kind: str, request: dict[str, Any]) -> int:
    """A handler's seed: from the run seed and what is asked, not from where it is asked,
    so the same request in a fork gets the same seed and is served from the cache."""
    return int(content_hash({"run_seed": run_seed, "kind": kind, "request": request})[:12], 16)


def effect_id_for(kind: str, request_hash: str) -> str:
    """Content-addressed: the same request is the same effect on every branch.

    Requests carry their position in the loop (generation, sample, attempt, the harness
    and adapter hashes they run on), so ids never repeat within a history, while a fork
    that asks exactly what its parent asked gets the same id: one cache entry, and one
    idempotency key for an external job (a Modal call is never submitted twice).
    """
    return content_hash({"kind": kind, "request_hash": request_hash})[:32]


def request_effect(state: LoopState, request: EffectRequest) -> EffectRequested:
    """Record `request` with its derived seed, under its content-addressed id."""
    assert state.config is not None
    unseeded = request.record(with_seed=False)
    recorded = {**unseeded, "seed": derive_seed(state.config.seed, request.kind, unseeded)}
    request_hash = content_hash(recorded)
    return EffectRequested(effect_id=effect_id_for(request.kind, request_hash),
                           kind=request.kind, request=recorded, request_hash=request_hash)


def _task_fields(state: LoopState) -> dict[str, str]:
    assert state.task is not None
    return {"task": state.task.name, "task_hash": state.task.task_hash}


def request_meta(state: LoopState) -> EffectRequested:
    assert state.config is not None
    return request_effect(state, MetaRequest(
        **_task_fields(state), provider=state.config.meta, attempt=state.meta_attempts + 1,
        problems=state.meta_problems, limits=agent_limits(state)))


def agent_limits(state: LoopState) -> AgentLimits | None:
    assert state.config is not None
    return state.config.agent if state.decider_version >= 4 else None


def request_episode(state: LoopState, generation: Generation, sample_id: str) -> EffectRequested:
    assert state.config is not None
    return request_effect(state, EpisodeRequest(
        **_task_fields(state), generation=generation.index, sample_id=sample_id,
        harness_hash=generation.harness_hash, adapter_hash=generation.adapter_hash,
        target=state.config.target))


def request_evaluation(state: LoopState, generation: Generation) -> EffectRequested:
    by_sample = {e.sample_id: e for e in generation.episodes}
    return request_effect(state, EvaluateRequest(
        **_task_fields(state), generation=generation.index,
        predictions=tuple((s, by_sample[s].prediction) for s in episode_ids(state, generation.index))))


def request_feedback(state: LoopState, generation: Generation, search_round: int | None = None) -> EffectRequested:
    config = state.config
    assert config is not None and state.task is not None
    # The dev scores' shape, as recorded runs were asked; a Feedback handler that can score
    # completions replaces it with the shape of the rewards a weight update would see
    # (sia.agents.reward_view), from the trajectories this request names.
    shape = classify_episode_scores(generation.rewards[: len(state.task.dev_ids)])
    history = tuple(
        HistoryEntry(generation=g.index, score=g.score, harness_hash=g.harness_hash,
                     adapter_hash=g.adapter_hash_after or g.adapter_hash,
                     action=g.decision.action if g.decision else None,
                     algorithm=g.decision.algorithm if g.decision else None,
                     no_signal=no_signal_records(g))
        for g in state.generations)
    rewards = episode_rewards(state, generation)
    dev = set(state.task.dev_ids)
    rollouts = set(rollout_ids(state, generation.index)) if state.decider_version >= 2 else set()
    return request_effect(state, FeedbackRequest(
        **_task_fields(state),
        generation=generation.index, provider=config.feedback, mode=config.mode,
        harness_hash=state.harness_hash, adapter_hash=state.adapter_hash, history=history,
        best_generation=state.best_generation,
        episodes=tuple(
            FeedbackEpisode(episode_id=e.episode_id, sample_id=e.sample_id, status=e.status,
                            prediction=e.prediction, reward=rewards.get(e.sample_id, 0.0),
                            trajectory_hash=e.trajectory_hash)
            for e in generation.episodes if e.sample_id in dev),
        reward_shape=RewardShapeView(kind=shape.kind, recommended=shape.recommended_algorithm,
                                     reason=shape.reason),
        force=config.feedback_force,
        rollouts=tuple(EpisodeRef(episode_id=e.episode_id, sample_id=e.sample_id,
                                  trajectory_hash=e.trajectory_hash)
                       for e in generation.episodes if e.sample_id in rollouts),
        no_signal=no_signal_records(generation), limits=agent_limits(state),
        **search_fields(state, search_round)))


def search_fields(state: LoopState, search_round: int | None) -> dict[str, Any]:
    """What a search round asks the Feedback Agent beyond a line's request."""
    if search_round is None:
        return {}
    assert state.config is not None
    return {"candidates": state.config.search.candidates, "round": search_round,
            "tried": tried_candidates(state),
            "parents": pareto_parents(state) if state.config.search.parents == "pareto" else ()}


def request_candidate(state: LoopState, generation: Generation, search: SearchRound,
                      index: int) -> EffectRequested:
    return request_effect(state, CandidateRequest(
        **_task_fields(state), generation=generation.index, round=search.round, index=index,
        fork_seq=search.seq, candidate=search.candidates[index]))


def request_test(state: LoopState, generation: Generation) -> EffectRequested:
    assert state.config is not None
    return request_effect(state, TestRequest(
        **_task_fields(state), generation=generation.index, harness_hash=generation.harness_hash,
        adapter_hash=generation.adapter_hash, target=state.config.target))


def request_training(state: LoopState, generation: Generation) -> EffectRequested:
    config, decision = state.config, generation.decision
    assert config is not None and decision is not None and decision.plan is not None
    rewards = episode_rewards(state, generation)
    rollouts = set(rollout_ids(state, generation.index))
    chosen = set(decision.plan.episodes)
    pool = [e for e in generation.episodes if e.sample_id in rollouts] or list(generation.episodes)
    return request_effect(state, TrainRequest(
        **_task_fields(state), generation=generation.index, trainer=config.trainer,
        target=config.target, algorithm=decision.plan.algorithm, params=decision.plan.params,
        initial_adapter_hash=state.adapter_hash, harness_hash=state.harness_hash,
        episodes=tuple(
            TrainEpisode(episode_id=e.episode_id, sample_id=e.sample_id,
                         reward=rewards.get(e.sample_id, 0.0), trajectory_hash=e.trajectory_hash)
            for e in pool if not chosen or e.episode_id in chosen)))


def rollback_adapter(state: LoopState, target: Generation) -> str | None:
    """The adapter a rollback to `target` restores: the one `target` was scored with."""
    if state.decider_version >= 3:
        return target.adapter_hash
    return target.adapter_hash_after or target.adapter_hash


def no_signal_records(generation: Generation) -> tuple[NoSignalRecord, ...]:
    """The weight updates of `generation` that had no learning signal, for the Feedback Agent."""
    return tuple(NoSignalRecord(algorithm=n.algorithm, params=dict(n.params), reason=n.reason)
                 for n in generation.no_signal)


def episode_rewards(state: LoopState, generation: Generation) -> dict[str, float]:
    """Reward per sample id, in the order the evaluation request listed them."""
    return dict(zip(episode_ids(state, generation.index), generation.rewards))
