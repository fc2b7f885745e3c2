from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sia.effects.deterministic import deterministic_registry, toy_task
from sia.events.mapper import MAPPER, RecordedEvent
from sia.reducers.loop import FoldError, fold
from sia.reducers.state import LoopState, state_hash
from sia.runtime import Runtime
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
