from __future__ import annotations

import json
import math
from typing import ClassVar, Literal, get_args

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sia.core.events import types as event_types
from sia.core.events.canonical import CanonicalJSONError, canonical_json, content_hash
from sia.core.events.envelope import EncodedEvent, seal
from sia.core.events.mapper import MAPPER, EventDecodeError, EventMapper
from sia.core.events.types import (
    EVENT_CLASSES,
    AdapterCheckpointed,
    AgentStepRecorded,
    AnswerRefused,
    BaseEvent,
    Candidate,
    CandidateChosen,
    CandidateEvaluated,
    CandidatesProposed,
    EffectCompleted,
    EffectFailed,
    EffectRequested,
    EpisodeRecorded,
    EvaluationRecorded,
    Event,
    FeedbackDecided,
    GenerationCompleted,
    GenerationStarted,
    HarnessEdited,
    HarnessProposed,
    RolledBack,
    RunCompleted,
    RunConfig,
    RunCreated,
    RunFailed,
    RunForked,
    RunPaused,
    RunResumed,
    TaskIdentity,
    TestScored,
    TrainingJobSubmitted,
    TrainingNoSignal,
    TrainingPlan,
    Usage,
)
from sia.core.events.upcasting import UnknownSchemaVersion, Upcasters
from sia.store.memory import MemoryEventStore

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)


def test_canonical_json_is_sorted_compact_utf8() -> None:
    assert canonical_json({"b": 1, "a": [1.5, "é"]}) == '{"a":[1.5,"é"],"b":1}'


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, object()])
def test_canonical_json_refuses_values_without_a_canonical_form(bad: object) -> None:
    with pytest.raises(CanonicalJSONError):
        canonical_json({"x": bad})


@given(json_values)
def test_canonical_json_round_trips_exactly(value: object) -> None:
    text = canonical_json(value)
    assert canonical_json(json.loads(text)) == text
    assert content_hash(json.loads(text)) == content_hash(value)


def _event_classes_defined_in_types() -> set[type[BaseEvent]]:
    """Found by reading the module, not from the list EVENT_CLASSES is built from."""
    return {value for value in vars(event_types).values()
            if isinstance(value, type) and issubclass(value, BaseEvent) and value is not BaseEvent
            and value.__module__ == event_types.__name__}


def test_every_event_class_is_registered_under_its_own_name() -> None:
    defined = _event_classes_defined_in_types()
    in_union = set(get_args(get_args(Event)[0]))
    assert len(defined) == 26
    assert in_union == defined
    assert set(EVENT_CLASSES.values()) == defined
    assert EVENT_CLASSES == {cls.__name__: cls for cls in defined}
    assert all(cls.model_fields["type"].default == cls.__name__ for cls in defined)
    assert all(get_args(cls.model_fields["type"].annotation) == (cls.__name__,) for cls in defined)
    assert all(cls.schema_version >= 1 for cls in defined)


def _one_of_each() -> list[BaseEvent]:
    config = RunConfig(task="toy")
    usage = Usage(tokens_in=3, dollars=0.5)
    return [
        RunCreated(config=config, task=TaskIdentity(name="toy", task_hash="h", dev_ids=("a",)),
                   decider_version=2),
        RunForked(parent_run_id="p", fork_seq=4, overrides={"seed": "1"}, config=config),
        RunPaused(reason="Ctrl-C"),
        RunResumed(reason="resume"),
        RunCompleted(reason="done", best_generation=1, best_score=0.5),
        RunFailed(error="broken"),
        HarnessProposed(effect_id="m", harness_hash=None, valid=False, problems=("no run",)),
        GenerationStarted(generation=1, harness_hash="h", adapter_hash="a"),
        EffectRequested(effect_id="e", kind="episode", request={"x": [1, "y"]}, request_hash="rh"),
        EffectCompleted(effect_id="e", kind="episode", result={"ok": True}, usage=usage,
                        cached_from="e0"),
        EffectFailed(effect_id="e", kind="train", error="oom", attempt=2, will_retry=True,
                     retry_in_s=1.5, usage=usage),
        EpisodeRecorded(generation=0, episode_id="ep", sample_id="s", status="timeout",
                        prediction=None, trajectory_hash="t", error="slow"),
        EvaluationRecorded(generation=0, score=0.5, rewards=(1.0, 0.0), n=2, n_answered=1,
                           failures={"timeout": 1}, metrics={"f1": 0.25}),
        FeedbackDecided(generation=2, action="update_weights", rationale="plateau",
                        evidence=("ep",), plan=TrainingPlan(algorithm="grpo", params={"lr": 1e-4}),
                        rollback_to=0, forced=True),
        HarnessEdited(generation=0, from_hash="a", to_hash="b"),
        RolledBack(generation=2, to_generation=0, harness_hash="h", adapter_hash=None),
        TrainingJobSubmitted(effect_id="e", job_id="j", backend="modal", call_id="c"),
        AnswerRefused(effect_id="e", kind="feedback", attempt=1, problems=("bad json",)),
        AdapterCheckpointed(generation=1, job_id="j", adapter_hash="a", config_hash="c",
                            algorithm="dpo", metrics={"loss": 0.5}),
        TrainingNoSignal(generation=1, algorithm="best_of_n", reason="constant rewards",
                         job_id="j"),
        AgentStepRecorded(effect_id="e", index=0, kind="tool", name="read_episode", blob_hash="b",
                          summary="read ep-3", usage=usage),
        CandidatesProposed(generation=1, round=0, candidates=(
            Candidate(action="update_weights", rationale="r", plan=TrainingPlan(algorithm="grpo"),
                      parent_generation=0),), provider="builtin"),
        CandidateEvaluated(generation=1, round=0, index=0, run_id="r~g1r0c0", score=0.75, rewards=(1.0, 0.5),
                           adapter_hash="a", episodes=4),
        CandidateChosen(generation=1, round=0, index=None, reason="kept"),
        TestScored(generation=1, harness_hash="h", adapter_hash=None, score=0.5, n=8, n_answered=7,
                   metrics={"f1": 0.5}),
        GenerationCompleted(generation=1, dev_score=0.5, best_generation=0),
    ]


