from __future__ import annotations

from typing import Any

from sia.agents.builtin import Diagnosis, decide_feedback, diagnose
from sia.agents.template import Knobs, read_knobs, render
from sia.core.effect_models import FeedbackEpisode, FeedbackRequest, MetaRequest

OPTIONS = ["animal", "color", "fruit", "tool"]


def request(scores: list[float], actions: list[str | None], *, mode: str = "WH",
            force: str | None = None, best: int | None = None) -> dict[str, Any]:
    """A feedback request's fields as a dict, for a test to adjust before `typed`."""
    history = [{"generation": i, "score": s, "action": a, "algorithm": None, "harness_hash": f"h{i}",
                "adapter_hash": None} for i, (s, a) in enumerate(zip(scores, actions))]
    best = best if best is not None else max(range(len(scores)), key=lambda i: (scores[i], -i))
    return {"task": "t", "task_hash": "th", "provider": "builtin", "harness_hash": f"h{len(scores) - 1}",
            "adapter_hash": None, "episodes": [],
            "generation": len(scores) - 1, "history": history, "mode": mode, "force": force,
            "best_generation": best,
            "reward_shape": {"kind": "binary", "recommended": "grpo", "reason": "binary pass/fail at 30%"}}


def typed(fields: dict[str, Any]) -> FeedbackRequest:
    return FeedbackRequest.model_validate(fields)


def episodes(statuses: list[tuple[str, str | None, float]]) -> list[dict[str, Any]]:
    return [{"episode_id": f"e{i}", "sample_id": f"s{i}", "status": status, "prediction": prediction,
             "reward": reward, "trajectory_hash": None} for i, (status, prediction, reward) in enumerate(statuses)]


def meta_request(attempt: int) -> MetaRequest:
    return MetaRequest(task="t", task_hash="th", provider="builtin", attempt=attempt)


def test_diagnosis_sorts_failures_by_kind() -> None:
    eps = episodes([("ok", "fruit", 1.0), ("ok", "the the", 0.0), ("ok", "tool", 0.0),
                    ("timeout", None, 0.0), ("ok", "", 0.0)])
    d = diagnose([FeedbackEpisode.model_validate(e) for e in eps], {e["sample_id"]: OPTIONS for e in eps})
    assert (d.n, d.correct, d.unparseable, d.crashed) == (5, 1, 2, 1)
    assert d.summary == "5 dev episodes: 1 correct, 2 unparseable, 1 crashed, 1 wrong"


def never(generation: int) -> Knobs | None:
    raise AssertionError("no rollback expected")


def test_unparseable_answers_lead_to_a_format_edit() -> None:
    decision = decide_feedback(typed(request([0.05], [None])), None, Diagnosis(32, 28, 0, 2), never)
    assert decision["action"] == "edit_harness"
    assert read_knobs(decision["harness"]) == Knobs(extract="option", samples=5, fallback="first_option")
    assert "28/32 dev answers unparseable" in decision["rationale"]


def test_parseable_but_wrong_in_wh_leads_to_training_with_the_recommended_algorithm() -> None:
    decision = decide_feedback(typed(request([0.05, 0.3], ["edit_harness", None])),
                               Knobs(extract="option", samples=5, fallback="first_option"),
                               Diagnosis(32, 0, 0, 10), never)
    assert decision["action"] == "update_weights" and decision["plan"]["algorithm"] == "grpo"


def test_mode_h_turns_knobs_then_stops() -> None:
    knobs = Knobs(extract="option", samples=5, fallback="first_option")
    decision = decide_feedback(typed(request([0.05, 0.3], ["edit_harness", None], mode="H")), knobs,
                               Diagnosis(32, 0, 0, 10), never)
    assert decision["action"] == "edit_harness" and read_knobs(decision["harness"]).samples == 9
    spent = knobs.with_(samples=9, temperature=0.7)
    decision = decide_feedback(typed(request([0.05, 0.3], ["edit_harness", None], mode="H")), spent,
                               Diagnosis(32, 0, 0, 10), never)
    assert decision["action"] == "stop"


