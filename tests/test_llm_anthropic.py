"""The Anthropic provider, driven through the real `anthropic` SDK against the loopback server."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anthropic
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sia.core.events.canonical import canonical_json
from sia.llm import (
    LLMRequest,
    LLMResponse,
    Message,
    MissingCredentials,
    PermanentLLMError,
    TransientLLMError,
    Usage,
    get_provider,
)
from sia.llm.anthropic_provider import AnthropicProvider, build_params, tool_instruction
from sia.llm.errors import NO_STATUS, is_retryable_status, retry_after_seconds
from sia.testing import AnthropicServer, Fault, Reply, Script
from sia.testing.anthropic_server import FORCED_TOOL_WITH_THINKING, min_cache_tokens_for

KEY = "sk-ant-test-SECRET-0123456789"
DECISION = {
    "type": "object",
    "properties": {"action": {"type": "string", "enum": ["edit_harness", "update_weights", "stop"]},
                   "rationale": {"type": "string"}},
    "required": ["action", "rationale"],
}
LONG_SYSTEM = "You are the Feedback Agent. " + "Stable task context. " * 400


def ask(text: str = "hello", **fields: Any) -> LLMRequest:
    return LLMRequest(messages=(Message(role="user", content=text),), **fields)


def decision_request(**fields: Any) -> LLMRequest:
    return ask("decide", response_schema={"name": "decision", "json_schema": DECISION,
                                          "description": "The Feedback decision."}, **fields)


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    return KEY


@pytest.fixture
def server() -> Iterator[AnthropicServer]:
    with AnthropicServer(api_key=KEY) as srv:
        yield srv


@pytest.fixture
def provider(server: AnthropicServer) -> Iterator[AnthropicProvider]:
    made = get_provider("anthropic", base_url=server.base_url, timeout=10.0)
    assert isinstance(made, AnthropicProvider)
    yield made
    made.close()


# ---------------------------------------------------------------- success paths


def test_plain_text(server: AnthropicServer, provider: AnthropicProvider) -> None:
    server.responder = lambda body: f"echo: {body['messages'][-1]['content']}"
    response = provider.complete(ask("hello", system="be brief", max_tokens=64))
    assert response.text == "echo: hello"
    assert response.structured is None
    assert response.model == "claude-sonnet-4-6"
    assert response.stop_reason == "end_turn"
    assert response.raw_id.startswith("msg_")
    (sent,) = server.message_requests
    assert sent == {"model": "claude-sonnet-4-6", "max_tokens": 64, "system": "be brief",
                    "messages": [{"role": "user", "content": "hello"}]}
    headers = server.requests[0].headers
    assert headers["anthropic-version"] and headers["x-stainless-retry-count"] == "0"


def test_sampling_fields_are_cache_identity_not_wire(server: AnthropicServer,
                                                     provider: AnthropicProvider) -> None:
    """API 2026-10-21 refuses temperature with a 400, and has no seed: neither goes out."""
    cold, warm = ask(temperature=0.0, seed=7), ask(temperature=1.0, seed=8)
    assert cold.model_dump(mode="json") != warm.model_dump(mode="json")
    provider.complete(cold)
    assert not {"temperature", "seed", "top_p", "top_k"} & set(server.message_requests[0])


def test_structured_output_via_forced_tool(server: AnthropicServer, provider: AnthropicProvider) -> None:
    server.responder = lambda body: Reply(text="Thinking it over.",
                                          tool_input={"action": "stop", "rationale": "plateau"})
    response = provider.complete(decision_request())
    assert response.structured == {"action": "stop", "rationale": "plateau"}
    assert response.text == "Thinking it over."
    assert response.stop_reason == "tool_use"
    (sent,) = server.message_requests
    assert sent["tools"] == [{"name": "decision", "description": "The Feedback decision.",
                              "input_schema": DECISION}]
    assert sent["tool_choice"] == {"type": "tool", "name": "decision"}


def test_structured_request_answered_without_the_tool_is_permanent(
        server: AnthropicServer, provider: AnthropicProvider) -> None:
    server.responder = lambda body: Reply(text="I refuse to use tools.", stop_reason="end_turn")
    with pytest.raises(PermanentLLMError, match="expected a 'decision' tool call"):
        provider.complete(decision_request())


def test_structured_answer_cut_off_at_max_tokens_is_permanent(
        server: AnthropicServer, provider: AnthropicProvider) -> None:
    server.responder = lambda body: Reply(tool_input={"action": "st"}, stop_reason="max_tokens")
    with pytest.raises(PermanentLLMError, match="cut off at max_tokens=4096"):
        provider.complete(decision_request())


def test_prompt_caching_marker_and_cache_usage(server: AnthropicServer,
                                               provider: AnthropicProvider) -> None:
    request = decision_request(system=LONG_SYSTEM, cache_prefix=True)
    first, second = provider.complete(request), provider.complete(request)
    block = server.message_requests[0]["system"]
    assert block == [{"type": "text", "text": LONG_SYSTEM, "cache_control": {"type": "ephemeral"}}]
    assert first.usage.cache_write_tokens > 1000 and first.usage.cache_read_tokens == 0
    assert second.usage.cache_read_tokens == first.usage.cache_write_tokens
    assert second.usage.cache_write_tokens == 0
    assert first.usage.total_input_tokens == second.usage.total_input_tokens


def test_no_caching_marker_without_cache_prefix(server: AnthropicServer,
                                                provider: AnthropicProvider) -> None:
    response = provider.complete(ask(system=LONG_SYSTEM))
    assert server.message_requests[0]["system"] == LONG_SYSTEM
    assert "cache_control" not in json.dumps(server.message_requests[0])
    assert response.usage.cache_read_tokens == response.usage.cache_write_tokens == 0


def test_cache_prefix_without_system_marks_the_tool() -> None:
    params = build_params(decision_request(cache_prefix=True))
    assert params["tools"][0]["cache_control"] == {"type": "ephemeral"}
    assert "system" not in params


def test_usage_mapping(server: AnthropicServer, provider: AnthropicProvider) -> None:
    server.responder = lambda body: Reply(text="x", usage={
        "input_tokens": 11, "output_tokens": 22, "cache_creation_input_tokens": 33,
        "cache_read_input_tokens": 44})
    usage = provider.complete(ask()).usage
    assert (usage.input_tokens, usage.output_tokens, usage.cache_write_tokens,
            usage.cache_read_tokens) == (11, 22, 33, 44)
    assert usage.total_input_tokens == 88


def test_base_url_from_environment(server: AnthropicServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.base_url)
    assert get_provider("anthropic").complete(ask()).text == "ok"
    assert len(server.requests) == 1


def test_rotated_key_is_read_at_call_time(provider: AnthropicProvider, server: AnthropicServer,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    provider.complete(ask())
    server.api_key = "sk-ant-rotated"
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-rotated")
    provider.complete(ask())
    assert server.requests[-1].headers["authorization"] == "Bearer sk-ant-rotated"


# ---------------------------------------------------------------- failures


def test_rate_limit_is_transient_with_retry_after(server: AnthropicServer,
                                                  provider: AnthropicProvider) -> None:
    server.fail_next(Fault.rate_limited(retry_after=0), Fault.rate_limited(retry_after=2.5))
    with pytest.raises(TransientLLMError) as first:
        provider.complete(ask())
    with pytest.raises(TransientLLMError) as second:
        provider.complete(ask())
    assert (first.value.status, first.value.retry_after) == (429, 0.0)
    assert (second.value.status, second.value.retry_after) == (429, 2.5)
    assert "rate_limit_error" in str(first.value)
    assert len(server.requests) == 2, "the SDK must not retry on its own"
    assert provider.complete(ask()).text == "ok"


@pytest.mark.parametrize(("fault", "status"), [
    (Fault.server_error(), 500), (Fault.overloaded(), 529), (Fault(503, "unavailable"), 503),
    (Fault(408, "request timeout"), 408), (Fault.dropped(), NO_STATUS),
])
def test_transient_failures(server: AnthropicServer, provider: AnthropicProvider,
                            fault: Fault, status: int) -> None:
    server.fail_next(fault)
    with pytest.raises(TransientLLMError) as caught:
        provider.complete(ask())
    assert caught.value.status == status
    assert caught.value.retry_after is None
    assert len(server.requests) == 1
    assert provider.complete(ask()).text == "ok"


def test_overloaded_names_its_error_type(server: AnthropicServer, provider: AnthropicProvider) -> None:
    server.fail_next(Fault.overloaded())
    with pytest.raises(TransientLLMError, match="HTTP 529 overloaded_error"):
        provider.complete(ask())


def test_wrong_key_is_permanent(server: AnthropicServer, provider: AnthropicProvider,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-wrong")
    with pytest.raises(PermanentLLMError) as caught:
        provider.complete(ask())
    assert caught.value.status == 401
    assert "authentication_error" in str(caught.value) and "invalid x-api-key" in str(caught.value)
    assert "sk-ant-wrong" not in str(caught.value)


@pytest.mark.parametrize(("fault", "status"), [
    (Fault(400, "messages: roles must alternate"), 400), (Fault(404, "model: not found"), 404),
    (Fault(403, "forbidden"), 403), (Fault(500, "bad", headers={"x-should-retry": "false"}), 500),
])
def test_permanent_failures(server: AnthropicServer, provider: AnthropicProvider,
                            fault: Fault, status: int) -> None:
    server.fail_next(fault)
    with pytest.raises(PermanentLLMError) as caught:
        provider.complete(ask())
    assert caught.value.status == status
    assert fault.message in str(caught.value)


def test_missing_key_fails_before_any_request(server: AnthropicServer, provider: AnthropicProvider,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    with pytest.raises(MissingCredentials, match="ANTHROPIC_API_KEY"):
        provider.complete(ask())
    monkeypatch.setenv("ANTHROPIC_API_KEY", "  ")
    with pytest.raises(MissingCredentials):
        provider.check_credentials()
    assert server.requests == []


def test_missing_key_is_a_permanent_effect_error() -> None:
    from sia.effects.base import EffectError, TransientEffectError
    assert issubclass(MissingCredentials, EffectError)
    assert issubclass(TransientLLMError, TransientEffectError)
    assert not issubclass(PermanentLLMError, TransientEffectError)


def test_request_for_another_provider_is_refused(provider: AnthropicProvider) -> None:
    with pytest.raises(PermanentLLMError, match="provider 'openai'"):
        provider.complete(ask(provider="openai", model="m"))


# ---------------------------------------------------------------- secrets


def test_api_key_never_leaves_the_headers(server: AnthropicServer, provider: AnthropicProvider) -> None:
    server.responder = lambda body: {"action": "stop", "rationale": "done"}
    request = decision_request(system=LONG_SYSTEM, cache_prefix=True)
    response = provider.complete(request)
    server.fail_next(Fault.rate_limited(0))
    with pytest.raises(TransientLLMError) as failed:
        provider.complete(request)
    recorded = canonical_json([request.model_dump(mode="json"), response.model_dump(mode="json")])
    assert KEY not in recorded
    assert KEY not in str(failed.value) and KEY not in repr(provider)
    assert all(KEY not in r.text for r in server.requests)
    assert all(r.headers["authorization"] == f"Bearer {KEY}" for r in server.requests)


def test_no_field_can_carry_a_key() -> None:
    with pytest.raises(ValueError):
        LLMRequest.model_validate({"messages": [{"role": "user", "content": "x"}], "api_key": KEY})
    with pytest.raises(TypeError):
        get_provider("anthropic", api_key=KEY)


# ---------------------------------------------------------------- values and registry


@settings(max_examples=40, deadline=None)
@given(system=st.text(max_size=40), text=st.text(min_size=1, max_size=40),
       temperature=st.none() | st.floats(0, 2), seed=st.none() | st.integers(-2**40, 2**40),
       cache=st.booleans(), max_tokens=st.integers(1, 10**6))
def test_request_round_trips_through_canonical_json(system: str, text: str, temperature: float | None,
                                                    seed: int | None, cache: bool, max_tokens: int) -> None:
    request = ask(text, system=system, temperature=temperature, seed=seed, cache_prefix=cache,
                  max_tokens=max_tokens)
    again = LLMRequest.model_validate(json.loads(canonical_json(request.model_dump(mode="json"))))
    assert again == request
    assert canonical_json(again.model_dump(mode="json")) == canonical_json(request.model_dump(mode="json"))


def test_response_round_trips() -> None:
    response = LLMResponse(text="t", structured={"a": [1, {"b": None}]}, model="m", stop_reason="tool_use",
                           raw_id="msg_1", usage=Usage(input_tokens=1, cache_read_tokens=2))
    assert LLMResponse.model_validate(json.loads(canonical_json(response.model_dump(mode="json")))) == response


def test_unrecordable_structured_answer_is_permanent(server: AnthropicServer,
                                                     provider: AnthropicProvider) -> None:
    server.responder = lambda body: {"action": "stop", "rationale": float("nan")}
    with pytest.raises(PermanentLLMError, match="unrecordable response"):
        provider.complete(decision_request())


def test_request_validation() -> None:
    assert ask().model == "claude-sonnet-4-6"
    assert ask(provider="openai").model is None
    with pytest.raises(ValueError):
        LLMRequest(messages=())
    with pytest.raises(ValueError):
        ask(temperature=float("nan"))
    with pytest.raises(ValueError):
        ask(response_schema={"name": "bad name", "json_schema": DECISION})
    with pytest.raises(ValueError):
        ask(response_schema={"name": "list", "json_schema": {"type": "array"}})


def test_unknown_provider() -> None:
    with pytest.raises(ValueError, match="unknown LLM provider 'nope'"):
        get_provider("nope")


def test_importing_sia_llm_loads_no_sdk() -> None:
    code = ("import sys, sia.llm, sia.llm.types, sia.llm.base; "
            "print(sorted(m for m in ('anthropic', 'openai') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_retry_policy_helpers() -> None:
    assert is_retryable_status(429) and is_retryable_status(529) and is_retryable_status(409)
    assert not is_retryable_status(400) and not is_retryable_status(401)
    assert is_retryable_status(400, {"x-should-retry": "true"})
    assert retry_after_seconds({"retry-after-ms": "1500"}) == 1.5
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None


# ---------------------------------------------------------------- the server itself


def test_server_refuses_what_the_api_refuses(server: AnthropicServer) -> None:
    client = anthropic.Anthropic(api_key=KEY, base_url=server.base_url, max_retries=0)
    base: dict[str, Any] = {"model": "claude-sonnet-4-6", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}
    with pytest.raises(anthropic.BadRequestError, match="temperature: Extra inputs are not permitted"):
        client.messages.create(**base, extra_body={"temperature": 0.5})
    with pytest.raises(anthropic.BadRequestError, match="tool_choice.name"):
        client.messages.create(**base, tools=[{"name": "a", "input_schema": {"type": "object"}}],
                               tool_choice={"type": "tool", "name": "b"})
    with pytest.raises(anthropic.BadRequestError, match="cache_control.type"):
        client.messages.create(**base, extra_body={"system": [
            {"type": "text", "text": "s", "cache_control": {"type": "forever"}}]})
    with pytest.raises(anthropic.BadRequestError, match="seed: Extra inputs"):
        client.messages.create(**base, extra_body={"seed": 1})
    client.close()
    raw = httpx.post(f"{server.base_url}/v1/messages", json=base, headers={"x-api-key": KEY})
    assert raw.status_code == 400 and "anthropic-version" in raw.json()["error"]["message"]
    assert raw.json()["type"] == "error" and raw.headers["request-id"]
    older = httpx.post(f"{server.base_url}/v1/messages", json={**base, "temperature": 0.5},
                        headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"})
    assert older.status_code == 200 and older.json()["type"] == "message"


def test_server_reports_responder_bugs(server: AnthropicServer, provider: AnthropicProvider) -> None:
    def broken(body: dict[str, Any]) -> str:
        raise KeyError("oops")
    server.responder = broken
    with pytest.raises(PermanentLLMError, match="responder failed: KeyError"):
        provider.complete(ask())
    assert server.errors and "KeyError" in server.errors[0]


def test_server_stops_with_its_block() -> None:
    with AnthropicServer() as srv:
        url = srv.base_url
        provider = AnthropicProvider(base_url=url, timeout=5.0)
        srv.api_key = KEY
        provider.complete(ask())
    with pytest.raises(TransientLLMError) as caught:
        provider.complete(ask())
    assert caught.value.status == NO_STATUS
    provider.close()


def test_script_answers_in_order_then_fails(server: AnthropicServer, provider: AnthropicProvider) -> None:
    script = Script("first", {"action": "edit_harness", "rationale": "r"})
    server.responder = script
    assert provider.complete(ask()).text == "first"
    assert provider.complete(decision_request()).structured == {"action": "edit_harness", "rationale": "r"}
    assert script.remaining == 0 and len(script.seen) == 2
    with pytest.raises(PermanentLLMError, match="script exhausted"):
        provider.complete(ask())


def test_env_points_a_fresh_provider_at_the_server(server: AnthropicServer,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in server.env.items():
        monkeypatch.setenv(name, value)
    assert AnthropicProvider().complete(ask()).text == "ok"


def test_concurrent_calls_share_one_provider(server: AnthropicServer, provider: AnthropicProvider) -> None:
    server.responder = lambda body: body["messages"][0]["content"].upper()
    with ThreadPoolExecutor(max_workers=8) as pool:
        texts = list(pool.map(lambda i: provider.complete(ask(f"q{i}")).text, range(32)))
    assert texts == [f"Q{i}" for i in range(32)]
    assert len(server.requests) == 32 and server.errors == []


def test_caching_below_the_models_minimum_silently_does_nothing(server: AnthropicServer,
                                                                provider: AnthropicProvider) -> None:
    """Anthropic's prompt caching guide: 1024 tokens for Sonnet 4.5, 2048 for Sonnet 4.6, 4096 for
    Haiku 4.5 / Opus 4.5-4.6; a shorter marked prefix is accepted and not cached."""
    assert [min_cache_tokens_for(m) for m in ("claude-sonnet-4-5", "claude-sonnet-4-6",
                                              "claude-haiku-4-5", "claude-opus-4-6")] == [1024, 2048, 4096, 4096]
    system = "Stable task context. " * 300  # about 1,600 tokens
    usage = {model: [provider.complete(ask(system=system, cache_prefix=True, model=model)).usage
                     for _ in range(2)] for model in ("claude-sonnet-4-5", "claude-sonnet-4-6")}
    assert usage["claude-sonnet-4-5"][1].cache_read_tokens > 1500
    assert all(u.cache_read_tokens == u.cache_write_tokens == 0 for u in usage["claude-sonnet-4-6"])
    assert all(body["system"][0]["cache_control"] == {"type": "ephemeral"} for body in server.message_requests)


def test_adaptive_only_model_refuses_a_forced_tool(server: AnthropicServer) -> None:
    """The adaptive-thinking guide: Opus 4.7 always thinks; thinking with a forced tool is a 400."""
    client = anthropic.Anthropic(api_key=KEY, base_url=server.base_url, max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.create(model="claude-opus-4-7", max_tokens=10,
                               messages=[{"role": "user", "content": "x"}],
                               tools=[{"name": "t", "input_schema": {"type": "object"}}],
                               tool_choice={"type": "tool", "name": "t"})
    client.close()
    assert refused.value.body["error"] == {"type": "invalid_request_error",
                                           "message": FORCED_TOOL_WITH_THINKING}


def test_a_forced_tool_refusal_is_answered_with_tool_choice_auto(server: AnthropicServer,
                                                                 provider: AnthropicProvider) -> None:
    server.responder = lambda body: {"action": "stop", "rationale": "done"}
    request = decision_request(model="claude-opus-4-7", system="You decide.")
    assert provider.complete(request).structured == {"action": "stop", "rationale": "done"}
    assert provider.complete(request).structured == {"action": "stop", "rationale": "done"}
    forced, auto, later = server.message_requests
    assert forced["tool_choice"] == {"type": "tool", "name": "decision"}
    assert auto["tool_choice"] == later["tool_choice"] == {"type": "auto"}
    assert auto["system"] == f"You decide.\n\n{tool_instruction('decision')}"
    assert provider.complete(decision_request()).structured is not None  # other models stay forced
    assert server.message_requests[-1]["tool_choice"] == {"type": "tool", "name": "decision"}


def test_other_400s_are_not_retried_without_the_forced_tool(server: AnthropicServer,
                                                            provider: AnthropicProvider) -> None:
    server.fail_next(Fault(400, "messages: roles must alternate"))
    with pytest.raises(PermanentLLMError, match="roles must alternate"):
        provider.complete(decision_request())
    assert len(server.message_requests) == 1