def test_one_event_of_each_class_round_trips_through_the_mapper() -> None:
    events = _one_of_each()
    assert {type(e) for e in events} == _event_classes_defined_in_types()
    for seq, event in enumerate(events, start=1):
        stored = seal(MAPPER.encode(event), "r", seq, "0" * 64, "t")
        assert stored.type == event.type
        assert MAPPER.decode(stored).event == event


def test_events_are_frozen_and_strict() -> None:
    event = RunCreated(config=RunConfig(task="toy"),
                       task=TaskIdentity(name="toy", task_hash="h", dev_ids=("a",)))
    with pytest.raises(Exception):
        event.config = RunConfig(task="other")  # type: ignore[misc]
    with pytest.raises(Exception):
        RunConfig(task="toy", unknown_setting=1)  # type: ignore[call-arg]


def test_encode_decode_round_trip() -> None:
    event = FeedbackDecided(generation=2, action="update_weights", rationale="plateau",
                            plan=TrainingPlan(algorithm="grpo", params={"lr": 1e-4}))
    stored = seal(MAPPER.encode(event), "r", 1, "0" * 64, "t")
    assert MAPPER.decode(stored).event == event
    assert '"type"' not in stored.payload


def test_decode_names_the_bad_row() -> None:
    stored = seal(EncodedEvent("Nope", 1, "{}"), "run-x", 7, "0" * 64, "t")
    with pytest.raises(EventDecodeError, match="run run-x seq 7: unknown event type 'Nope'"):
        MAPPER.decode(stored)
    broken = seal(EncodedEvent("RunPaused", 1, '{"reason": 3}'), "run-x", 8, "0" * 64, "t")
    with pytest.raises(EventDecodeError, match="seq 8: RunPaused does not decode"):
        MAPPER.decode(broken)


class EpisodeRecordedV3(EpisodeRecorded):
    """A future schema for the test: v2 added `error`, v3 adds `latency_ms`."""

    schema_version: ClassVar[int] = 3
    type: Literal["EpisodeRecorded"] = "EpisodeRecorded"
    latency_ms: int


def test_a_stored_v1_event_is_upcast_on_read() -> None:
    upcasters = Upcasters()

    @upcasters.register("EpisodeRecorded", from_version=1)
    def add_error(payload: dict) -> dict:
        return {**payload, "error": None}

    @upcasters.register("EpisodeRecorded", from_version=2)
    def add_latency(payload: dict) -> dict:
        return {**payload, "latency_ms": 0}

    store = MemoryEventStore()
    v1 = {"generation": 0, "episode_id": "e", "sample_id": "s", "status": "ok",
          "prediction": "42", "trajectory_hash": None}
    store.create_run("old", [EncodedEvent("EpisodeRecorded", 1, canonical_json(v1))])
    mapper = EventMapper({**EVENT_CLASSES, "EpisodeRecorded": EpisodeRecordedV3}, upcasters)
    event = mapper.decode(next(store.read("old"))).event
    assert isinstance(event, EpisodeRecordedV3)
    assert (event.prediction, event.error, event.latency_ms) == ("42", None, 0)
    assert next(store.read("old")).schema_version == 1  # the row itself is never rewritten


def test_missing_upcaster_and_future_version_are_clear_errors() -> None:
    upcasters = Upcasters()
    with pytest.raises(UnknownSchemaVersion, match="no upcaster for X v1 -> v2"):
        upcasters.upcast("X", 1, 2, {})
    with pytest.raises(UnknownSchemaVersion, match="newer than this sia knows"):
        upcasters.upcast("X", 5, 2, {})
