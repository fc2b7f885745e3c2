"""The OpenAI-compatible provider, driven through the real `openai` SDK against the loopback server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from sia.core.events.canonical import canonical_json
from sia.llm import LLMRequest, Message, MissingCredentials, PermanentLLMError, TransientLLMError, get_provider
from sia.llm.errors import NO_STATUS
from sia.llm.openai_provider import OpenAIProvider, parse_json_object, refusal_kind
from sia.testing import Fault, OpenAIServer, Reply

KEY = "sk-openai-test-SECRET-9876543210"
MODEL = "loopback-model"
PLAN = {"type": "object", "properties": {"algorithm": {"type": "string"}, "lr": {"type": "number"}},
        "required": ["algorithm"]}
LONG_SYSTEM = "You are the Meta Agent. " + "Stable task description. " * 400


def ask(text: str = "hello", **fields: Any) -> LLMRequest:
    return LLMRequest(provider="openai", messages=(Message(role="user", content=text),), **fields)


def plan_request(**fields: Any) -> LLMRequest:
    return ask("plan", response_schema={"name": "training_plan", "json_schema": PLAN}, **fields)


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    return KEY


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer(api_key=KEY, models=(MODEL, "other-model")) as srv:
        yield srv


@pytest.fixture
def provider(server: OpenAIServer) -> Iterator[OpenAIProvider]:
    made = get_provider("openai", base_url=server.api_base, default_model=MODEL, timeout=10.0)
    assert isinstance(made, OpenAIProvider)
    yield made
    made.close()


def test_plain_text_and_sampling_parameters(server: OpenAIServer, provider: OpenAIProvider) -> None:
    server.responder = lambda body: f"echo: {body['messages'][-1]['content']}"
    response = provider.complete(ask("hi", system="be brief", temperature=0.3, seed=11, max_tokens=32))
    assert response.text == "echo: hi"
    assert response.structured is None
    assert (response.model, response.stop_reason) == (MODEL, "stop")
    assert response.raw_id.startswith("chatcmpl-")
    (sent,) = server.completion_requests
    assert sent == {"model": MODEL, "max_tokens": 32, "temperature": 0.3, "seed": 11,
                    "messages": [{"role": "system", "content": "be brief"},
                                 {"role": "user", "content": "hi"}]}
    assert server.requests[0].headers["x-stainless-retry-count"] == "0"


def test_request_model_wins_over_default(server: OpenAIServer, provider: OpenAIProvider) -> None:
    assert provider.complete(ask(model="other-model")).model == "other-model"


def test_no_model_at_all_is_permanent(server: OpenAIServer) -> None:
    with pytest.raises(PermanentLLMError, match="names no model"):
        OpenAIProvider(base_url=server.api_base).complete(ask())
    assert server.requests == []


def test_structured_output_via_json_schema(server: OpenAIServer, provider: OpenAIProvider) -> None:
    server.responder = lambda body: {"algorithm": "grpo", "lr": 1e-5}
    response = provider.complete(plan_request())
    assert response.structured == {"algorithm": "grpo", "lr": 1e-5}
    (sent,) = server.completion_requests
    assert sent["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "training_plan", "schema": PLAN, "strict": False}}


def test_structured_output_falls_back_to_the_prompt_once(provider: OpenAIProvider,
                                                          server: OpenAIServer) -> None:
    server.supports_json_schema = False
    server.responder = lambda body: Reply(text='Sure:\n```json\n{"algorithm": "dpo"}\n```')
    assert provider.complete(plan_request(system="sys")).structured == {"algorithm": "dpo"}
    assert provider.complete(plan_request()).structured == {"algorithm": "dpo"}
    first, retried, later = server.completion_requests
    assert "response_format" in first
    assert "response_format" not in retried and "response_format" not in later
    system = retried["messages"][0]["content"]
    assert system.startswith("sys\n\n") and '"required":["algorithm"]' in system
    assert provider.structured_mode == "prompt"


def test_a_400_for_another_reason_keeps_json_schema_mode(server: OpenAIServer,
                                                         provider: OpenAIProvider) -> None:
    server.fail_next(Fault(400, "bad temperature"))
    with pytest.raises(PermanentLLMError, match="bad temperature"):
        provider.complete(plan_request())
    assert provider.structured_mode == "json_schema"
    assert len(server.requests) == 1


def test_context_length_400_fails_at_once(provider: OpenAIProvider, server: OpenAIServer) -> None:
    """OpenAI's documented context-length refusal: 400, code context_length_exceeded, param messages."""
    server.context_window = 50
    with pytest.raises(PermanentLLMError, match="HTTP 400 invalid_request_error: This model's maximum "
                                                "context length is 50 tokens"):
        provider.complete(plan_request(system=LONG_SYSTEM))
    (sent,) = server.completion_requests
    assert "response_format" in sent
    assert provider.structured_mode == "json_schema"


