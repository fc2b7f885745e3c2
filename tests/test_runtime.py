from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import sia.runtime.replay
from sia.core.decide import MAX_NO_SIGNAL, decide
from sia.core.effect_models import EpisodeRequest, MetaRequest, MetaResult, TrainRequest, TrainResult
from sia.core.events.mapper import MAPPER
from sia.core.events.types import EffectRequested, RunConfig
from sia.core.reducers.state import state_hash
from sia.effects.base import EffectContext, EffectResult, HandlerRegistry, TransientEffectError
from sia.effects.deterministic import deterministic_registry, toy_task
from sia.runtime.loop import Runtime, load_state
from sia.runtime.replay import check_run
from sia.store.base import LeaseHeld
from sia.store.memory import MemoryEventStore
from tests.conftest import toy_config


class Counting:
    """Wraps a registry and counts handler executions per kind and effect id."""

    def __init__(self, registry: HandlerRegistry) -> None:
        self.calls: Counter[str] = Counter()
        self.by_effect: Counter[str] = Counter()
        self.registry = HandlerRegistry({k: self._wrap(h) for k, h in registry.handlers.items()})

    def _wrap(self, handler: Any) -> Any:
        counting = self

        class Wrapped:
            kind = handler.kind

            def run(self, request: dict, ctx: EffectContext) -> EffectResult:
                counting.calls[handler.kind] += 1
                counting.by_effect[ctx.effect_id] += 1
                return handler.run(request, ctx)

        return Wrapped()


def make_runtime(store: MemoryEventStore | None = None, registry: HandlerRegistry | None = None,
                 **kwargs: Any) -> Runtime:
    return Runtime(store or MemoryEventStore(), registry or deterministic_registry(),
                   home=Path("/nonexistent"), sleep=lambda s: None, **kwargs)


def run_toy(runtime: Runtime, run_id: str = "run", **config: Any) -> str:
    runtime.create(toy_config(**config), toy_task(), run_id=run_id)
    runtime.drive(run_id)
    return run_id


# ---------------------------------------------------------------- the loop


def test_a_run_alternates_edits_and_training_and_tracks_the_best() -> None:
    runtime = make_runtime()
    state = runtime.drive(run_toy(runtime, max_generations=4) and "run")
    assert state.status == "completed" and state.stop_reason == "max_generations (4) reached"
    assert [d.action for d in state.decisions] == ["edit_harness", "update_weights", "edit_harness"]
    assert state.decisions[1].algorithm == state.decisions[1].recommended_algorithm
    assert state.generations[2].adapter_hash is not None
    assert state.best_score == max(s for s in state.dev_scores if s is not None)
    assert state.dev_scores[-1] > state.dev_scores[0]


def test_budget_and_patience_stop_the_run() -> None:
    runtime = make_runtime()
    state = load_state(runtime.store, run_toy(runtime, "b", max_generations=9,
                                                budget={"dollars": 0.008}))
    assert state.stop_reason == "budget exhausted: dollars 0.008 >= 0.008"
    assert len(state.decisions) == 2
    runtime = make_runtime()
    state = load_state(runtime.store, run_toy(runtime, "p", max_generations=20, patience=1,
                                                feedback_force="edit_harness", seed=3))
    assert state.stop_reason is not None and "no improvement for 1 generations" in state.stop_reason


def test_a_regression_is_rolled_back_to_the_best_generation() -> None:
    for seed in range(40):
        runtime = make_runtime()
        state = load_state(runtime.store, run_toy(runtime, max_generations=5, seed=seed))
        rollbacks = [d for d in state.decisions if d.rollback_to is not None]
        if rollbacks:
            decision = rollbacks[0]
            best = state.generations[decision.rollback_to]
            assert state.generations[decision.generation].score < best.score
            assert state.generations[decision.generation].rolled_back
            return
    pytest.fail("no seed in 0..39 produced a regression to roll back")


def test_episode_outcomes_land_in_request_order_whatever_finishes_first() -> None:
    class Jittery:
        kind = "episode"
        inner = deterministic_registry().get("episode")

        def run(self, request: dict, ctx: EffectContext) -> EffectResult:
            time.sleep(random.random() * 0.01)
            return self.inner.run(request, ctx)

    registry = deterministic_registry()
    registry.register(Jittery())
    fast, slow = make_runtime(registry=registry, concurrency=4), make_runtime(concurrency=1)
    run_toy(fast, max_generations=2)
    run_toy(slow, max_generations=2)
    episodes = [MAPPER.decode(e).event.sample_id for e in fast.store.read("run")
                if e.type == "EpisodeRecorded"]
    assert episodes[:8] == list(toy_task().dev_ids)
    assert state_hash(load_state(fast.store, "run")) == state_hash(load_state(slow.store, "run"))


