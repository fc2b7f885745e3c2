"""`decide`, branch by branch, in the Decider pattern's given-when-then form.

*Given* a history written out as the real events a run would record, *when* `decide`
looks at its fold, *then* it returns exactly these events. Effects in the given histories
carry made-up ids (the reducers only link a completion to its request), so each test
states its history without asking `decide` to write it.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from sia.core.decide import DECIDER_VERSION, MAX_NO_SIGNAL, UnknownDeciderVersion, decide
from sia.core.events.types import (
    Action,
    AdapterCheckpointed,
    Algorithm,
    BaseEvent,
    Budget,
    Candidate,
    CandidateChosen,
    CandidateEvaluated,
    CandidatesProposed,
    EffectCompleted,
    EffectFailed,
    EffectRequested,
    EpisodeRecorded,
    EvaluationRecorded,
    FeedbackDecided,
    GenerationCompleted,
    GenerationStarted,
    HarnessEdited,
    HarnessProposed,
    RolledBack,
    RunCompleted,
    RunCreated,
    RunFailed,
    RunPaused,
    SearchConfig,
    TaskIdentity,
    TestScored,
    TrainingNoSignal,
    TrainingPlan,
    Usage,
)
from sia.core.reducers.loop import evolve_unrecorded
from sia.core.reducers.state import LoopState
from sia.effects.deterministic import TOY_DEV_IDS, toy_task
from tests.conftest import toy_config

TRAIN_IDS = tuple(f"toy-train-{i:02d}" for i in range(6))
ROLLOUTS = 2
GRPO = TrainingPlan(algorithm="grpo", params={"lr": 1e-4})

_effect_ids = itertools.count()


# ---------------------------------------------------------------- the given histories


def given(*events: BaseEvent | list[BaseEvent]) -> LoopState:
    """The state a run is in after `events` (lists are spliced in order)."""
    state = LoopState()
    for event in _flat(events):
        state = evolve_unrecorded(state, event, state.seq + 1, "run")._replace(seq=state.seq + 1)
    return state


def _flat(events: tuple[BaseEvent | list[BaseEvent], ...]) -> list[BaseEvent]:
    return [e for item in events for e in (item if isinstance(item, list) else [item])]


def task_with_rollouts() -> TaskIdentity:
    return toy_task().model_copy(update={"train_ids": TRAIN_IDS,
                                         "rollouts_per_generation": ROLLOUTS})


def created(task: TaskIdentity | None = None, version: int = DECIDER_VERSION,
            **config: Any) -> RunCreated:
    return RunCreated(config=toy_config(**{"max_generations": 5, **config}),
                      task=task or toy_task(), decider_version=version)


def requested(kind: str, generation: int | None) -> EffectRequested:
    effect_id = f"{kind}-{next(_effect_ids)}"
    request = {} if generation is None else {"generation": generation}
    return EffectRequested(effect_id=effect_id, kind=kind, request=request, request_hash=effect_id)


def answered(kind: str, generation: int | None, *facts: BaseEvent,
             usage: Usage = Usage()) -> list[BaseEvent]:
    """An effect requested, completed, and the facts its result was interpreted as."""
    request = requested(kind, generation)
    completion = EffectCompleted(effect_id=request.effect_id, kind=kind, result={}, usage=usage)
    return [request, completion, *facts]


def failed(kind: str, generation: int | None, error: str = "boom", *,
           will_retry: bool = False) -> list[BaseEvent]:
    request = requested(kind, generation)
    return [request, EffectFailed(effect_id=request.effect_id, kind=kind, error=error, attempt=1,
                                  will_retry=will_retry)]


def proposed(harness: str | None = "h0", problems: tuple[str, ...] = ()) -> list[BaseEvent]:
    return answered("meta", None, HarnessProposed(effect_id="meta", harness_hash=harness,
                                                  valid=harness is not None, problems=problems))


def episodes(generation: int, sample_ids: tuple[str, ...]) -> list[BaseEvent]:
    return _flat(tuple(answered("episode", generation, EpisodeRecorded(
        generation=generation, episode_id=f"ep-{generation}-{s}", sample_id=s, status="ok",
        prediction=f"answer-{s}", trajectory_hash=f"traj-{generation}-{s}"))
        for s in sample_ids))


def evaluated(generation: int, score: float, n: int = len(TOY_DEV_IDS),
              usage: Usage = Usage()) -> list[BaseEvent]:
    rewards = tuple(1.0 if i < round(score * n) else 0.0 for i in range(n))
    return answered("evaluate", generation, EvaluationRecorded(
        generation=generation, score=score, rewards=rewards, n=n, n_answered=n), usage=usage)


def generation(index: int, score: float, best: int, harness: str = "h0",
               adapter: str | None = None, samples: tuple[str, ...] = TOY_DEV_IDS,
               usage: Usage = Usage()) -> list[BaseEvent]:
    """A whole generation: started, every episode in, scored, completed."""
    return [GenerationStarted(generation=index, harness_hash=harness, adapter_hash=adapter),
            *episodes(index, samples), *evaluated(index, score, len(samples), usage),
            GenerationCompleted(generation=index, dev_score=score, best_generation=best)]


def decided(generation: int, action: Action, **fields: Any) -> list[BaseEvent]:
    return answered("feedback", generation, FeedbackDecided(
        generation=generation, action=action, rationale="because", **fields))


def checkpointed(generation: int, adapter: str) -> list[BaseEvent]:
    return answered("train", generation, AdapterCheckpointed(
        generation=generation, job_id="job", adapter_hash=adapter, config_hash="cfg",
        algorithm="grpo"))


def without_signal(generation: int, algorithm: Algorithm = "grpo") -> list[BaseEvent]:
    return answered("train", generation, TrainingNoSignal(
        generation=generation, algorithm=algorithm, reason="every group's rewards are constant"))


def requests(events: list[BaseEvent], kind: str) -> list[dict[str, Any]]:
    return [e.request for e in events if isinstance(e, EffectRequested) and e.kind == kind]


def types(events: list[BaseEvent]) -> list[str]:
    return [e.type for e in events]


# ---------------------------------------------------------------- the first harness


def test_a_new_run_first_asks_the_meta_agent_for_a_harness() -> None:
    events = decide(given(created()))
    assert types(events) == ["EffectRequested"]
    [request] = requests(events, "meta")
    assert (request["task"], request["provider"], request["attempt"], request["problems"]) == \
        ("toy", "deterministic", 1, [])


def test_an_invalid_proposal_asks_the_meta_agent_again_with_its_problems() -> None:
    events = decide(given(created(), proposed(None, ("no run() function",))))
    [request] = requests(events, "meta")
    assert (request["attempt"], request["problems"]) == (2, ["no run() function"])


def test_invalid_proposals_up_to_max_meta_attempts_fail_the_run() -> None:
    state = given(created(max_meta_attempts=2), proposed(None, ("syntax error",)),
                  proposed(None, ("no run() function",)))
    assert decide(state) == [RunFailed(error="the Meta Agent gave no valid harness in 2 attempts: "
                                             "no run() function")]


# ---------------------------------------------------------------- a generation's episodes


def test_a_valid_harness_starts_generation_zero_with_an_episode_per_dev_sample() -> None:
    events = decide(given(created(), proposed("h0")))
    assert events[0] == GenerationStarted(generation=0, harness_hash="h0", adapter_hash=None)
    episode_requests = requests(events, "episode")
    assert types(events) == ["GenerationStarted"] + ["EffectRequested"] * len(TOY_DEV_IDS)
    assert [r["sample_id"] for r in episode_requests] == list(TOY_DEV_IDS)
    assert {(r["generation"], r["harness_hash"], r["adapter_hash"], r["target"])
            for r in episode_requests} == {(0, "h0", None, "deterministic")}


def test_mode_wh_also_requests_a_seeded_subset_of_train_rollouts_after_the_dev_samples() -> None:
    events = decide(given(created(task_with_rollouts(), mode="WH"), proposed()))
    sample_ids = [r["sample_id"] for r in requests(events, "episode")]
    assert sample_ids[: len(TOY_DEV_IDS)] == list(TOY_DEV_IDS)
    rollouts = sample_ids[len(TOY_DEV_IDS):]
    assert len(rollouts) == ROLLOUTS and set(rollouts) <= set(TRAIN_IDS)
    again = decide(given(created(task_with_rollouts(), mode="WH"), proposed()))
    assert [r["sample_id"] for r in requests(again, "episode")] == sample_ids


def test_mode_h_never_runs_train_rollouts() -> None:
    events = decide(given(created(task_with_rollouts(), mode="H"), proposed()))
    assert [r["sample_id"] for r in requests(events, "episode")] == list(TOY_DEV_IDS)


def test_only_the_episodes_not_yet_recorded_are_requested() -> None:
    state = given(created(), proposed(), GenerationStarted(generation=0, harness_hash="h0",
                                                          adapter_hash=None),
                  episodes(0, TOY_DEV_IDS[:5]))
    assert [r["sample_id"] for r in requests(decide(state), "episode")] == list(TOY_DEV_IDS[5:])


def test_evaluation_is_requested_once_every_episode_is_in() -> None:
    state = given(created(), proposed(), GenerationStarted(generation=0, harness_hash="h0",
                                                          adapter_hash=None),
                  episodes(0, TOY_DEV_IDS))
    events = decide(state)
    assert types(events) == ["EffectRequested"]
    [request] = requests(events, "evaluate")
    assert request["generation"] == 0
    assert request["predictions"] == [[s, f"answer-{s}"] for s in TOY_DEV_IDS]


def test_a_failed_evaluation_fails_the_run() -> None:
    state = given(created(), proposed(), GenerationStarted(generation=0, harness_hash="h0",
                                                          adapter_hash=None),
                  episodes(0, TOY_DEV_IDS), failed("evaluate", 0, "scorer crashed"))
    assert decide(state) == [RunFailed(error="evaluation of generation 0 failed: scorer crashed")]


# ---------------------------------------------------------------- completing and stopping


def _scored_not_completed(score: float, **config: Any) -> LoopState:
    return given(created(**config), proposed(),
                 GenerationStarted(generation=0, harness_hash="h0", adapter_hash=None),
                 episodes(0, TOY_DEV_IDS), evaluated(0, score))


def test_a_scored_generation_is_completed_and_then_feedback_is_asked() -> None:
    events = decide(_scored_not_completed(0.5))
    assert events[0] == GenerationCompleted(generation=0, dev_score=0.5, best_generation=0)
    assert types(events) == ["GenerationCompleted", "EffectRequested"]
    [request] = requests(events, "feedback")
    assert (request["generation"], request["mode"], request["provider"], request["harness_hash"],
            request["adapter_hash"], request["best_generation"], request["force"]) == \
        (0, "WH", "deterministic", "h0", None, 0, None)
    assert request["history"] == [{"generation": 0, "score": 0.5, "harness_hash": "h0",
                                   "adapter_hash": None, "action": None, "algorithm": None}]
    assert [e["sample_id"] for e in request["episodes"]] == list(TOY_DEV_IDS)
    assert [e["reward"] for e in request["episodes"]] == [1.0] * 4 + [0.0] * 4
    assert request["reward_shape"] == {
        "kind": "binary", "recommended": "grpo",
        "reason": "binary pass/fail at 50%: group-relative advantages"}


def test_a_completed_generation_at_max_generations_completes_the_run() -> None:
    events = decide(_scored_not_completed(0.5, max_generations=1))
    assert events == [GenerationCompleted(generation=0, dev_score=0.5, best_generation=0),
                      RunCompleted(reason="max_generations (1) reached", best_generation=0,
                                   best_score=0.5)]


def test_a_later_equal_score_does_not_take_the_best_generation() -> None:
    state = given(created(), proposed(), generation(0, 0.5, best=0), decided(0, "edit_harness"),
                  GenerationStarted(generation=1, harness_hash="h0", adapter_hash=None),
                  episodes(1, TOY_DEV_IDS), evaluated(1, 0.5))
    assert decide(state)[0] == GenerationCompleted(generation=1, dev_score=0.5, best_generation=0)


def test_generations_without_improvement_for_patience_complete_the_run() -> None:
    state = given(created(patience=1), proposed(), generation(0, 0.5, best=0),
                  decided(0, "edit_harness"),
                  GenerationStarted(generation=1, harness_hash="h0", adapter_hash=None),
                  episodes(1, TOY_DEV_IDS), evaluated(1, 0.25))
    assert decide(state) == [
        GenerationCompleted(generation=1, dev_score=0.25, best_generation=0),
        RunCompleted(reason="no improvement for 1 generations (patience 1)", best_generation=0,
                     best_score=0.5),
    ]


@pytest.mark.parametrize(("budget", "usage", "reason"), [
    (Budget(tokens=100), Usage(tokens_in=60, tokens_out=40), "budget exhausted: tokens 100 >= 100"),
    (Budget(dollars=0.5), Usage(dollars=0.75), "budget exhausted: dollars 0.75 >= 0.5"),
    (Budget(wall_s=10.0), Usage(wall_s=12.0), "budget exhausted: wall_s 12 >= 10"),
    (Budget(gpu_s=60.0), Usage(gpu_s=60.0), "budget exhausted: gpu_s 60 >= 60"),
])
def test_spending_a_budget_completes_the_run(budget: Budget, usage: Usage, reason: str) -> None:
    state = given(created(budget=budget), proposed(),
                  GenerationStarted(generation=0, harness_hash="h0", adapter_hash=None),
                  episodes(0, TOY_DEV_IDS), evaluated(0, 0.5, usage=usage))
    assert decide(state)[1] == RunCompleted(reason=reason, best_generation=0, best_score=0.5)


def test_spend_below_every_budget_asks_for_feedback() -> None:
    budget = Budget(tokens=101, dollars=1.0, wall_s=13.0, gpu_s=61.0)
    usage = Usage(tokens_in=100, dollars=0.75, wall_s=12.0, gpu_s=60.0)
    state = given(created(budget=budget), proposed(),
                  GenerationStarted(generation=0, harness_hash="h0", adapter_hash=None),
                  episodes(0, TOY_DEV_IDS), evaluated(0, 0.5, usage=usage))
    assert [r["generation"] for r in requests(decide(state), "feedback")] == [0]


def test_a_failed_feedback_fails_the_run() -> None:
    state = given(created(), proposed(), generation(0, 0.5, best=0),
                  failed("feedback", 0, "rate limited"))
    assert decide(state) == [RunFailed(error="feedback for generation 0 failed: rate limited")]


def test_the_feedback_agent_deciding_to_stop_completes_the_run() -> None:
    state = given(created(), proposed(), generation(0, 0.5, best=0), decided(0, "stop"))
    assert decide(state) == [RunCompleted(reason="the Feedback Agent decided to stop: because",
                                          best_generation=0, best_score=0.5)]


# ---------------------------------------------------------------- acting on a decision


def test_an_edited_harness_is_recorded_and_the_next_generation_runs_it() -> None:
    state = given(created(), proposed(), generation(0, 0.5, best=0),
                  decided(0, "edit_harness", harness_hash="h1"))
    events = decide(state)
    assert events[:2] == [HarnessEdited(generation=0, from_hash="h0", to_hash="h1"),
                          GenerationStarted(generation=1, harness_hash="h1", adapter_hash=None)]
    assert {(r["generation"], r["harness_hash"])
            for r in requests(events, "episode")} == {(1, "h1")}


def test_an_edit_to_the_same_harness_records_no_edit() -> None:
    state = given(created(), proposed(), generation(0, 0.5, best=0),
                  decided(0, "edit_harness", harness_hash="h0"))
    events = decide(state)
    assert events[0] == GenerationStarted(generation=1, harness_hash="h0", adapter_hash=None)
    assert "HarnessEdited" not in types(events)


def test_a_weight_update_in_mode_wh_requests_training_on_the_rollouts() -> None:
    task = task_with_rollouts()
    rollouts = tuple(r["sample_id"] for r in requests(decide(given(created(task), proposed())),
                                                      "episode"))[len(TOY_DEV_IDS):]
    state = given(created(task), proposed(),
                  generation(0, 0.5, best=0, samples=TOY_DEV_IDS + rollouts),
                  decided(0, "update_weights", plan=GRPO))
    events = decide(state)
    assert types(events) == ["EffectRequested"]
    [request] = requests(events, "train")
    assert (request["generation"], request["trainer"], request["target"], request["algorithm"],
            request["params"], request["initial_adapter_hash"], request["harness_hash"]) == \
        (0, "deterministic", "deterministic", "grpo", {"lr": 1e-4}, None, "h0")
    assert [e["sample_id"] for e in request["episodes"]] == list(rollouts)
    assert [e["trajectory_hash"] for e in request["episodes"]] == [f"traj-0-{s}" for s in rollouts]


def test_a_plan_that_names_episodes_trains_on_those_only() -> None:
    chosen = (f"ep-0-{TOY_DEV_IDS[1]}", f"ep-0-{TOY_DEV_IDS[6]}")
    state = given(created(), proposed(), generation(0, 0.5, best=0),
                  decided(0, "update_weights", plan=GRPO.model_copy(update={"episodes": chosen})))
    [request] = requests(decide(state), "train")
    assert [e["episode_id"] for e in request["episodes"]] == list(chosen)
    assert [e["reward"] for e in request["episodes"]] == [1.0, 0.0]


def test_a_weight_update_in_mode_h_never_trains_and_moves_on() -> None:
    state = given(created(mode="H"), proposed(), generation(0, 0.5, best=0),
                  decided(0, "update_weights", plan=GRPO))
    events = decide(state)
    assert events[0] == GenerationStarted(generation=1, harness_hash="h0", adapter_hash=None)
    assert requests(events, "train") == []


def test_a_checkpointed_adapter_is_what_the_next_generation_runs_with() -> None:
    state = given(created(), proposed(), generation(0, 0.5, best=0),
                  decided(0, "update_weights", plan=GRPO), checkpointed(0, "a1"))
    events = decide(state)
    assert events[0] == GenerationStarted(generation=1, harness_hash="h0", adapter_hash="a1")
    assert {r["adapter_hash"] for r in requests(events, "episode")} == {"a1"}


def test_a_failed_training_moves_on_with_the_adapter_unchanged() -> None:
    state = given(created(), proposed(), generation(0, 0.5, best=0),
                  decided(0, "update_weights", plan=GRPO), failed("train", 0, "out of memory"))
    events = decide(state)
    assert events[0] == GenerationStarted(generation=1, harness_hash="h0", adapter_hash=None)
    assert requests(events, "train") == []


def test_the_next_generation_asks_for_feedback_with_the_history_of_decisions() -> None:
    state = given(created(), proposed(), generation(0, 0.5, best=0),
                  decided(0, "update_weights", plan=GRPO), checkpointed(0, "a1"),
                  generation(1, 0.75, best=1, adapter="a1"))
    [request] = requests(decide(state), "feedback")
    assert request["history"] == [
        {"generation": 0, "score": 0.5, "harness_hash": "h0", "adapter_hash": "a1",
         "action": "update_weights", "algorithm": "grpo"},
        {"generation": 1, "score": 0.75, "harness_hash": "h0", "adapter_hash": "a1",
         "action": None, "algorithm": None},
    ]
    assert (request["generation"], request["adapter_hash"],
            request["best_generation"]) == (1, "a1", 1)


# ---------------------------------------------------------------- updates without a signal


def test_an_update_without_signal_asks_for_feedback_again_listing_it() -> None:
    state = given(created(), proposed(), generation(0, 0.5, best=0),
                  decided(0, "update_weights", plan=GRPO), without_signal(0))
    events = decide(state)
    assert types(events) == ["EffectRequested"]
    [request] = requests(events, "feedback")
    record = {"algorithm": "grpo", "params": {"lr": 1e-4},
              "reason": "every group's rewards are constant"}
    assert request["generation"] == 0
    assert request["no_signal"] == [record]
    assert request["history"][0]["no_signal"] == [record]


def test_a_different_plan_after_an_update_without_signal_is_trained() -> None:
    state = given(created(), proposed(), generation(0, 0.5, best=0),
                  decided(0, "update_weights", plan=GRPO), without_signal(0),
                  decided(0, "update_weights", plan=TrainingPlan(algorithm="best_of_n")))
    [request] = requests(decide(state), "train")
    assert (request["generation"], request["algorithm"], request["params"]) == (0, "best_of_n", {})


def test_a_repeated_plan_without_signal_is_recorded_as_such_without_training() -> None:
    state = given(created(), proposed(), generation(0, 0.5, best=0),
                  decided(0, "update_weights", plan=GRPO), without_signal(0),
                  decided(0, "update_weights", plan=GRPO))
    events = decide(state)
    assert types(events) == ["TrainingNoSignal", "EffectRequested"]
    assert events[0] == TrainingNoSignal(
        generation=0, algorithm="grpo",
        reason="this plan already had no learning signal in generation 0: "
               "every group's rewards are constant")
    [request] = requests(events, "feedback")
    assert [n["algorithm"] for n in request["no_signal"]] == ["grpo", "grpo"]
    assert requests(events, "train") == []


def test_updates_without_signal_are_capped_at_max_no_signal_per_generation() -> None:
    rounds = [[*decided(0, "update_weights", plan=TrainingPlan(algorithm=algorithm)),
               *without_signal(0, algorithm)]
              for algorithm in ("grpo", "dpo", "best_of_n")[:MAX_NO_SIGNAL]]
    state = given(created(), proposed(), generation(0, 0.5, best=0), *rounds)
    events = decide(state)
    assert events[0] == GenerationStarted(generation=1, harness_hash="h0", adapter_hash=None)
    assert requests(events, "feedback") == [] and requests(events, "train") == []


def test_a_failed_feedback_after_an_update_without_signal_fails_the_run() -> None:
    state = given(created(), proposed(), generation(0, 0.5, best=0),
                  decided(0, "update_weights", plan=GRPO), without_signal(0),
                  failed("feedback", 0, "timed out"))
    assert decide(state) == [RunFailed(error="feedback for generation 0 failed: timed out")]


# ---------------------------------------------------------------- rollbacks


def test_a_rollback_restores_the_best_generations_harness_before_the_edit() -> None:
    state = given(created(), proposed(), generation(0, 0.5, best=0),
                  decided(0, "edit_harness", harness_hash="h1"),
                  HarnessEdited(generation=0, from_hash="h0", to_hash="h1"),
                  generation(1, 0.25, best=0, harness="h1"),
                  decided(1, "edit_harness", harness_hash="h2", rollback_to=0))
    events = decide(state)
    assert events[:3] == [
        RolledBack(generation=1, to_generation=0, harness_hash="h0", adapter_hash=None),
        HarnessEdited(generation=1, from_hash="h0", to_hash="h2"),
        GenerationStarted(generation=2, harness_hash="h2", adapter_hash=None),
    ]


def test_a_rollback_without_an_edit_runs_the_best_generations_harness_again() -> None:
    state = given(created(), proposed(), generation(0, 0.5, best=0),
                  decided(0, "edit_harness", harness_hash="h1"),
                  HarnessEdited(generation=0, from_hash="h0", to_hash="h1"),
                  generation(1, 0.25, best=0, harness="h1"),
                  decided(1, "edit_harness", harness_hash="h0", rollback_to=0))
    events = decide(state)
    assert events[:2] == [
        RolledBack(generation=1, to_generation=0, harness_hash="h0", adapter_hash=None),
        GenerationStarted(generation=2, harness_hash="h0", adapter_hash=None),
    ]


def _regressed_after_an_update(version: int) -> LoopState:
    return given(created(version=version), proposed(), generation(0, 0.5, best=0),
                 decided(0, "update_weights", plan=GRPO), checkpointed(0, "a1"),
                 generation(1, 0.25, best=0, adapter="a1"),
                 decided(1, "edit_harness", harness_hash="h2", rollback_to=0))


def test_a_rollback_restores_the_adapter_the_best_generation_ran_with() -> None:
    assert decide(_regressed_after_an_update(DECIDER_VERSION))[0] == RolledBack(
        generation=1, to_generation=0, harness_hash="h0", adapter_hash=None)


def test_runs_of_decider_version_2_keep_restoring_the_adapter_trained_after_it() -> None:
    """Recorded runs keep their transitions, so their logs replay (see DECIDER_VERSION)."""
    assert decide(_regressed_after_an_update(2))[0] == RolledBack(
        generation=1, to_generation=0, harness_hash="h0", adapter_hash="a1")


def test_a_rollback_to_a_generation_that_does_not_exist_is_ignored() -> None:
    state = given(created(), proposed(), generation(0, 0.5, best=0),
                  decided(0, "edit_harness", harness_hash="h1", rollback_to=7))
    events = decide(state)
    assert events[:2] == [HarnessEdited(generation=0, from_hash="h0", to_hash="h1"),
                          GenerationStarted(generation=1, harness_hash="h1", adapter_hash=None)]


# ---------------------------------------------------------------- forced decisions


def test_a_forced_decision_is_passed_to_the_feedback_agent() -> None:
    state = _scored_not_completed(0.5, feedback_force="update_weights:dpo")
    [request] = requests(decide(state), "feedback")
    assert request["force"] == "update_weights:dpo"


def test_a_forced_weight_update_is_trained_with_the_forced_algorithm() -> None:
    state = given(created(feedback_force="update_weights:dpo"), proposed(),
                  generation(0, 0.5, best=0),
                  decided(0, "update_weights", plan=TrainingPlan(algorithm="dpo"), forced=True))
    [request] = requests(decide(state), "train")
    assert (request["algorithm"], request["generation"]) == ("dpo", 0)


# ---------------------------------------------------------------- waiting and ending


def test_nothing_is_decided_while_an_effect_is_pending() -> None:
    assert decide(given(created(), requested("meta", None))) == []


def test_an_effect_that_will_be_retried_is_still_pending() -> None:
    state = given(created(), proposed(), generation(0, 0.5, best=0),
                  failed("feedback", 0, "429", will_retry=True))
    assert decide(state) == []


@pytest.mark.parametrize("end", [
    RunCompleted(reason="done", best_generation=0, best_score=0.5),
    RunFailed(error="broken"),
    RunPaused(reason="Ctrl-C"),
])
def test_a_run_that_is_not_running_decides_nothing(end: BaseEvent) -> None:
    state = given(created(), proposed(), generation(0, 0.5, best=0), end)
    assert state.status != "running"
    assert decide(state) == []


# ---------------------------------------------------------------- decider versions


def _wh_feedback_request(version: int) -> dict[str, Any]:
    task = task_with_rollouts()
    rollouts = tuple(r["sample_id"] for r in requests(decide(given(created(task), proposed())),
                                                      "episode"))[len(TOY_DEV_IDS):]
    state = given(created(task, version=version), proposed(),
                  GenerationStarted(generation=0, harness_hash="h0", adapter_hash=None),
                  episodes(0, TOY_DEV_IDS + rollouts),
                  evaluated(0, 0.5, len(TOY_DEV_IDS) + ROLLOUTS))
    [request] = requests(decide(state), "feedback")
    return {**request, "expected_rollouts": list(rollouts)}


def test_decider_version_2_names_the_train_rollouts_in_the_feedback_request() -> None:
    request = _wh_feedback_request(2)
    assert [r["sample_id"] for r in request["rollouts"]] == request["expected_rollouts"]
    assert [r["trajectory_hash"] for r in request["rollouts"]] == \
        [f"traj-0-{s}" for s in request["expected_rollouts"]]
    assert [e["sample_id"] for e in request["episodes"]] == list(TOY_DEV_IDS)


def test_decider_version_1_asks_for_feedback_as_recorded_runs_were_asked() -> None:
    request = _wh_feedback_request(1)
    assert "rollouts" not in request
    assert [e["sample_id"] for e in request["episodes"]] == list(TOY_DEV_IDS)


def test_a_run_recorded_by_a_newer_decider_is_refused() -> None:
    state = given(created(version=DECIDER_VERSION + 1))
    with pytest.raises(UnknownDeciderVersion, match=f"decider version {DECIDER_VERSION + 1}"):
        decide(state)


# ---------------------------------------------------------------- search, and the end of a run (version 4)


def _candidate(index: int) -> Candidate:
    return Candidate(action="edit_harness", rationale=f"candidate {index}", harness_hash=f"c{index}")


def round_proposed(generation_: int, round_: int, n: int = 2) -> list[BaseEvent]:
    return answered("feedback", generation_, CandidatesProposed(
        generation=generation_, round=round_, candidates=tuple(_candidate(i) for i in range(n))))


def candidate_scored(generation_: int, round_: int, index: int, score: float | None) -> list[BaseEvent]:
    return answered("candidate", generation_, CandidateEvaluated(
        generation=generation_, round=round_, index=index, run_id=f"run~c{index}", score=score,
        harness_hash=f"c{index}", episodes=8, error=None if score is not None else "boom"))


def searching(**config: Any) -> RunCreated:
    return created(**{"search": SearchConfig(candidates=2), **config})


def test_a_search_asks_for_candidates_naming_how_many_and_the_round() -> None:
    events = decide(given(searching(), proposed(), generation(0, 0.5, 0)))
    [request] = requests(events, "feedback")
    assert (request["candidates"], request["round"]) == (2, 0)


def test_each_proposed_candidate_is_explored_from_where_it_was_proposed() -> None:
    state = given(searching(), proposed(), generation(0, 0.5, 0), round_proposed(0, 0))
    events = decide(state)
    asked = requests(events, "candidate")
    assert [r["index"] for r in asked] == [0, 1]
    assert {r["fork_seq"] for r in asked} == {state.current.rounds[-1].seq}
    assert asked[1]["candidate"]["harness_hash"] == "c1"


def test_the_best_candidate_above_the_incumbent_is_adopted_and_becomes_the_next_generation() -> None:
    events = decide(given(searching(), proposed(), generation(0, 0.5, 0), round_proposed(0, 0),
                          candidate_scored(0, 0, 0, 0.625), candidate_scored(0, 0, 1, 0.75)))
    assert types(events)[:3] == ["CandidateChosen", "HarnessEdited", "GenerationStarted"]
    chosen, edited = events[0], events[1]
    assert isinstance(chosen, CandidateChosen) and chosen.index == 1
    assert isinstance(edited, HarnessEdited) and edited.to_hash == "c1"


def test_no_candidate_above_the_incumbent_keeps_it_and_asks_again_with_what_was_tried() -> None:
    events = decide(given(searching(), proposed(), generation(0, 0.5, 0), round_proposed(0, 0),
                          candidate_scored(0, 0, 0, 0.5), candidate_scored(0, 0, 1, None)))
    assert types(events)[0] == "CandidateChosen" and events[0].index is None
    [request] = requests(events, "feedback")
    assert request["round"] == 1
    assert [(t["index"], t["score"], t["chosen"]) for t in request["tried"]] == [(0, 0.5, False), (1, None, False)]
    assert "its branch failed: boom" in request["tried"][1]["note"]


def test_patience_rounds_without_a_better_candidate_end_the_search() -> None:
    rounds: list[BaseEvent] = []
    for r in range(2):
        rounds += [*round_proposed(0, r), *candidate_scored(0, r, 0, 0.25), *candidate_scored(0, r, 1, 0.25),
                   CandidateChosen(generation=0, round=r, index=None, reason="kept")]
    events = decide(given(searching(patience=2), proposed(), generation(0, 0.5, 0), rounds))
    assert types(events) == ["RunCompleted"]
    assert "no candidate beat the incumbent in 2 rounds" in events[0].reason


def test_a_candidates_branch_adopts_its_candidate_and_stops_after_its_generation() -> None:
    branch = searching(search=SearchConfig(candidates=2, explore=1))
    state = given(branch, proposed(), generation(0, 0.5, 0), round_proposed(0, 0))
    events = decide(state)
    assert types(events)[:2] == ["CandidateChosen", "HarnessEdited"] and events[0].index == 1
    done = given(branch, proposed(), generation(0, 0.5, 0), round_proposed(0, 0),
                 CandidateChosen(generation=0, round=0, index=1, reason="explore"),
                 HarnessEdited(generation=0, from_hash="h0", to_hash="c1"), generation(1, 0.75, 1, harness="c1"))
    assert types(decide(done)) == ["RunCompleted"]


def test_a_branch_asked_to_explore_a_candidate_its_round_lacks_fails_clearly() -> None:
    branch = searching(search=SearchConfig(candidates=2, explore=5))
    events = decide(given(branch, proposed(), generation(0, 0.5, 0), round_proposed(0, 0)))
    assert types(events) == ["RunFailed"] and "explores candidate 5" in events[0].error


def test_a_run_with_a_test_split_scores_its_best_generation_once_before_it_completes() -> None:
    task = toy_task().model_copy(update={"test_size": 8})
    end = given(created(task, max_generations=2), proposed(), generation(0, 0.5, 0),
                decided(0, "edit_harness", harness_hash="h1"), HarnessEdited(generation=0, from_hash="h0", to_hash="h1"),
                generation(1, 0.25, 0, harness="h1"))
    [request] = requests(decide(end), "test")
    assert (request["generation"], request["harness_hash"]) == (0, "h0")
    scored = given(created(task, max_generations=2), proposed(), generation(0, 0.5, 0),
                   decided(0, "edit_harness", harness_hash="h1"),
                   HarnessEdited(generation=0, from_hash="h0", to_hash="h1"), generation(1, 0.25, 0, harness="h1"),
                   answered("test", 0, TestScored(generation=0, harness_hash="h0", adapter_hash=None, score=0.5,
                                                  n=8, n_answered=8)))
    assert types(decide(scored)) == ["RunCompleted"]
    broken = given(created(task, max_generations=2), proposed(), generation(0, 0.5, 0),
                   decided(0, "stop"), failed("test", 0, "sandbox gone"))
    [done] = decide(broken)
    assert isinstance(done, RunCompleted) and "test score could not be measured: sandbox gone" in done.reason


def test_a_run_recorded_before_version_4_completes_without_a_test_score() -> None:
    task = toy_task().model_copy(update={"test_size": 8})
    events = decide(given(created(task, version=3, max_generations=1), proposed(), generation(0, 0.5, 0)))
    assert types(events) == ["RunCompleted"]


def test_a_round_whose_candidates_spent_the_budget_still_adopts_the_best_of_them() -> None:
    """The round's own candidates spend the budget; its best still beats the incumbent, so it is
    chosen and becomes the final answer's generation before the run ends (version 5)."""
    explored = [searching(budget=Budget(episodes=20)), proposed(), generation(0, 0.0, 0),
                round_proposed(0, 0), candidate_scored(0, 0, 0, 0.25), candidate_scored(0, 0, 1, 0.5)]
    events = decide(given(*explored))
    assert types(events)[:3] == ["CandidateChosen", "HarnessEdited", "GenerationStarted"]
    assert isinstance(events[0], CandidateChosen) and events[0].index == 1
    assert isinstance(events[1], HarnessEdited) and events[1].to_hash == "c1"
    version_4 = decide(given(searching(budget=Budget(episodes=20), version=4), *explored[1:]))
    assert types(version_4) == ["RunCompleted"]  # a recorded version-4 run replays as it ran


def test_an_episode_budget_counts_the_searchs_branches() -> None:
    events = decide(given(searching(budget=Budget(episodes=20)), proposed(), generation(0, 0.5, 0),
                          round_proposed(0, 0), candidate_scored(0, 0, 0, 0.25), candidate_scored(0, 0, 1, 0.25),
                          CandidateChosen(generation=0, round=0, index=None, reason="kept")))
    assert types(events) == ["RunCompleted"] and "budget exhausted: episodes 24 >= 20" in events[0].reason