def test_max_tokens_refusal_switches_to_max_completion_tokens(server: OpenAIServer) -> None:
    """o-series / gpt-5.x: 400 `unsupported_parameter` on `max_tokens` (OpenAI API reference, the
    body openai-python raises as BadRequestError); the field is switched once, not the schema mode."""
    server.completion_tokens_models = ("gpt-5.2",)
    server.models = (*server.models, "gpt-5.2")
    raw = openai.OpenAI(api_key=KEY, base_url=server.api_base, max_retries=0)
    with pytest.raises(openai.BadRequestError) as refused:
        raw.chat.completions.create(model="gpt-5.2", max_tokens=5,
                                    messages=[{"role": "user", "content": "x"}])
    raw.close()
    assert refused.value.body == {
        "message": "Unsupported parameter: 'max_tokens' is not supported with this model. Use "
                   "'max_completion_tokens' instead.",
        "type": "invalid_request_error", "param": "max_tokens", "code": "unsupported_parameter"}
    server.clear()
    server.responder = lambda body: {"algorithm": "grpo"}
    provider = get_provider("openai", base_url=server.api_base, default_model="gpt-5.2")
    assert provider.complete(plan_request(max_tokens=7)).structured == {"algorithm": "grpo"}
    assert provider.complete(plan_request(max_tokens=8)).structured == {"algorithm": "grpo"}
    first, switched, later = server.completion_requests
    assert first["max_tokens"] == 7 and "max_completion_tokens" not in first
    assert switched["max_completion_tokens"] == 7 and "max_tokens" not in switched
    assert later["max_completion_tokens"] == 8
    assert all("response_format" in sent for sent in (first, switched, later))
    assert (provider.structured_mode, provider.max_tokens_field) == ("json_schema", "max_completion_tokens")


def test_an_endpoint_that_ignores_response_format_gets_the_prompt(server: OpenAIServer,
                                                                  provider: OpenAIProvider) -> None:
    """Some hosted routers accept `response_format` and drop it: the model answers prose."""
    server.responder = lambda body: ("Here is my plan: use GRPO." if "response_format" in body
                                     else '{"algorithm": "grpo"}')
    assert provider.complete(plan_request()).structured == {"algorithm": "grpo"}
    assert provider.complete(plan_request()).structured == {"algorithm": "grpo"}
    first, retried, again, retried_again = server.completion_requests
    assert "response_format" in first and "response_format" not in retried
    assert "response_format" in again and "response_format" not in retried_again
    assert provider.structured_mode == "json_schema"  # one prose reply does not give up the schema


def test_prose_in_prompt_mode_is_permanent_after_one_call(server: OpenAIServer) -> None:
    server.responder = lambda body: "no JSON, ever"
    provider = get_provider("openai", base_url=server.api_base, default_model=MODEL,
                            structured_mode="prompt")
    with pytest.raises(PermanentLLMError, match="is not a JSON object"):
        provider.complete(plan_request())
    assert len(server.completion_requests) == 1