# ---------------------------------------------------------------- failures and retries


def test_transient_failures_are_retried_with_recorded_backoff() -> None:
    class Flaky:
        kind = "feedback"
        inner = deterministic_registry().get("feedback")
        failures = 2

        def run(self, request: dict, ctx: EffectContext) -> EffectResult:
            if self.failures:
                self.failures -= 1
                raise TransientEffectError("429 rate limited", retry_after=7.0)
            return self.inner.run(request, ctx)

    registry = deterministic_registry()
    registry.register(Flaky())
    slept: list[float] = []
    runtime = make_runtime(registry=registry)
    runtime.sleep = slept.append
    run_toy(runtime, max_generations=2)
    failed = [MAPPER.decode(e).event for e in runtime.store.read("run") if e.type == "EffectFailed"]
    assert [(f.attempt, f.will_retry, f.retry_in_s) for f in failed] == [(1, True, 7.0), (2, True, 7.0)]
    assert slept == [7.0, 7.0]
    state = load_state(runtime.store, "run")
    assert state.status == "completed" and state.ledger.total.failures == 2


def test_a_failing_episode_is_recorded_and_the_run_goes_on() -> None:
    class Broken:
        kind = "episode"

        def run(self, request: EpisodeRequest, ctx: EffectContext) -> EffectResult:
            if request.sample_id == "toy-03":
                raise RuntimeError("gateway vanished")
            if request.sample_id == "toy-04":  # another kind's answer: not an episode's
                return EffectResult(MetaResult(harness_hash=None, valid=False))
            return deterministic_registry().get("episode").run(request, ctx)

    registry = deterministic_registry()
    registry.register(Broken())
    runtime = make_runtime(registry=registry)
    state = load_state(runtime.store, run_toy(runtime, max_generations=2))
    assert state.status == "completed"
    episodes = {e.sample_id: e for e in (MAPPER.decode(r).event for r in runtime.store.read("run"))
                if e.type == "EpisodeRecorded" and e.generation == 0}
    assert episodes["toy-03"].status == "error" and "gateway vanished" in episodes["toy-03"].error
    assert episodes["toy-04"].status == "error" and "does not fit its schema" in episodes["toy-04"].error
    assert state.generations[0].rewards[3] == 0.0


def test_a_meta_agent_that_never_succeeds_fails_the_run_clearly() -> None:
    class Hopeless:
        kind = "meta"

        def run(self, request: MetaRequest, ctx: EffectContext) -> EffectResult:
            return EffectResult(MetaResult(harness_hash=None, valid=False,
                                           problems=(f"attempt {request.attempt}: no solve()",)))

    registry = deterministic_registry()
    registry.register(Hopeless())
    runtime = make_runtime(registry=registry)
    state = load_state(runtime.store, run_toy(runtime))
    assert state.status == "failed"
    assert state.error == "the Meta Agent gave no valid harness in 3 attempts: attempt 3: no solve()"


def test_ctrl_c_pauses_and_resume_continues() -> None:
    class Interrupting:
        kind = "evaluate"
        inner = deterministic_registry().get("evaluate")
        armed = True

        def run(self, request: dict, ctx: EffectContext) -> EffectResult:
            if self.armed:
                self.armed = False
                raise KeyboardInterrupt
            return self.inner.run(request, ctx)

    registry = deterministic_registry()
    registry.register(Interrupting())
    runtime = make_runtime(registry=registry)
    runtime.create(toy_config(max_generations=2), toy_task(), run_id="run")
    with pytest.raises(KeyboardInterrupt):
        runtime.drive("run")
    assert load_state(runtime.store, "run").status == "paused"
    state = runtime.drive("run")
    assert state.status == "completed"
    types = [e.type for e in runtime.store.read("run")]
    assert "RunPaused" in types and "RunResumed" in types


def test_a_second_live_driver_is_refused() -> None:
    runtime = make_runtime()
    runtime.create(toy_config(), toy_task(), run_id="run")
    runtime.store.acquire_lease("run", "otherhost:1:abcd", ttl_s=60)
    with pytest.raises(LeaseHeld, match="otherhost:1:abcd"):
        runtime.drive("run")
    assert runtime.store.last_seq("run") == 1


# ---------------------------------------------------------------- forks, cache, no repeats


