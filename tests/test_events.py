from __future__ import annotations

import json
import math
from typing import ClassVar, Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sia.events.canonical import CanonicalJSONError, canonical_json, content_hash
from sia.events.envelope import EncodedEvent, seal
from sia.events.mapper import MAPPER, EventDecodeError, EventMapper
from sia.events.types import (
    EVENT_CLASSES,
    BaseEvent,
    EpisodeRecorded,
    FeedbackDecided,
    RunConfig,
    RunCreated,
    TaskSnapshot,
    TrainingPlan,
)
from sia.events.upcasting import UnknownSchemaVersion, Upcasters
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


def test_every_event_type_is_registered_once_with_a_version() -> None:
    assert len(EVENT_CLASSES) == 21
    assert all(cls.schema_version >= 1 for cls in EVENT_CLASSES.values())


def test_events_are_frozen_and_strict() -> None:
    event = RunCreated(config=RunConfig(task="toy"),
                       task=TaskSnapshot(name="toy", task_hash="h", dev_ids=("a",)))
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


def test_every_concrete_event_class_subclasses_base() -> None:
    assert all(issubclass(cls, BaseEvent) for cls in EVENT_CLASSES.values())