def test_regression_rolls_back_to_the_best_generation() -> None:
    best_knobs = Knobs(extract="option", samples=5, fallback="first_option")
    decision = decide_feedback(typed(request([0.05, 0.4, 0.2], ["edit_harness", "update_weights", None])),
                               best_knobs.with_(samples=9), Diagnosis(32, 0, 0, 6),
                               lambda g: best_knobs if g == 1 else None)
    assert decision["rollback_to"] == 1
    assert "roll back to 1" in decision["rationale"]


def test_forced_decisions_are_obeyed_and_marked() -> None:
    decision = decide_feedback(typed(request([0.05], [None], force="update_weights:dpo")), None,
                               Diagnosis(32, 28, 0, 2), never)
    assert (decision["action"], decision["plan"]["algorithm"], decision["forced"]) == ("update_weights", "dpo", True)
    assert decide_feedback(typed(request([0.05], [None], force="stop")), None, Diagnosis(1, 0, 0, 0), never)["action"] == "stop"


def test_a_good_score_stops() -> None:
    assert decide_feedback(typed(request([0.97], [None])), None, Diagnosis(32, 0, 0, 31), never)["action"] == "stop"


def test_template_harness_round_trips_its_knobs_and_answers() -> None:
    knobs = Knobs(extract="option", samples=3, temperature=0.5, fallback="first_option")
    source = render(knobs)
    assert read_knobs(source) == knobs
    assert read_knobs("def solve(sample, model):\n    return 'x'\n") is None
    namespace: dict[str, Any] = {}
    exec(compile(source, "harness", "exec"), namespace)

    class Model:
        def complete(self, prompt: str, **params: Any) -> list[str]:
            assert params["n"] == 3 and "options: animal, color, fruit, tool" in prompt
            return ["Fruit!", "tool", "fruit basket"]

    assert namespace["solve"]({"id": "s", "sentence": "a plum", "options": OPTIONS}, Model()) == "fruit"


def test_builtin_handlers_store_harnesses_as_blobs() -> None:
    from pathlib import Path

    from sia.agents.builtin import BuiltinFeedback, BuiltinMeta
    from sia.effects.base import EffectContext
    from sia.store.blobs import MemoryBlobStore

    blobs = MemoryBlobStore()
    ctx = EffectContext(run_id="r", effect_id="e", kind="meta", seed=1, attempt=1, blobs=blobs,
                        home=Path("/nonexistent"))

    class Task:
        name = "t"

        def reference_harness(self) -> str | None:
            return "def solve(sample, model):\n    return model.complete(sample['sentence'])\n"

    meta = BuiltinMeta(lambda request: Task(), validate=lambda source: [])
    first = meta.run(meta_request(1), ctx).result
    assert first.valid and first.harness_hash and "def solve" in blobs.get_text(first.harness_hash)
    retry = BuiltinMeta(lambda request: Task(), validate=lambda s: ["no"]).run(meta_request(2), ctx).result
    assert not retry.valid and retry.harness_hash and read_knobs(blobs.get_text(retry.harness_hash)) == Knobs()

    feedback = BuiltinFeedback(lambda request: {e.sample_id: OPTIONS for e in request.episodes})
    req = request([0.05], [None])
    req["history"][0]["harness_hash"] = req["harness_hash"] = first.harness_hash
    req["episodes"] = episodes([("ok", "zzz", 0.0)] * 9 + [("ok", "fruit", 1.0)])
    decision = feedback.run(typed(req), ctx).result
    assert decision.action == "edit_harness" and decision.provider == "builtin"
    assert decision.harness_hash and read_knobs(blobs.get_text(decision.harness_hash)).extract == "option"
    assert decision.evidence and "9 unparseable" in decision.digest_summary


