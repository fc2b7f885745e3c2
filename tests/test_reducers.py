from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import create_model

from sia.core.events.mapper import MAPPER, RecordedEvent
from sia.core.events.types import (
    Budget,
    EffectCompleted,
    EffectFailed,
    EvaluationRecorded,
    FeedbackDecided,
    RunConfig,
)
from sia.core.reducers.loop import FoldError, fold
from sia.core.reducers.snapshot import FOLD_VERSION, REDUCER_VERSION, reducer_version
from sia.core.reducers.state import Generation, LoopState, outcome_hash, state_hash
from sia.effects.deterministic import deterministic_registry, toy_task
from sia.runtime.loop import Runtime
from sia.store.memory import MemoryEventStore
from tests.conftest import toy_config

configs = st.fixed_dictionaries({
    "mode": st.sampled_from(["H", "WH"]),
    "max_generations": st.integers(1, 5),
    "patience": st.integers(1, 4),
    "seed": st.integers(0, 2**31),
    "feedback_force": st.sampled_from([None, "edit_harness", "update_weights:dpo", "stop"]),
})


def history(config: dict) -> list[RecordedEvent]:
    store = MemoryEventStore()
    runtime = Runtime(store, deterministic_registry(), home=Path("/nonexistent"), concurrency=1)
    run_id = runtime.create(toy_config(**config), toy_task(), run_id="run")
    runtime.drive(run_id)
    return [MAPPER.decode(e) for e in store.read(run_id)]


relaxed = settings(max_examples=25, deadline=None,
                   suppress_health_check=[HealthCheck.too_slow])


@relaxed
@given(configs)
def test_folding_is_deterministic(config: dict) -> None:
    events = history(config)
    assert state_hash(fold(events)) == state_hash(fold(events))
    assert state_hash(fold(events)) == state_hash(fold(history(config)))


@relaxed
@given(configs, st.floats(0, 1))
def test_folding_a_prefix_then_the_rest_equals_folding_all(config: dict, cut: float) -> None:
    events = history(config)
    split = int(cut * len(events))
    assert fold(events[split:], fold(events[:split])) == fold(events)


@relaxed
@given(configs)
def test_mode_h_never_trains(config: dict) -> None:
    state = fold(history({**config, "mode": "H"}))
    assert state.ledger.by_kind.get("train") is None
    assert all(g.adapter_hash is None for g in state.generations)


def test_out_of_order_and_unlinked_events_are_rejected_clearly() -> None:
    events = history({"max_generations": 2})
    with pytest.raises(FoldError, match="seq 3: out of order: expected seq 2"):
        fold([events[0], events[2]])
    with pytest.raises(FoldError, match="seq 1: out of order"):
        fold(events[:3] + [events[0]])
    relinked = dataclasses.replace(events[1], prev_hash="f" * 64)
    with pytest.raises(FoldError, match="seq 2: prev_hash does not link"):
        fold([events[0], relinked])


def test_events_that_do_not_fit_the_state_are_rejected() -> None:
    events = history({"max_generations": 2})
    episode = next(i for i, e in enumerate(events) if e.event.type == "EpisodeRecorded")
    with pytest.raises(FoldError, match="RunCreated in a run that already exists"):
        fold(events[:1] + [dataclasses.replace(events[0], seq=2, prev_hash=events[0].hash)])
    state = fold(events[:episode + 1])
    duplicate = dataclasses.replace(events[episode], seq=state.seq + 1, prev_hash=state.last_hash)
    with pytest.raises(FoldError, match="already recorded"):
        fold([duplicate], state)


def test_state_hash_changes_with_state() -> None:
    events = history({"max_generations": 2})
    hashes = {state_hash(fold(events[:n])) for n in range(len(events) + 1)}
    assert len(hashes) == len(events) + 1
    assert state_hash(LoopState()) == state_hash(fold([]))


# ---------------------------------------------------------------- outcome hash


def changed(events: list[RecordedEvent], kind: type, **update: Any) -> list[RecordedEvent]:
    """The same log with the first event of `kind` changed (links and hashes kept)."""
    at = next(i for i, e in enumerate(events) if isinstance(e.event, kind))
    event = events[at].event.model_copy(update=update)
    return events[:at] + [dataclasses.replace(events[at], event=event)] + events[at + 1:]


def retimed(events: list[RecordedEvent]) -> list[RecordedEvent]:
    """The same log as if every effect had taken other wall and GPU seconds, in another run."""
    def slower(recorded: RecordedEvent) -> RecordedEvent:
        event = recorded.event
        if isinstance(event, (EffectCompleted, EffectFailed)):
            usage = event.usage.model_copy(update={"wall_s": event.usage.wall_s * 3 + 1.25,
                                                   "gpu_s": event.usage.gpu_s * 2 + 0.5})
            event = event.model_copy(update={"usage": usage})
        return dataclasses.replace(recorded, event=event, run_id="another-home-run")
    return [slower(e) for e in events]


def test_the_outcome_hash_leaves_out_timings_and_run_names_and_the_state_hash_keeps_them() -> None:
    events = history({"mode": "WH", "max_generations": 3, "feedback_force": "update_weights:dpo"})
    state, other = fold(events), fold(retimed(events))
    assert state.ledger.total.gpu_s > 0 and other.ledger.total.gpu_s != state.ledger.total.gpu_s
    assert other.run_id != state.run_id
    assert outcome_hash(other) == outcome_hash(state)
    assert state_hash(other) != state_hash(state)


def test_a_change_of_a_decision_a_score_tokens_or_a_setting_changes_both_hashes() -> None:
    events = history({"mode": "WH", "max_generations": 3})
    state = fold(events)
    usage = next(e.event.usage for e in events if isinstance(e.event, EffectCompleted))
    changes = [
        fold(changed(events, FeedbackDecided, rationale="another reason")),
        fold(changed(events, EvaluationRecorded, score=0.123)),
        fold(changed(events, EffectCompleted, usage=usage.model_copy(
            update={"tokens_in": usage.tokens_in + 1}))),
        state._replace(config=RunConfig(task="toy", budget=Budget(wall_s=60.0))),
    ]
    for other in changes:
        assert outcome_hash(other) != outcome_hash(state)
        assert state_hash(other) != state_hash(state)


# ---------------------------------------------------------------- snapshot version


def record_like(kind: Any, extra: tuple[tuple[str, Any], ...] = (), **types: Any) -> type:
    """A bare copy of a NamedTuple (no docstring, no defaults), with fields retyped or added."""
    hints = typing.get_type_hints(kind)
    fields = [(name, types.get(name, hints[name])) for name in kind._fields]
    return NamedTuple(kind.__name__, [*fields, *extra])  # type: ignore[misc]


def test_the_snapshot_version_follows_the_fold_version_and_loop_states_shape_only() -> None:
    assert REDUCER_VERSION == reducer_version(LoopState, FOLD_VERSION)
    assert reducer_version(record_like(LoopState)) == REDUCER_VERSION
    assert reducer_version(LoopState, FOLD_VERSION + 1) != REDUCER_VERSION
    assert reducer_version(record_like(LoopState, (("note", str),))) != REDUCER_VERSION
    assert reducer_version(record_like(LoopState, seq=str)) != REDUCER_VERSION
    retyped = tuple[record_like(Generation, score=int), ...]  # type: ignore[misc]
    assert reducer_version(record_like(LoopState, generations=retyped)) != REDUCER_VERSION
    grown = create_model("RunConfig", __base__=RunConfig, priority=(int, 0))
    assert reducer_version(record_like(LoopState, config=grown | None)) != REDUCER_VERSION