def test_prompt_mode_from_settings(server: OpenAIServer) -> None:
    server.responder = lambda body: {"algorithm": "ppo"}
    provider = get_provider("openai", base_url=server.api_base, default_model=MODEL,
                            structured_mode="prompt")
    assert provider.complete(plan_request()).structured == {"algorithm": "ppo"}
    (sent,) = server.completion_requests
    assert "response_format" not in sent and sent["messages"][0]["role"] == "system"


def test_unparseable_structured_reply_is_permanent(server: OpenAIServer, provider: OpenAIProvider) -> None:
    server.responder = lambda body: "I would rather chat."
    with pytest.raises(PermanentLLMError, match="'training_plan' is not a JSON object"):
        provider.complete(plan_request())
    json_schema_call, prompt_call = server.completion_requests
    assert "response_format" in json_schema_call and "response_format" not in prompt_call
    assert provider.structured_mode == "json_schema"


def test_parse_json_object() -> None:
    assert parse_json_object(' {"a": 1} ') == {"a": 1}
    assert parse_json_object('text {"a": {"b": 2}} tail') == {"a": {"b": 2}}
    with pytest.raises(ValueError):
        parse_json_object("[1, 2]")
    with pytest.raises(ValueError):
        parse_json_object("nothing here")
    with pytest.raises(ValueError):
        parse_json_object('{"loss": NaN}')


def test_usage_mapping_with_cached_prefix(server: OpenAIServer, provider: OpenAIProvider) -> None:
    request = ask(system=LONG_SYSTEM, cache_prefix=True)
    first, second = provider.complete(request), provider.complete(request)
    assert first.usage.cache_read_tokens == 0 and first.usage.input_tokens > 1000
    assert second.usage.cache_read_tokens > 1000
    assert second.usage.total_input_tokens == first.usage.total_input_tokens
    assert second.usage.cache_write_tokens == 0


def test_usage_mapping_explicit(server: OpenAIServer, provider: OpenAIProvider) -> None:
    server.responder = lambda body: Reply(text="x", stop_reason="length", usage={
        "prompt_tokens": 100, "completion_tokens": 7, "total_tokens": 107,
        "prompt_tokens_details": {"cached_tokens": 60}})  # type: ignore[dict-item]
    response = provider.complete(ask())
    assert (response.usage.input_tokens, response.usage.cache_read_tokens,
            response.usage.output_tokens) == (40, 60, 7)
    assert response.stop_reason == "length"


def test_max_completion_tokens_field(server: OpenAIServer) -> None:
    provider = get_provider("openai", base_url=server.api_base, default_model=MODEL,
                            max_tokens_field="max_completion_tokens")
    provider.complete(ask(max_tokens=5))
    (sent,) = server.completion_requests
    assert sent["max_completion_tokens"] == 5 and "max_tokens" not in sent


def test_rate_limit_is_transient_with_retry_after(server: OpenAIServer, provider: OpenAIProvider) -> None:
    server.fail_next(Fault.rate_limited(retry_after=0), Fault(429, "slow down", headers={"retry-after-ms": "250"}))
    with pytest.raises(TransientLLMError) as first:
        provider.complete(ask())
    with pytest.raises(TransientLLMError) as second:
        provider.complete(ask())
    assert (first.value.status, first.value.retry_after) == (429, 0.0)
    assert (second.value.status, second.value.retry_after) == (429, 0.25)
    assert len(server.requests) == 2, "the SDK must not retry on its own"
    assert provider.complete(ask()).text == "ok"


@pytest.mark.parametrize(("fault", "status"), [
    (Fault.server_error(), 500), (Fault(502, "bad gateway"), 502), (Fault.dropped(), NO_STATUS)])