def test_an_update_without_signal_is_not_chosen_again() -> None:
    knobs = Knobs(extract="option", samples=5, fallback="first_option")
    asked = request([0.05, 0.3], ["edit_harness", None])
    asked["no_signal"] = [{"algorithm": "grpo", "params": {},
                           "reason": "every one of the 4 groups has a constant reward"}]
    decision = decide_feedback(typed(asked), knobs, Diagnosis(32, 0, 0, 10), never)
    assert decision["action"] == "edit_harness" and read_knobs(decision["harness"]).samples == 9
    assert "grpo already had no learning signal" in decision["rationale"]
    # a fork forcing that update is not re-forced into the same no-op
    asked["force"] = "update_weights:grpo"
    decision = decide_feedback(typed(asked), knobs, Diagnosis(32, 0, 0, 10), never)
    assert decision["action"] == "edit_harness" and not decision["forced"]


def test_a_reward_shape_without_signal_leads_to_a_harness_edit_not_an_update() -> None:
    knobs = Knobs(extract="option", samples=5, fallback="first_option")
    asked = request([0.05, 0.3], ["edit_harness", None])
    asked["reward_shape"] = {"kind": "no_signal", "recommended": None,
                             "reason": "no learning signal: none of the 4 prompts has two completions "
                                       "with different rewards and every reward is equal (all 0)"}
    decision = decide_feedback(typed(asked), knobs, Diagnosis(32, 0, 0, 10), never)
    assert decision["action"] == "edit_harness"
    assert "no weight update: no learning signal" in decision["rationale"]


def test_builtin_feedback_recommends_from_the_rollouts_the_trainer_would_learn_from() -> None:
    from pathlib import Path

    from sia.agents.builtin import BuiltinFeedback
    from sia.core.events.canonical import canonical_json
    from sia.effects.base import EffectContext
    from sia.effects.train import reward_shape_of
    from sia.store.blobs import MemoryBlobStore

    blobs = MemoryBlobStore()
    ctx = EffectContext(run_id="r", effect_id="e", kind="feedback", seed=1, attempt=1, blobs=blobs,
                        home=Path("/nonexistent"))

    class Graded:
        """Rewards a completion by its text: two prompts, each with completions of two rewards."""

        def reward(self, sample_id: str, text: str | None) -> float:
            return 1.0 if text == "fruit" else 0.0

    def rollout(index: int, texts: list[str]) -> dict[str, Any]:
        call = {"index": 0, "endpoint": "completions", "status": 200, "prompts": [f"q{index}"],
                "params": {"temperature": 1.0, "top_p": 1.0, "n": len(texts)},
                "generations": [{"text": t, "prompt_token_ids": [1], "token_ids": [2 + k],
                                 "finish_reason": "stop"} for k, t in enumerate(texts)]}
        return {"episode_id": f"r{index}", "sample_id": f"t{index}",
                "trajectory_hash": blobs.put_text(canonical_json({"calls": [call]}))}

    harness = blobs.put_text(render(Knobs(extract="option", samples=5, fallback="first_option")))
    req = request([0.05, 0.3], ["edit_harness", None])
    req["harness_hash"] = harness
    req["history"][0]["harness_hash"] = req["history"][1]["harness_hash"] = harness
    req["episodes"] = episodes([("ok", "tool", 0.0)] * 9 + [("ok", "fruit", 1.0)])
    req["rollouts"] = [rollout(0, ["fruit", "tool", "tool", "tool", "tool"]),
                       rollout(1, ["tool", "fruit", "fruit", "color", "tool"])]
    feedback = BuiltinFeedback(lambda request: {e.sample_id: OPTIONS for e in request.episodes},
                               lambda episodes, store: reward_shape_of(episodes, store, Graded()))
    decision = feedback.run(typed(req), ctx).result
    assert decision.reward_shape and decision.plan
    assert decision.reward_shape["completions"] == 10 and decision.reward_shape["groups_with_spread"] == 2
    assert decision.action == "update_weights"
    assert decision.plan.algorithm == decision.reward_shape["recommended"] == "grpo"
    req["rollouts"] = [rollout(0, ["tool"] * 5), rollout(1, ["color"] * 5)]
    decision = feedback.run(typed(req), ctx).result
    assert decision.reward_shape and decision.reward_shape["kind"] == "no_signal"
    assert decision.action == "edit_harness"
