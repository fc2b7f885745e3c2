"""What an effect's recorded outcome means for the loop (pure).

The runtime appends `EffectCompleted` together with `interpret(...)`'s events in one
transaction; replay can re-run `interpret` on the recorded result and demand the same
events. A result that does not fit its kind's schema is a failure of that effect, not a
crash of the run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from sia.core.effect_models import (
    CandidateRequest,
    CandidateResult,
    EpisodeRequest,
    EpisodeResult,
    EvaluateRequest,
    EvaluateResult,
    FeedbackRequest,
    FeedbackResult,
    MetaRequest,
    MetaResult,
    RequestInvalid,
    TestRequest,
    TestResult,
    TrainRequest,
    TrainResult,
    parse_request,
)
from sia.core.events.types import (
    EPISODE_STATUSES,
    AdapterCheckpointed,
    BaseEvent,
    Candidate,
    CandidateEvaluated,
    CandidatesProposed,
    EpisodeRecorded,
    EvaluationRecorded,
    FeedbackDecided,
    HarnessProposed,
    TestScored,
    TrainingNoSignal,
)


class ResultInvalid(ValueError):
    """An effect handler returned a result that does not fit its kind."""


def interpret(kind: str, effect_id: str, request: dict[str, Any], result: dict[str, Any]) -> list[BaseEvent]:
    """The events a recorded result means; both sides are parsed into their kind's models."""
    interpreter = _INTERPRETERS.get(kind)
    if interpreter is None:
        raise ResultInvalid(f"no interpreter for effect kind {kind!r}")
    try:
        typed = parse_request(kind, request)
    except RequestInvalid as exc:
        raise ResultInvalid(str(exc)) from exc
    try:
        return interpreter(effect_id, typed, result)
    except ValidationError as exc:
        raise ResultInvalid(f"{kind} result does not fit its schema: {exc}") from exc


def interpret_failure(kind: str, effect_id: str, request: dict[str, Any], error: str) -> list[BaseEvent]:
    """Events for an effect that failed for good; the decider sees the failure itself."""
    if kind == "meta":
        return [HarnessProposed(effect_id=effect_id, harness_hash=None, valid=False,
                                problems=(f"meta effect failed: {error}",))]
    if kind == "episode":
        typed = EpisodeRequest.model_validate(request)
        return [EpisodeRecorded(generation=typed.generation, episode_id=effect_id,
                                sample_id=typed.sample_id, status="error", prediction=None,
                                trajectory_hash=None, error=error)]
    if kind == "candidate":
        asked = CandidateRequest.model_validate(request)
        return [CandidateEvaluated(generation=asked.generation, round=asked.round, index=asked.index,
                                   run_id="", score=None, error=error)]
    return []


def _meta(effect_id: str, request: MetaRequest, result: dict[str, Any]) -> list[BaseEvent]:
    r = MetaResult.model_validate(result)
    return [HarnessProposed(effect_id=effect_id, harness_hash=r.harness_hash,
                            valid=r.valid and r.harness_hash is not None, problems=r.problems)]


def _episode(effect_id: str, request: EpisodeRequest, result: dict[str, Any]) -> list[BaseEvent]:
    r = EpisodeResult.model_validate(result)
    status = r.status if r.status in EPISODE_STATUSES else "error"
    return [EpisodeRecorded(generation=request.generation, episode_id=effect_id,
                            sample_id=request.sample_id, status=status,
                            prediction=r.prediction if status == "ok" else None,
                            trajectory_hash=r.trajectory_hash, error=r.error)]


def _evaluate(effect_id: str, request: EvaluateRequest, result: dict[str, Any]) -> list[BaseEvent]:
    r = EvaluateResult.model_validate(result)
    return [EvaluationRecorded(generation=request.generation, score=r.score, rewards=r.rewards,
                               n=r.n, n_answered=r.n_answered, failures=r.failures,
                               metrics=r.metrics)]


def _feedback(effect_id: str, request: FeedbackRequest, result: dict[str, Any]) -> list[BaseEvent]:
    r = FeedbackResult.model_validate(result)
    if request.candidates is not None and (r.candidates or r.action != "stop"):
        # A handler that proposes one decision where several were asked proposes one candidate.
        candidates = r.candidates or (Candidate(action=r.action, rationale=r.rationale, harness_hash=r.harness_hash,
                                                plan=r.plan, parent_generation=r.rollback_to),)
        return [CandidatesProposed(generation=request.generation, round=request.round or 0,
                                   candidates=candidates[: request.candidates], provider=r.provider,
                                   digest_summary=r.digest_summary)]
    return [FeedbackDecided(
        generation=request.generation, action=r.action, rationale=r.rationale,
        evidence=r.evidence, digest_hash=r.digest_hash, digest_summary=r.digest_summary,
        recommended_algorithm=(r.reward_shape or request.reward_shape.model_dump()).get("recommended"),
        harness_hash=r.harness_hash, plan=r.plan, rollback_to=r.rollback_to,
        provider=r.provider, forced=r.forced,
    )]


def _train(effect_id: str, request: TrainRequest, result: dict[str, Any]) -> list[BaseEvent]:
    r = TrainResult.model_validate(result)
    if r.no_signal is not None:
        return [TrainingNoSignal(generation=request.generation, algorithm=r.algorithm,
                                 reason=r.no_signal, job_id=r.job_id, metrics=r.metrics)]
    if r.job_id is None or r.adapter_hash is None or r.config_hash is None:
        raise ResultInvalid("a train result names an adapter (job_id, adapter_hash, config_hash) "
                            "or says why there is none (no_signal)")
    return [AdapterCheckpointed(generation=request.generation, job_id=r.job_id,
                                adapter_hash=r.adapter_hash, config_hash=r.config_hash,
                                algorithm=r.algorithm, metrics=r.metrics)]


def _candidate(effect_id: str, request: CandidateRequest, result: dict[str, Any]) -> list[BaseEvent]:
    r = CandidateResult.model_validate(result)
    return [CandidateEvaluated(generation=request.generation, round=request.round, index=request.index,
                               run_id=r.run_id, score=r.score, rewards=r.rewards, harness_hash=r.harness_hash,
                               adapter_hash=r.adapter_hash, episodes=r.episodes, error=r.error)]


def _test(effect_id: str, request: TestRequest, result: dict[str, Any]) -> list[BaseEvent]:
    r = TestResult.model_validate(result)
    return [TestScored(generation=request.generation, harness_hash=request.harness_hash,
                       adapter_hash=request.adapter_hash, score=r.score, n=r.n, n_answered=r.n_answered,
                       metrics=r.metrics)]


_INTERPRETERS: dict[str, Callable[[str, Any, dict[str, Any]], list[BaseEvent]]] = {
    "meta": _meta,
    "episode": _episode,
    "evaluate": _evaluate,
    "feedback": _feedback,
    "train": _train,
    "candidate": _candidate,
    "test": _test,
}
