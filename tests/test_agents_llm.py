"""The LLM Meta and Feedback agents, through the real SDKs against the loopback servers."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sia.agents import prompts
from sia.agents.llm import (
    DecisionAnswer,
    LLMFeedback,
    LLMMeta,
    check_decision,
    feedback_schema,
    public_samples,
    strip_fences,
)
from sia.agents.template import Knobs, render
from sia.core.effect_models import parse_request
from sia.core.events.canonical import canonical_json
from sia.core.events.types import FeedbackDecided
from sia.core.interpret import interpret
from sia.effects.base import EffectContext, EffectError, EffectResult, TransientEffectError
from sia.harness.contract import HARNESS_CONTRACT, validate_harness
from sia.llm import PermanentLLMError, TransientLLMError, get_provider
from sia.store.blobs import MemoryBlobStore
from sia.testing import AnthropicServer, Fault, OpenAIServer, Reply, Script

KEY = "sk-test-SECRET-agents-0123"
OPTIONS = ["animal", "color", "fruit", "tool"]
GOOD = render(Knobs())
BETTER = render(Knobs(extract="option", samples=5, fallback="first_option"))
BROKEN = "def solve(sample):\n    return 'x'\n"


class ToyTask:
    """A public task view: descriptions and public fields only (what the integrator supplies)."""

    description = "Classify the word into one of the options: animal, color, fruit or tool."

    def __init__(self) -> None:
        self._samples = {f"s{i}": {"id": f"s{i}", "word": w, "options": OPTIONS}
                         for i, w in enumerate(["cat", "red", "pear", "saw", "dog", "blue", "fig", "axe"])}

    def samples(self, split: str) -> list[dict[str, Any]]:
        if split != "dev":
            raise KeyError(split)
        return list(self._samples.values())

    def sample(self, sample_id: str) -> dict[str, Any]:
        return self._samples[sample_id]

    def options_of(self, sample_id: str) -> list[str]:
        return OPTIONS

    def reference_harness(self) -> str | None:
        return None

    def public_examples(self) -> list[dict[str, Any]]:
        return []


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


@pytest.fixture
def anthropic_server() -> Iterator[AnthropicServer]:
    with AnthropicServer(api_key=KEY) as srv:
        yield srv


@pytest.fixture
def openai_server() -> Iterator[OpenAIServer]:
    with OpenAIServer(api_key=KEY, models=("loopback-model",)) as srv:
        yield srv


def anthropic(server: AnthropicServer) -> Any:
    return get_provider("anthropic", base_url=server.base_url, timeout=10.0)


def openai_provider(server: OpenAIServer) -> Any:
    return get_provider("openai", base_url=server.api_base, default_model="loopback-model", timeout=10.0)


def context(blobs: MemoryBlobStore, kind: str, attempt: int = 1, seed: int = 1234) -> EffectContext:
    return EffectContext(run_id="run-test", effect_id=f"{kind}-effect", kind=kind, seed=seed,
                         attempt=attempt, blobs=blobs, home=Path("."))


def meta(provider: Any, **kw: Any) -> LLMMeta:
    return LLMMeta(provider, kw.pop("model", "claude-sonnet-4-6"), ToyTask(), validate_harness, **kw)


def feedback(provider: Any, **kw: Any) -> LLMFeedback:
    return LLMFeedback(provider, kw.pop("model", "claude-sonnet-4-6"), ToyTask(), validate_harness, **kw)


def typed(request: dict[str, Any]) -> Any:
    """The typed request a handler gets (the runtime parses the recorded dict the same way)."""
    return parse_request("meta" if "attempt" in request else "feedback", request)


META_REQUEST = {"task": "toy", "task_hash": "t" * 8, "provider": "anthropic", "attempt": 1, "problems": []}


def feedback_request(blobs: MemoryBlobStore, *, mode: str = "WH", force: str | None = None,
                     recommended: str = "grpo") -> dict[str, Any]:
    """Generation 1 of a run whose harness was edited after generation 0; the trajectories are
    gateway-shaped blobs."""
    old, new = blobs.put_text(GOOD), blobs.put_text(BETTER)
    episodes = []
    outcomes = [("ok", "animal", 1.0), ("ok", "tool", 0.0), ("ok", "", 0.0), ("timeout", None, 0.0),
                ("crash", None, 0.0), ("ok", "fruit", 1.0), ("ok", "colour", 0.0), ("ok", "tool", 1.0)]
    for i, (status, prediction, reward) in enumerate(outcomes):
        trajectory = {"calls": [{"index": 0, "endpoint": "completions", "status": 200,
                                 "prompts": [f"word: sample {i}\noptions: ...\nanswer:"],
                                 "generations": [{"text": f"completion {i}", "prompt_token_ids": [1],
                                                  "token_ids": [2]}]}]}
        episodes.append({"episode_id": f"ep-{i}", "sample_id": f"s{i}", "status": status,
                         "prediction": prediction, "reward": reward,
                         "trajectory_hash": blobs.put_text(canonical_json(trajectory))})
    return {
        "task": "toy", "task_hash": "t" * 8, "generation": 1, "provider": "anthropic", "mode": mode,
        "harness_hash": new, "adapter_hash": None, "best_generation": 1,
        "history": [
            {"generation": 0, "score": 0.125, "harness_hash": old, "adapter_hash": None,
             "action": "edit_harness", "algorithm": None},
            {"generation": 1, "score": 0.375, "harness_hash": new, "adapter_hash": None,
             "action": None, "algorithm": None},
        ],
        "episodes": episodes,
        "reward_shape": {"kind": "binary", "recommended": recommended,
                         "reason": "binary pass/fail at 38%: group-relative advantages"},
        "force": force,
    }


def shown_ids(body: dict[str, Any]) -> list[str]:
    """The episode ids the digest in this request showed (what the model may cite)."""
    messages = body["messages"]
    first = next(m for m in messages if m["role"] == "user")
    text = first["content"] if isinstance(first["content"], str) else json.dumps(first["content"])
    return re.findall(r"### episode (\S+) \|", text)


def answer(action: str, **fields: Any) -> Any:
    """A responder answer that cites the first two shown episodes."""
    def respond(body: dict[str, Any]) -> dict[str, Any]:
        return {"action": action, "rationale": f"because {action}", "evidence": shown_ids(body)[:2], **fields}
    return respond


class Scripted:
    """Answers in order; callables are called with the request body."""

    def __init__(self, *answers: Any) -> None:
        self.script = Script(*answers)

    def __call__(self, body: dict[str, Any]) -> Any:
        reply = self.script(body)
        return reply(body) if callable(reply) else reply

    @property
    def seen(self) -> list[dict[str, Any]]:
        return self.script.seen


def retrying(handler: Any, request: dict[str, Any], blobs: MemoryBlobStore, kind: str,
             attempts: int = 3) -> tuple[EffectResult, list[TransientEffectError]]:
    """What the runtime does with a transient failure: run the effect again."""
    transient: list[TransientEffectError] = []
    for attempt in range(1, attempts + 1):
        try:
            return handler.run(typed(request), context(blobs, kind, attempt=attempt)), transient
        except TransientEffectError as exc:
            transient.append(exc)
    raise AssertionError(f"still failing after {attempts} attempts: {transient}")


# ---------------------------------------------------------------- Meta


def test_meta_stores_a_valid_harness_from_a_tool_call(anthropic_server: AnthropicServer) -> None:
    anthropic_server.responder = Script({"harness": f"```python\n{GOOD}```", "notes": "template"})
    blobs = MemoryBlobStore()
    outcome = meta(anthropic(anthropic_server)).run(typed(META_REQUEST), context(blobs, "meta"))
    assert outcome.result.valid is True and outcome.result.problems == ()
    assert blobs.get_text(outcome.result.harness_hash) == GOOD, "fences stripped, source stored"
    (sent,) = anthropic_server.message_requests
    assert sent["tool_choice"] == {"type": "tool", "name": "harness"}
    assert sent["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert "def solve(sample: dict, model) -> str" in sent["system"][0]["text"]
    assert ToyTask.description in sent["system"][0]["text"]
    assert '"word": "' in sent["messages"][0]["content"], "public samples are shown"
    usage = outcome.usage
    assert usage.tokens_in > 0 and usage.tokens_out > 0 and usage.dollars > 0 and usage.wall_s >= 0
    assert anthropic_server.errors == []


def test_meta_is_re_asked_after_an_invalid_harness(anthropic_server: AnthropicServer) -> None:
    script = Script({"harness": BROKEN}, {"harness": GOOD})
    anthropic_server.responder = script
    blobs = MemoryBlobStore()
    request = {**META_REQUEST, "attempt": 2, "problems": ["earlier: no solve defined"]}
    outcome = meta(anthropic(anthropic_server)).run(typed(request), context(blobs, "meta"))
    assert outcome.result.valid is True
    assert blobs.get_text(outcome.result.harness_hash) == GOOD
    first, second = script.seen
    assert "earlier: no solve defined" in first["messages"][0]["content"]
    assert [m["role"] for m in second["messages"]] == ["user", "assistant", "user"]
    assert "must take two arguments" in second["messages"][2]["content"]
    assert BROKEN.strip().splitlines()[0] in second["messages"][1]["content"]
    assert second["system"] == first["system"], "the cached prefix is the same on a re-ask"
    per_call = anthropic_server.requests
    assert len(per_call) == 2


def test_meta_gives_up_with_the_last_harness_marked_invalid(anthropic_server: AnthropicServer) -> None:
    anthropic_server.responder = Script({"harness": BROKEN}, {"harness": "def solve(:"})
    blobs = MemoryBlobStore()
    outcome = meta(anthropic(anthropic_server), max_attempts=2).run(typed(META_REQUEST), context(blobs, "meta"))
    result = outcome.result.record()
    assert result["valid"] is False and result["harness_hash"] is not None
    assert blobs.get_text(result["harness_hash"]) == "def solve(:\n"
    assert result["problems"][0].startswith("SyntaxError")
    assert any("no valid harness after 2 attempts" in p for p in result["problems"])
    (event,) = interpret("meta", "m1", META_REQUEST, result)
    assert event.valid is False


# ---------------------------------------------------------------- Feedback


def test_feedback_edit_harness_is_parsed_and_the_harness_stored(anthropic_server: AnthropicServer) -> None:
    new_source = render(Knobs(extract="option", samples=9, fallback="first_option"))
    anthropic_server.responder = Scripted(answer("edit_harness", harness=new_source))
    blobs = MemoryBlobStore()
    request = feedback_request(blobs, mode="H")
    outcome = feedback(anthropic(anthropic_server)).run(typed(request), context(blobs, "feedback"))
    result = outcome.result.record()
    assert result["action"] == "edit_harness" and result["forced"] is False
    assert blobs.get_text(result["harness_hash"]) == new_source
    assert result["provider"] == "anthropic:claude-sonnet-4-6"
    assert result["evidence"] and all(e.startswith("ep-") for e in result["evidence"])
    digest = blobs.get_text(result["digest_hash"])
    assert "counts: unparseable 2, wrong 1, timeout 1, crash 1, correct 3" in digest
    assert result["digest_summary"].startswith("8 dev episodes")
    (sent,) = anthropic_server.message_requests
    system, user = sent["system"][0]["text"], sent["messages"][0]["content"]
    assert "Feedback Agent" in system and "def solve(sample: dict, model) -> str" in system
    assert "mode H" in user and "update_weights" not in user.split("\n")[0]
    assert "--- generation 0" in user and "+++ generation 1" in user, "the last edit's diff"
    assert "recommended algorithm: grpo" in user
    assert "completion 3" in user or "completion 4" in user, "trajectory summaries"
    (event,) = interpret("feedback", "f1", request, result)
    assert isinstance(event, FeedbackDecided) and event.harness_hash == result["harness_hash"]


def test_feedback_update_weights_is_parsed_into_a_plan(anthropic_server: AnthropicServer) -> None:
    anthropic_server.responder = Scripted(answer("update_weights", plan={
        "algorithm": "entropic", "params": {"beta": 2.0, "lr": 1e-5}, "episodes": ["ep-0", "ep-5"]},
        algorithm_override_reason="successes are rare in the rollouts"))
    blobs = MemoryBlobStore()
    request = feedback_request(blobs)
    result = feedback(anthropic(anthropic_server)).run(typed(request), context(blobs, "feedback")).result.record()
    assert result["action"] == "update_weights"
    assert result["plan"] == {"algorithm": "entropic", "params": {"beta": 2.0, "lr": 1e-5},
                              "episodes": ["ep-0", "ep-5"]}
    assert "overrides the recommended grpo: successes are rare" in result["rationale"]
    assert result["harness_hash"] is None
    (event,) = interpret("feedback", "f1", request, result)
    assert event.plan is not None and event.plan.algorithm == "entropic"
    assert event.recommended_algorithm == "grpo"


@pytest.mark.parametrize("bad, expected", [
    ({"plan": {"algorithm": "grpo"}}, "not allowed in mode H"),
])
def test_update_weights_in_mode_h_is_re_asked(anthropic_server: AnthropicServer, bad: dict[str, Any],
                                              expected: str) -> None:
    responder = Scripted(answer("update_weights", **bad), answer("edit_harness", harness=BETTER + "\n# v2\n"))
    anthropic_server.responder = responder
    blobs = MemoryBlobStore()
    result = feedback(anthropic(anthropic_server)).run(typed(feedback_request(blobs, mode="H")),
                                                        context(blobs, "feedback")).result.record()
    assert result["action"] == "edit_harness"
    assert "accepted on attempt 2 of 3" in result["rationale"] and expected in result["rationale"]
    second = responder.seen[1]
    assert [m["role"] for m in second["messages"]] == ["user", "assistant", "user"]
    assert expected in second["messages"][2]["content"]


def test_an_unknown_algorithm_is_re_asked_and_the_second_answer_used(anthropic_server: AnthropicServer) -> None:
    anthropic_server.responder = Scripted(answer("update_weights", plan={"algorithm": "sgd_magic"}),
                                          answer("update_weights", plan={"algorithm": "grpo"}))
    blobs = MemoryBlobStore()
    reported: list[Any] = []
    ctx = context(blobs, "feedback")
    ctx.report = reported.append
    outcome = feedback(anthropic(anthropic_server)).run(typed(feedback_request(blobs)), ctx)
    assert outcome.result.plan.algorithm == "grpo"
    assert "unknown algorithm 'sgd_magic'" in outcome.result.rationale
    (refusal,) = reported
    assert (refusal.type, refusal.effect_id, refusal.attempt) == ("AnswerRefused", "feedback-effect", 1)
    assert any("sgd_magic" in problem for problem in refusal.problems)
    assert len(anthropic_server.message_requests) == 2
    one_call_in = anthropic_server.message_requests[0]
    assert outcome.usage.tokens_in > 0 and outcome.usage.tokens_out > 0
    assert one_call_in["system"] == anthropic_server.message_requests[1]["system"]


def test_evidence_and_harness_are_checked(anthropic_server: AnthropicServer) -> None:
    anthropic_server.responder = Scripted(
        {"action": "stop", "rationale": "done", "evidence": ["ep-0", "held-out-7"]},
        answer("edit_harness"),  # no harness
        answer("edit_harness", harness=BROKEN),
        answer("stop"),
    )
    blobs = MemoryBlobStore()
    with pytest.raises(EffectError) as failed:
        feedback(anthropic(anthropic_server)).run(typed(feedback_request(blobs)), context(blobs, "feedback"))
    message = str(failed.value)
    assert "no valid decision after 3 attempts" in message
    assert "not shown: held-out-7" in message
    assert "needs the complete new harness" in message
    assert "the harness fails its check" in message
    assert not isinstance(failed.value, TransientEffectError)


def test_a_forced_training_decision_is_obeyed_without_asking(anthropic_server: AnthropicServer) -> None:
    blobs = MemoryBlobStore()
    handler = feedback(anthropic(anthropic_server))
    result = handler.run(typed(feedback_request(blobs, force="update_weights")), context(blobs, "feedback")).result.record()
    assert (result["action"], result["plan"]["algorithm"], result["forced"]) == ("update_weights", "grpo", True)
    result = handler.run(typed(feedback_request(blobs, force="update_weights:dpo")), context(blobs, "feedback")).result.record()
    assert result["plan"]["algorithm"] == "dpo"
    assert handler.run(typed(feedback_request(blobs, force="stop")), context(blobs, "feedback")).result.action == "stop"
    assert anthropic_server.requests == []


def test_a_forced_harness_edit_is_a_constraint_on_the_model(anthropic_server: AnthropicServer) -> None:
    responder = Scripted(answer("stop"), answer("edit_harness", harness=BETTER + "\n# forced\n"))
    anthropic_server.responder = responder
    blobs = MemoryBlobStore()
    result = feedback(anthropic(anthropic_server)).run(typed(feedback_request(blobs, force="edit_harness")),
                                                        context(blobs, "feedback")).result.record()
    assert result["action"] == "edit_harness" and result["forced"] is True
    assert "force the action 'edit_harness'" in responder.seen[0]["messages"][0]["content"]
    assert "force the action 'edit_harness', not 'stop'" in result["rationale"]


# ---------------------------------------------------------------- provider failures


@pytest.mark.parametrize("fault", [Fault.rate_limited(retry_after=0), Fault.server_error()],
                         ids=["429", "500"])
def test_transient_anthropic_failures_are_retried_by_the_runtime(anthropic_server: AnthropicServer,
                                                                 fault: Fault) -> None:
    anthropic_server.fail_next(fault)
    anthropic_server.responder = Scripted(answer("update_weights", plan={"algorithm": "grpo"}))
    blobs = MemoryBlobStore()
    outcome, transient = retrying(feedback(anthropic(anthropic_server)), feedback_request(blobs), blobs, "feedback")
    assert outcome.result.plan.algorithm == "grpo"
    (error,) = transient
    assert isinstance(error, TransientLLMError) and error.status == fault.status
    assert KEY not in str(error)
    assert len(anthropic_server.requests) == 2


def test_a_transient_failure_during_a_re_ask_restarts_the_effect(anthropic_server: AnthropicServer) -> None:
    def first(body: dict[str, Any]) -> dict[str, Any]:
        anthropic_server.fail_next(Fault.overloaded())  # the re-ask will hit this
        return {"harness": BROKEN}

    anthropic_server.responder = Scripted(first, {"harness": GOOD})
    blobs = MemoryBlobStore()
    outcome, transient = retrying(meta(anthropic(anthropic_server)), META_REQUEST, blobs, "meta")
    assert outcome.result.valid is True
    assert [e.status for e in transient] == [529]  # type: ignore[attr-defined]


def test_a_permanent_failure_is_not_re_asked(anthropic_server: AnthropicServer) -> None:
    anthropic_server.fail_next(Fault.unauthorized())
    blobs = MemoryBlobStore()
    with pytest.raises(PermanentLLMError) as failed:
        meta(anthropic(anthropic_server)).run(typed(META_REQUEST), context(blobs, "meta"))
    assert isinstance(failed.value, EffectError) and failed.value.status == 401
    assert len(anthropic_server.requests) == 1


def test_a_reply_without_the_tool_call_is_re_asked(anthropic_server: AnthropicServer) -> None:
    anthropic_server.responder = Scripted(Reply(text="Here is my harness: ..."), {"harness": GOOD})
    blobs = MemoryBlobStore()
    outcome = meta(anthropic(anthropic_server)).run(typed(META_REQUEST), context(blobs, "meta"))
    assert outcome.result.valid is True
    second = anthropic_server.message_requests[1]
    assert "could not be read" in second["messages"][2]["content"]


# ---------------------------------------------------------------- OpenAI-compatible


def test_openai_meta_and_feedback(openai_server: OpenAIServer) -> None:
    openai_server.responder = Scripted(
        "not json at all",                       # unreadable → re-asked
        {"harness": GOOD},
        answer("update_weights", plan={"algorithm": "grpo"}),  # mode H → re-asked
        answer("stop"),
    )
    provider = openai_provider(openai_server)
    blobs = MemoryBlobStore()
    outcome = meta(provider, model=None).run(typed(META_REQUEST), context(blobs, "meta"))
    assert outcome.result.valid is True and blobs.get_text(outcome.result.harness_hash) == GOOD
    decided = feedback(provider, model=None).run(typed(feedback_request(blobs, mode="H")), context(blobs, "feedback"))
    assert decided.result.action == "stop"
    assert decided.result.provider == "openai:loopback-model"
    bodies = openai_server.completion_requests
    assert bodies[0]["response_format"]["json_schema"]["name"] == "harness"
    assert bodies[2]["response_format"]["json_schema"]["name"] == "decision"
    assert bodies[0]["messages"][0]["role"] == "system"
    assert decided.usage.tokens_in > 0
    assert openai_server.errors == []


@pytest.mark.parametrize("fault", [Fault.rate_limited(retry_after=0), Fault.server_error()],
                         ids=["429", "500"])
def test_transient_openai_failures_are_retried_by_the_runtime(openai_server: OpenAIServer, fault: Fault) -> None:
    openai_server.fail_next(fault)
    openai_server.responder = Scripted({"harness": GOOD})
    blobs = MemoryBlobStore()
    outcome, transient = retrying(meta(openai_provider(openai_server), model="loopback-model"),
                                  META_REQUEST, blobs, "meta")
    assert outcome.result.valid is True
    assert [type(e) for e in transient] == [TransientLLMError]


# ---------------------------------------------------------------- pure parts


def test_prompt_builders() -> None:
    history = [{"generation": 0, "score": 0.2, "harness_hash": "a" * 64, "action": "edit_harness", "algorithm": None},
               {"generation": 1, "score": 0.5, "harness_hash": "b" * 64, "action": "update_weights",
                "algorithm": "grpo"},
               {"generation": 2, "score": 0.4, "harness_hash": "b" * 64, "action": None, "algorithm": None}]
    table = prompts.history_table(history)
    assert "0.5000 (+0.3000)" in table and "0.4000 (-0.1000)" in table and "(deciding now)" in table
    assert "mean=0.5000" in prompts.reward_stats([0.0, 1.0, 1.0, 0.0])
    assert "levels: 0×2, 1×2" in prompts.reward_stats([0.0, 1.0, 1.0, 0.0])
    diff = prompts.harness_diff("a\nb\n", "a\nc\n", "generation 0", "generation 1")
    assert "-b" in diff and "+c" in diff
    assert HARNESS_CONTRACT.strip()[:60] in prompts.meta_system("desc")
    asked = {**feedback_request(MemoryBlobStore(), mode="H"), "generation": 2, "episodes": [],
             "history": [{**h, "adapter_hash": None} for h in history]}
    assert "mode H" in prompts.feedback_user(typed(asked), harness_source="x", digest_text="TRAJECTORY DIGEST",
                                             last_diff=None)


def test_decision_checks_and_helpers() -> None:
    from sia.agents.llm import DecisionAnswer

    fields = feedback_request(MemoryBlobStore())
    request = typed({**fields, "episodes": [{**fields["episodes"][0], "episode_id": "e1"}]})
    ok = DecisionAnswer(action="update_weights", rationale="r", evidence=["e1"], plan={"algorithm": "grpo"})
    assert check_decision(ok, request, ["e1"], "src", validate_harness) == []
    far = DecisionAnswer(action="stop", rationale="r", rollback_to=5)
    assert "not a generation" in check_decision(far, request, [], "src", validate_harness)[0]
    same = DecisionAnswer(action="edit_harness", rationale="r", harness=GOOD)
    assert check_decision(same, request, [], GOOD, validate_harness) == ["the new harness is identical to the current one"]
    assert strip_fences("```\nx = 1\n```") == "x = 1\n"
    picked = public_samples(ToyTask(), 3, seed=1)
    assert len(picked) == 3 and picked == public_samples(ToyTask(), 3, seed=1)


class Unrewarded:
    """A task under which no completion earns anything (the trainer would see all zeros)."""

    def reward(self, sample_id: str, text: str | None) -> float:
        return 0.0


def test_feedback_sees_the_trainers_rewards_and_refuses_an_update_that_had_no_signal(
        anthropic_server: AnthropicServer) -> None:
    from sia.effects.train import reward_shape_of

    responder = Scripted(answer("update_weights", plan={"algorithm": "grpo"}),
                         answer("edit_harness", harness=BETTER + "\n# v2\n"))
    anthropic_server.responder = responder
    blobs = MemoryBlobStore()
    request = {**feedback_request(blobs),
               "no_signal": [{"algorithm": "grpo", "params": {},
                              "reason": "every one of the 8 groups has a constant reward"}]}
    handler = feedback(anthropic(anthropic_server),
                       reward_shape_of=lambda episodes, store: reward_shape_of(episodes, store, Unrewarded()))
    result = handler.run(typed(request), context(blobs, "feedback")).result.record()
    assert result["action"] == "edit_harness"
    assert result["reward_shape"]["kind"] == "no_signal" and result["reward_shape"]["recommended"] is None
    prompt = responder.seen[0]["messages"][0]["content"]
    text = prompt if isinstance(prompt, str) else json.dumps(prompt)
    assert "recommended algorithm: None (no learning signal" in text
    assert "with no learning signal" in text and "every one of the 8 groups" in text
    assert "already had no learning signal in this generation" in result["rationale"]
    (event,) = interpret("feedback", "f1", request, result)
    assert event.recommended_algorithm is None


def test_the_history_table_shows_updates_without_signal() -> None:
    history = [{"generation": 0, "score": 0.1, "action": "update_weights", "algorithm": "grpo",
                "no_signal": [{"algorithm": "grpo", "params": {}, "reason": "all groups constant"}]},
               {"generation": 1, "score": 0.1, "action": None, "algorithm": None}]
    assert "a grpo update had no learning signal and changed nothing: all groups constant" in \
        prompts.history_table(history)


def test_a_search_round_shows_the_llm_every_candidate_already_explored() -> None:
    fields = feedback_request(MemoryBlobStore())
    tried = [{"generation": 1, "round": 0, "index": 2, "action": "update_weights", "harness_hash": None,
              "algorithm": "dpo", "parent_generation": None, "score": 0.25, "chosen": False,
              "note": "no candidate beat the incumbent's 0.3750"}]
    asked = typed({**fields, "candidates": 4, "round": 1, "tried": tried, "parents": [0, 1]})
    text = prompts.feedback_user(asked, harness_source="x", digest_text="DIGEST", last_diff=None)
    assert "round 1 of generation 1" in text and "Propose a decision unlike every candidate below" in text
    assert "- gen 1 round 0 #2: update_weights (dpo), dev 0.2500: no candidate beat" in text
    assert "You may start from any of generations [0, 1]" in text
    plain = prompts.feedback_user(typed(fields), harness_source="x", digest_text="DIGEST", last_diff=None)
    assert "# Search" not in plain


# ---------------------------------------------------------------- search rounds


def search_request(blobs: MemoryBlobStore, candidates: int) -> dict[str, Any]:
    return {**feedback_request(blobs, mode="WH"), "candidates": candidates, "round": 0, "tried": [], "parents": []}


def test_a_search_round_takes_the_llms_alternatives_as_candidates(anthropic_server: AnthropicServer) -> None:
    main, other = (render(Knobs(extract="option", samples=n, fallback="first_option")) for n in (7, 9))
    anthropic_server.responder = Scripted(answer("edit_harness", harness=main, alternatives=[
        {"action": "update_weights", "rationale": "pairs of answers", "plan": {"algorithm": "dpo"},
         "algorithm_override_reason": "the wrong answers make good rejected halves"},
        {"action": "edit_harness", "rationale": "the main one again", "harness": f"```python\n{main}```"},
        {"action": "edit_harness", "rationale": "more samples", "harness": other, "rollback_to": 0}]))
    blobs = MemoryBlobStore()
    request = search_request(blobs, 3)
    result = feedback(anthropic(anthropic_server)).run(typed(request), context(blobs, "feedback")).result
    (sent,) = anthropic_server.message_requests
    schema = sent["tools"][0]["input_schema"]["properties"]["alternatives"]
    assert schema["maxItems"] == 2 and schema["items"]["properties"]["action"]["enum"] == ["edit_harness",
                                                                                          "update_weights"]
    assert "Propose up to 3 candidates" in sent["messages"][0]["content"]
    first, dpo, last = result.candidates  # the repeat of the main decision is explored once
    assert (first.action, blobs.get_text(first.harness_hash), first.rationale) == ("edit_harness", main,
                                                                                   result.rationale)
    assert dpo.action == "update_weights" and dpo.plan is not None and dpo.plan.algorithm == "dpo"
    assert "overrides the recommended grpo: the wrong answers make good rejected halves" in dpo.rationale
    assert blobs.get_text(last.harness_hash) == other and last.parent_generation == 0
    (event,) = interpret("feedback", "f1", request, result.record())
    assert event.type == "CandidatesProposed" and event.candidates == result.candidates


def test_an_unusable_alternative_is_refused_and_asked_again(anthropic_server: AnthropicServer) -> None:
    main = render(Knobs(extract="option", samples=7, fallback="first_option"))
    anthropic_server.responder = Scripted(
        answer("edit_harness", harness=main, alternatives=[
            {"action": "edit_harness", "rationale": "broken", "harness": BROKEN},
            {"action": "update_weights", "rationale": "no plan"}]),
        answer("edit_harness", harness=main, alternatives=[
            {"action": "update_weights", "rationale": "train", "plan": {"algorithm": "grpo"}}]))
    blobs = MemoryBlobStore()
    result = feedback(anthropic(anthropic_server)).run(typed(search_request(blobs, 4)),
                                                       context(blobs, "feedback")).result
    assert [c.action for c in result.candidates] == ["edit_harness", "update_weights"]
    assert "alternatives[0]: the harness fails its check" in result.rationale
    assert "alternatives[1]: update_weights needs a plan with an algorithm" in result.rationale
    assert len(anthropic_server.message_requests) == 2


def test_a_stop_takes_no_alternatives() -> None:
    blobs = MemoryBlobStore()
    decision = DecisionAnswer(action="stop", rationale="done", alternatives=[
        {"action": "update_weights", "rationale": "train", "plan": {"algorithm": "grpo"}}])
    problems = check_decision(decision, typed(search_request(blobs, 2)), [], GOOD, validate_harness)
    assert problems == ["stop ends the search: it takes no alternatives"]


def test_outside_a_search_the_schema_has_no_alternatives_and_any_given_are_ignored(
        anthropic_server: AnthropicServer) -> None:
    main = render(Knobs(extract="option", samples=7, fallback="first_option"))
    anthropic_server.responder = Scripted(answer("edit_harness", harness=main, alternatives=[
        {"action": "edit_harness", "rationale": "broken", "harness": BROKEN}]))
    blobs = MemoryBlobStore()
    request = feedback_request(blobs, mode="H")
    result = feedback(anthropic(anthropic_server)).run(typed(request), context(blobs, "feedback")).result
    (sent,) = anthropic_server.message_requests
    assert "alternatives" not in sent["tools"][0]["input_schema"]["properties"]
    assert result.candidates == () and blobs.get_text(result.harness_hash) == main
    assert feedback_schema(1) is feedback_schema(None)
