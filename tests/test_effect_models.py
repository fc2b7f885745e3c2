"""The typed effect requests and results: one parse of `feedback.force`, recorded forms that
keep request hashes stable, and recorded requests that do not fit their kind refused clearly."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from sia.core.config import ConfigError, apply_overrides
from sia.core.decide import decide
from sia.core.effect_models import (
    REQUEST_MODELS,
    RESULT_MODELS,
    FeedbackRequest,
    HistoryEntry,
    NoSignalRecord,
    RequestInvalid,
    RewardShapeView,
    parse_request,
)
from sia.core.events.canonical import content_hash
from sia.core.events.types import ALGORITHMS, Force, ForceError, RunConfig
from sia.core.interpret import ResultInvalid, interpret


def test_every_effect_kind_has_one_request_and_one_result_model() -> None:
    assert set(REQUEST_MODELS) == set(RESULT_MODELS) == {"meta", "episode", "evaluate", "feedback", "train",
                                                         "candidate", "test"}


@pytest.mark.parametrize("text", ["stop", "edit_harness", "update_weights", *(f"update_weights:{a}" for a in ALGORITHMS)])
def test_a_force_reads_and_writes_as_its_text(text: str) -> None:
    force = Force.parse(text)
    assert str(force) == text
    config = RunConfig(task="toy", feedback_force=text)  # type: ignore[arg-type]
    assert config.feedback_force == force
    assert config.model_dump(mode="json")["feedback_force"] == text
    assert RunConfig.model_validate(config.model_dump(mode="json")) == config


@pytest.mark.parametrize("text, message", [
    ("train", "unknown action 'train'"),
    ("update_weights:sgd", "unknown algorithm 'sgd'"),
    ("stop:grpo", "only update_weights takes an algorithm"),
])
def test_a_bad_force_is_refused_where_it_is_set(text: str, message: str) -> None:
    with pytest.raises(ForceError, match=message):
        Force.parse(text)
    with pytest.raises(ValidationError, match=message):
        RunConfig(task="toy", feedback_force=text)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=message):
        apply_overrides(RunConfig(task="toy"), {"feedback.force": text})


def feedback_request(**changes: object) -> FeedbackRequest:
    fields: dict[str, object] = dict(
        task="toy", task_hash="t", generation=0, provider="builtin", mode="WH", harness_hash="h0",
        adapter_hash=None, best_generation=0, episodes=(),
        history=(HistoryEntry(generation=0, score=0.5, harness_hash="h0", adapter_hash=None,
                              action=None, algorithm=None),),
        reward_shape=RewardShapeView(kind="binary", recommended="grpo", reason="r"))
    return FeedbackRequest.model_validate({**fields, **changes})


def test_keys_a_later_decider_added_are_recorded_only_when_they_have_content() -> None:
    """A version-1 feedback request had no `rollouts` or `no_signal` keys: the same request
    must record the same JSON (and hash) today, or old logs would stop replaying."""
    plain = feedback_request().record()
    assert "rollouts" not in plain and "no_signal" not in plain
    assert "no_signal" not in plain["history"][0]
    record = NoSignalRecord(algorithm="grpo", reason="constant groups")
    tried = feedback_request(no_signal=(record,)).record()
    assert tried["no_signal"] == [{"algorithm": "grpo", "params": {}, "reason": "constant groups"}]
    assert content_hash(plain) != content_hash(tried)
    assert parse_request("feedback", plain) == feedback_request()
    assert parse_request("feedback", tried).record() == tried


def test_the_force_in_a_request_is_recorded_as_text() -> None:
    recorded = feedback_request(force="update_weights:dpo").record()
    assert recorded["force"] == "update_weights:dpo"
    parsed = parse_request("feedback", recorded)
    assert isinstance(parsed, FeedbackRequest) and parsed.force == Force(action="update_weights", algorithm="dpo")


def test_decide_records_the_json_form_of_its_request_models(toy_state_after_creation: object) -> None:
    (meta,) = decide(toy_state_after_creation)  # type: ignore[arg-type]
    assert meta.type == "EffectRequested"
    typed = parse_request(meta.kind, meta.request)
    assert typed.record() == meta.request and content_hash(meta.request) == meta.request_hash


def test_a_recorded_request_that_does_not_fit_its_kind_is_refused_clearly() -> None:
    with pytest.raises(RequestInvalid, match="no request model for effect kind 'teleport'"):
        parse_request("teleport", {})
    with pytest.raises(RequestInvalid, match="episode request does not fit its schema"):
        parse_request("episode", {"task": "toy", "task_hash": "t", "generation": "zero"})
    with pytest.raises(ResultInvalid, match="evaluate request does not fit its schema"):
        interpret("evaluate", "e1", {"task": "toy"}, {"score": 1.0})


@pytest.fixture
def toy_state_after_creation() -> object:
    from sia.core.events.types import RunCreated
    from sia.core.reducers.loop import evolve_unrecorded
    from sia.core.reducers.state import LoopState
    from sia.tasks.toy import toy_task

    created = RunCreated(config=RunConfig(task="toy"), task=toy_task(), decider_version=3)
    return evolve_unrecorded(LoopState(), created, 1, "run")._replace(seq=1)