def test_fork_at_every_seq_replays_the_parent_state_and_never_writes_to_it() -> None:
    store = MemoryEventStore()
    run_toy(make_runtime(store), max_generations=2)
    parent = list(store.read("run"))
    scores = load_state(store, "run").dev_scores
    for seq in range(1, len(parent) + 1):
        state = load_state(store, "run", upto=seq)
        child = make_runtime(store).fork("run", seq, state.config, {}, run_id=f"f{seq}")
        assert load_state(store, child, upto=seq) == state
        finished = make_runtime(store).drive(child)
        assert finished.dev_scores == scores and check_run(store, child).ok
    assert list(store.read("run")) == parent


def test_forks_of_forks_twenty_deep_resume_to_the_same_result() -> None:
    store = MemoryEventStore()
    run_toy(make_runtime(store), max_generations=3)
    parent, config = "run", load_state(store, "run").config
    for depth in range(20):
        at = store.last_seq(parent) - 1
        parent = make_runtime(store).fork(parent, at, config, {}, run_id=f"d{depth}")
        make_runtime(store).drive(parent, max_batches=2)
    state = make_runtime(store).drive(parent)
    assert len(store.chain(parent)) == 21
    assert state.dev_scores == load_state(store, "run").dev_scores
    assert check_run(store, parent).ok


def test_resume_replay_and_fork_repeat_no_completed_effect() -> None:
    counting = Counting(deterministic_registry())
    store = MemoryEventStore()
    runtime = make_runtime(store, counting.registry)
    run_toy(runtime, max_generations=3)
    first = sum(counting.calls.values())
    assert max(counting.by_effect.values()) == 1
    runtime.drive("run")
    assert check_run(store, "run").ok
    assert sum(counting.calls.values()) == first
    config = load_state(store, "run").config
    for seq in (5, 40, store.last_seq("run") - 3):
        fork = runtime.fork("run", seq, config, {}, run_id=f"fork-{seq}")
        state = runtime.drive(fork)
        assert state.dev_scores == load_state(store, "run").dev_scores
        assert state.ledger.own.cache_hits == state.ledger.own.effects > 0
    assert sum(counting.calls.values()) == first


def test_forced_decision_through_a_fork_override() -> None:
    from sia.core.config import apply_overrides

    store = MemoryEventStore()
    run_toy(make_runtime(store), max_generations=3)
    feedback = next(e.seq for e in store.read("run")
                    if e.type == "EffectRequested" and '"kind":"feedback"' in e.payload)
    overrides = {"feedback.force": "update_weights:dpo", "max_gen": "4"}
    config = apply_overrides(load_state(store, "run").config, overrides)
    fork = make_runtime(store).fork("run", feedback - 1, config, overrides, run_id="forced")
    state = make_runtime(store).drive(fork)
    first = state.decisions[0]
    assert (first.action, first.algorithm, first.forced) == ("update_weights", "dpo", True)
    assert state.overrides == overrides and len(state.generations) == 4


def test_cache_modes() -> None:
    counting = Counting(deterministic_registry())
    store = MemoryEventStore()
    run_toy(make_runtime(store, counting.registry, cache="off"), "a", max_generations=2)
    calls = sum(counting.calls.values())
    run_toy(make_runtime(store, counting.registry, cache="readwrite"), "b", max_generations=2)
    assert sum(counting.calls.values()) == 2 * calls
    run_toy(make_runtime(store, counting.registry, cache="read"), "c", max_generations=2)
    assert sum(counting.calls.values()) == 2 * calls
    assert load_state(store, "c").ledger.total.cache_hits == calls


# ---------------------------------------------------------------- replay --check


def test_replay_check_passes_and_catches_a_changed_decider(monkeypatch: pytest.MonkeyPatch) -> None:
    store = MemoryEventStore()
    run_toy(make_runtime(store), max_generations=3)
    report = check_run(store, "run")
    assert report.ok and report.decisions_checked > 5 and report.outcomes_checked > 20

    def drifted(state: Any) -> list:
        events = decide(state)
        return [e.model_copy(update={"request_hash": "0" * 64})
                if isinstance(e, EffectRequested) and e.kind == "feedback" else e for e in events]

    monkeypatch.setattr(sia.runtime.replay, "decide", drifted)
    report = check_run(store, "run")
    first_feedback = next(e.seq for e in store.read("run")
                          if e.type == "EffectRequested" and '"kind":"feedback"' in e.payload)
    assert report.divergence is not None and report.divergence.seq == first_feedback
    assert "request_hash=0000" in report.divergence.expected
    assert "kind=feedback" in report.divergence.recorded


def test_replay_to_a_seq() -> None:
    store = MemoryEventStore()
    run_toy(make_runtime(store), max_generations=2)
    assert check_run(store, "run", upto=30).ok
    assert check_run(store, "run", upto=30).state.seq == 30