def test_transient_failures(server: OpenAIServer, provider: OpenAIProvider, fault: Fault, status: int) -> None:
    server.fail_next(fault)
    with pytest.raises(TransientLLMError) as caught:
        provider.complete(ask())
    assert caught.value.status == status
    assert provider.complete(ask()).text == "ok"


def test_wrong_key_and_unknown_model_are_permanent(server: OpenAIServer, provider: OpenAIProvider,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(PermanentLLMError) as unknown:
        provider.complete(ask(model="no-such-model"))
    assert unknown.value.status == 404 and "no-such-model" in str(unknown.value)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong")
    with pytest.raises(PermanentLLMError) as wrong:
        provider.complete(ask())
    assert wrong.value.status == 401 and "Incorrect API key" in str(wrong.value)
    assert "sk-wrong" not in str(wrong.value)


def test_missing_key(server: OpenAIServer, provider: OpenAIProvider, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(MissingCredentials, match="OPENAI_API_KEY"):
        provider.complete(ask())
    custom = get_provider("openai", base_url=server.api_base, default_model=MODEL,
                          api_key_env="OPENROUTER_API_KEY")
    with pytest.raises(MissingCredentials, match="OPENROUTER_API_KEY"):
        custom.check_credentials()
    assert server.requests == []


def test_local_endpoint_without_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    with OpenAIServer(api_key=None, models=()) as srv:
        provider = get_provider("openai", base_url=srv.api_base, api_key_env=None, default_model="llama")
        assert provider.complete(ask()).text == "ok"


def test_api_key_never_leaves_the_headers(server: OpenAIServer, provider: OpenAIProvider) -> None:
    server.responder = lambda body: {"algorithm": "grpo"}
    request = plan_request(system=LONG_SYSTEM)
    response = provider.complete(request)
    recorded = canonical_json([request.model_dump(mode="json"), response.model_dump(mode="json")])
    assert KEY not in recorded and KEY not in repr(provider)
    assert all(KEY not in r.text for r in server.requests)
    assert server.requests[0].headers["authorization"] == f"Bearer {KEY}"


def test_server_models_and_argument_checks(server: OpenAIServer) -> None:
    client = openai.OpenAI(api_key=KEY, base_url=server.api_base, max_retries=0)
    user: Any = [{"role": "user", "content": "x"}]
    assert [m.id for m in client.models.list()] == [MODEL, "other-model"]
    with pytest.raises(openai.BadRequestError, match="Unrecognized request argument supplied: bogus"):
        client.chat.completions.create(model=MODEL, messages=user, extra_body={"bogus": 1})
    with pytest.raises(openai.BadRequestError, match="json_schema"):
        client.chat.completions.create(model=MODEL, messages=user,
                                       extra_body={"response_format": {"type": "json_schema"}})
    client.close()


def test_env_points_a_fresh_provider_at_the_server(server: OpenAIServer,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in server.env.items():
        monkeypatch.setenv(name, value)
    assert OpenAIProvider(default_model=MODEL).complete(ask()).text == "ok"


@pytest.mark.parametrize(("status", "body", "kind"), [
    (400, {"message": "Unsupported parameter: 'max_tokens' is not supported with this model. Use "
                      "'max_completion_tokens' instead.", "type": "invalid_request_error",
           "param": "max_tokens", "code": "unsupported_parameter"}, "max_tokens_field"),
    (400, {"message": "This model's maximum context length is 10 tokens. However, your messages "
                      "resulted in 20 tokens. Please reduce the length of the messages.",
           "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}, "other"),
    (400, {"error": {"message": "'response_format.type' must be 'json_schema' or 'text'"}}, "response_format"),
    (422, {"detail": "unsupported"}, "other"),
    (404, {"message": "The model `x` does not exist", "param": "response_format"}, "other"),
    (400, "not a JSON body", "other"),
])
def test_refusal_kinds(status: int, body: Any, kind: str) -> None:
    """The SDK hands over the inner `error` object; other servers send the whole body."""
    assert refusal_kind(status, body) == kind