def test_run_config_defaults_are_sane() -> None:
    config = RunConfig(task="x")
    assert (config.mode, config.max_generations, config.meta) == ("WH", 3, "builtin")


def test_resume_reattaches_to_a_submitted_training_job() -> None:
    seen: list[str | None] = []

    class DiesAfterSubmitting:
        kind = "train"
        inner = deterministic_registry().get("train")
        armed = True

        def run(self, request: dict, ctx: EffectContext) -> EffectResult:
            seen.append(ctx.call_id)
            if self.armed:
                self.armed = False
                self.inner.run(request, ctx)
                raise KeyboardInterrupt
            return self.inner.run(request, ctx)

    registry = deterministic_registry()
    registry.register(DiesAfterSubmitting())
    runtime = make_runtime(registry=registry)
    runtime.create(toy_config(max_generations=3), toy_task(), run_id="run")
    with pytest.raises(KeyboardInterrupt):
        runtime.drive("run")
    [pending] = load_state(runtime.store, "run").pending.values()
    assert pending.kind == "train" and pending.call_id.startswith("det-")
    runtime.drive("run")
    submitted = [e for e in runtime.store.read("run") if e.type == "TrainingJobSubmitted"]
    assert len(submitted) == 1 and seen == [None, pending.call_id]
    assert load_state(runtime.store, "run").status == "completed"


def test_loading_from_a_snapshot_equals_folding_from_scratch(monkeypatch: pytest.MonkeyPatch) -> None:
    import sia.runtime.loop
    from sia.core.events.mapper import MAPPER as mapper
    from sia.core.reducers.loop import fold

    monkeypatch.setattr(sia.runtime.loop, "SNAPSHOT_EVERY", 40)
    store = MemoryEventStore()
    run_toy(make_runtime(store), max_generations=3)
    snapshot = store.latest_snapshot("run", sia.runtime.loop.REDUCER_VERSION)
    assert snapshot is not None and 0 < snapshot.seq <= store.last_seq("run")
    scratch = fold(mapper.decode(e) for e in store.read("run"))
    assert load_state(store, "run") == scratch
    assert load_state(store, "run", upto=snapshot.seq + 3) == fold(
        mapper.decode(e) for e in store.read("run", upto=snapshot.seq + 3))
    from sia.store.base import Snapshot
    store.put_snapshot(Snapshot("run", store.last_seq("run"), sia.runtime.loop.REDUCER_VERSION,
                                "f" * 64, snapshot.body))
    assert load_state(store, "run") == scratch


class NoSignalTrain:
    """A trainer whose every update finds constant groups, as the real train effect reports it."""

    kind = "train"

    def run(self, request: TrainRequest, ctx: EffectContext) -> EffectResult:
        return EffectResult(TrainResult(algorithm=request.algorithm, metrics={"rollouts": 16.0},
                                        no_signal="every one of the 8 groups has a constant reward: "
                                                  "group-relative advantages are all 0"))


def test_an_update_without_signal_is_recorded_as_such_and_never_counted_as_one() -> None:
    handlers = {**deterministic_registry().handlers, "train": NoSignalTrain()}
    runtime = make_runtime(registry=HandlerRegistry(handlers, name="no-signal"))
    state = runtime.drive(run_toy(runtime, max_generations=4) and "run")
    events = [MAPPER.decode(r).event for r in runtime.store.read("run")]
    assert not [e for e in events if e.type == "AdapterCheckpointed"]
    no_signal = [e for e in events if e.type == "TrainingNoSignal" and e.generation == 1]
    # the effect's own report, then the deterministic Feedback repeating the same plan twice:
    # recorded as no-signal by decide without training again, up to MAX_NO_SIGNAL
    assert len(no_signal) == MAX_NO_SIGNAL
    assert "constant reward" in no_signal[0].reason and "already had no learning signal" in no_signal[1].reason
    trains = [e for e in events if e.type == "EffectRequested" and e.kind == "train"]
    assert len(trains) == 1
    asks = [e.request for e in events if e.type == "EffectRequested" and e.kind == "feedback"
            and e.request["generation"] == 1]
    assert [len(a.get("no_signal", [])) for a in asks] == [0, 1, 2]
    later = next(e.request for e in events if e.type == "EffectRequested" and e.kind == "feedback"
                 and e.request["generation"] == 2)
    assert len(later["history"][1]["no_signal"]) == MAX_NO_SIGNAL
    assert state.generations[1].no_signal and state.generations[2].adapter_hash is None
    assert state.adapter_hash is None and state.status == "completed"
    assert check_run(runtime.store, "run").ok
    from sia.core.reducers.snapshot import decode_state, encode_state

    assert decode_state(encode_state(state)) == state
