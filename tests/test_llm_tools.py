"""Multi-turn tool use: `next_turn` through the real `anthropic` and `openai` SDKs against the
loopback servers, the conversation values, and the servers' scripted conversations."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import anthropic
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sia.core.config import dollars
from sia.core.events.canonical import canonical_json
from sia.llm import (
    AssistantMessage,
    ChatMessage,
    MalformedToolCall,
    PermanentLLMError,
    Reasoning,
    ToolCall,
    ToolResult,
    ToolResultsMessage,
    ToolSpec,
    ToolUseProvider,
    TransientLLMError,
    Turn,
    TurnRequest,
    Usage,
    UserMessage,
    get_provider,
    usage_dollars,
)
from sia.llm.anthropic_provider import ANY_TOOL_INSTRUCTION, build_turn_params
from sia.llm.openai_provider import TOOL_ERROR_PREFIX
from sia.llm.openai_provider import build_turn_params as build_openai_turn_params
from sia.llm.pricing import CACHE_READ_FACTOR, CACHE_WRITE_FACTOR
from sia.testing import (
    AnthropicServer,
    CallTools,
    Conversation,
    Fault,
    FinalAnswer,
    OpenAIServer,
    ScriptedCall,
)
from sia.testing.anthropic_server import CACHE_LOOKBACK_BLOCKS

KEY = "sk-test-SECRET-0123456789"
MODEL = "claude-haiku-4-5"
"""Priced in the ledger's table (1 and 5 dollars per million tokens), and served by both stand-ins."""

TOOLS = (
    ToolSpec(name="list_episodes", description="List the episodes of a generation.",
             input_schema={"type": "object", "properties": {"generation": {"type": "integer"}},
                           "required": ["generation"]}),
    ToolSpec(name="read_episode", description="Read one episode's trajectory.",
             input_schema={"type": "object", "properties": {"episode_id": {"type": "string"}},
                           "required": ["episode_id"]}),
    ToolSpec(name="run_draft_harness", input_schema={"type": "object", "properties": {
        "harness": {"type": "string"}, "samples": {"type": "array", "items": {"type": "string"}}}}),
)
SYSTEM = "You are the Feedback Agent. Use the tools, then answer."


# ---------------------------------------------------------------- the two protocols, side by side


@dataclass
class Protocol:
    """One provider against its stand-in, and how to script usage in that protocol's words."""

    name: str
    server: AnthropicServer | OpenAIServer
    provider: ToolUseProvider
    usage: Callable[[int, int], dict[str, int]]

    def request(self, messages: tuple[ChatMessage, ...], **fields: Any) -> TurnRequest:
        return TurnRequest(provider=self.name, model=MODEL, system=SYSTEM, messages=messages,
                           tools=TOOLS, max_tokens=512, **fields)


def anthropic_usage(tokens_in: int, tokens_out: int) -> dict[str, int]:
    return {"input_tokens": tokens_in, "output_tokens": tokens_out,
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}


def openai_usage(tokens_in: int, tokens_out: int) -> dict[str, int]:
    return {"prompt_tokens": tokens_in, "completion_tokens": tokens_out, "total_tokens": tokens_in + tokens_out}


@pytest.fixture(autouse=True)
def api_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


@pytest.fixture(params=["anthropic", "openai"])
def proto(request: pytest.FixtureRequest) -> Iterator[Protocol]:
    if request.param == "anthropic":
        with AnthropicServer(api_key=KEY) as srv:
            provider = get_provider("anthropic", base_url=srv.base_url, timeout=10.0)
            assert isinstance(provider, ToolUseProvider)
            yield Protocol("anthropic", srv, provider, anthropic_usage)
    else:
        with OpenAIServer(api_key=KEY, models=(MODEL,)) as osrv:
            provider = get_provider("openai", base_url=osrv.api_base, timeout=10.0)
            assert isinstance(provider, ToolUseProvider)
            yield Protocol("openai", osrv, provider, openai_usage)
    provider.close()  # type: ignore[attr-defined]


def results_for(turn: Turn, outputs: dict[str, str]) -> ToolResultsMessage:
    """What an agent loop sends back: each call's output, looked up by tool name."""
    return ToolResultsMessage(results=tuple(ToolResult(call_id=call.id, content=outputs[call.name])
                                            for call in turn.tool_calls))


LOOK = (ScriptedCall("list_episodes", {"generation": 3}), ScriptedCall("read_episode", {"episode_id": "ep-7"}))
TRY = (ScriptedCall("run_draft_harness", {"harness": "def solve(x):\n    return x", "samples": ["s1", "s2"]}),)
THREE_TURNS = (CallTools(LOOK, text="Let me look."), CallTools(TRY),
               FinalAnswer("edit_harness: the parser drops the last line."))
OUTPUTS = {"list_episodes": "ep-7 reward 0.2\nep-8 reward 0.9", "read_episode": "trajectory of ep-7",
           "run_draft_harness": "2/2 passed"}


def play(proto: Protocol, conversation: Conversation) -> tuple[list[Turn], tuple[ChatMessage, ...]]:
    """Drive `next_turn` to the end of the conversation, as an agent loop would."""
    messages: tuple[ChatMessage, ...] = (UserMessage(text="Why did generation 3 score 0.2?"),)
    turns: list[Turn] = []
    while True:
        turn = proto.provider.next_turn(proto.request(messages))
        turns.append(turn)
        messages += (turn.message,)
        if not turn.tool_calls:
            return turns, messages
        messages += (results_for(turn, OUTPUTS),)


def test_three_turn_conversation_with_two_calls_in_one_turn(proto: Protocol) -> None:
    conversation = proto.server.converse(*THREE_TURNS)
    turns, messages = play(proto, conversation)

    assert conversation.finished and proto.server.errors == []
    assert [t.stop_reason for t in turns] == ["tool_use", "tool_use", "end_turn"]
    assert [[c.name for c in t.tool_calls] for t in turns] == [["list_episodes", "read_episode"],
                                                               ["run_draft_harness"], []]
    first = turns[0]
    assert first.text == "Let me look."
    assert [c.arguments for c in first.tool_calls] == [{"generation": 3}, {"episode_id": "ep-7"}]
    assert len({c.id for t in turns for c in t.tool_calls}) == 3, "call ids are the server's, unique"
    assert turns[1].tool_calls[0].arguments["samples"] == ["s1", "s2"]
    assert turns[2].text == "edit_harness: the parser drops the last line."
    # The server saw each turn's results in the next request, with the outputs the loop sent.
    second, third = conversation.exchanges[1], conversation.exchanges[2]
    assert {r.call_id: r.content for r in second.results} == {
        first.tool_calls[0].id: OUTPUTS["list_episodes"], first.tool_calls[1].id: OUTPUTS["read_episode"]}
    assert [r.content for r in third.results][-1] == "2/2 passed"
    assert len(messages) == 6


def test_usage_and_dollars_are_summed_over_turns(proto: Protocol) -> None:
    sizes = [(1200, 80), (1500, 40), (1700, 25)]
    turns, _ = play(proto, proto.server.converse(CallTools(LOOK, usage=proto.usage(*sizes[0])),
                                                 CallTools(TRY, usage=proto.usage(*sizes[1])),
                                                 FinalAnswer("done", usage=proto.usage(*sizes[2]))))

    total = sum((t.usage for t in turns), Usage())
    assert (total.input_tokens, total.output_tokens) == (4400, 145)
    assert [t.dollars for t in turns] == [dollars(MODEL, i, o) for i, o in sizes]
    assert sum(t.dollars for t in turns) == pytest.approx((4400 * 1.0 + 145 * 5.0) / 1e6)


def test_a_turn_round_trips_through_canonical_json(proto: Protocol) -> None:
    turns, _ = play(proto, proto.server.converse(*THREE_TURNS))
    for turn in turns:
        rebuilt = Turn.model_validate(json.loads(canonical_json(turn.model_dump(mode="json"))))
        assert rebuilt == turn


@pytest.mark.parametrize("fault", [Fault.rate_limited(retry_after=2), Fault.overloaded()],
                         ids=["429", "529"])
def test_a_fault_on_turn_two_is_transient_and_the_retry_continues(proto: Protocol, fault: Fault) -> None:
    conversation = proto.server.converse(*THREE_TURNS)
    messages: tuple[ChatMessage, ...] = (UserMessage(text="go"),)
    first = proto.provider.next_turn(proto.request(messages))
    messages += (first.message, results_for(first, OUTPUTS))
    proto.server.fail_next(fault)

    with pytest.raises(TransientLLMError) as caught:
        proto.provider.next_turn(proto.request(messages))
    assert caught.value.status == fault.status
    if fault.retry_after is not None:
        assert caught.value.retry_after == fault.retry_after
    assert len(conversation.requests) == 1, "a faulted request does not advance the script"

    second = proto.provider.next_turn(proto.request(messages))
    assert [c.name for c in second.tool_calls] == ["run_draft_harness"]
    assert proto.server.errors == []


@pytest.mark.parametrize(("call", "expected"), [
    (ScriptedCall("delete_everything", {"path": "/"}),
     "names tool 'delete_everything', which this request does not offer "
     "(offered: list_episodes, read_episode, run_draft_harness)"),
    (ScriptedCall("read_episode", '["ep-7"]'), "arguments are list, not a JSON object"),
], ids=["unknown-tool", "not-an-object"])
def test_a_malformed_tool_call_is_a_clear_error_that_keeps_the_usage(
        proto: Protocol, call: ScriptedCall, expected: str) -> None:
    proto.server.converse(CallTools((ScriptedCall("list_episodes", {"generation": 1}), call),
                                    usage=proto.usage(300, 30)))
    with pytest.raises(MalformedToolCall) as caught:
        proto.provider.next_turn(proto.request((UserMessage(text="go"),)))
    error = caught.value
    assert expected in str(error) and f"{proto.name}: malformed tool call" in str(error)
    assert len(error.problems) == 1, "the well-formed call is not reported"
    assert (error.usage.input_tokens, error.usage.output_tokens) == (300, 30)
    assert error.dollars == dollars(MODEL, 300, 30)
    assert isinstance(error, PermanentLLMError) and error.status is None


def test_after_a_malformed_turn_the_same_request_can_be_asked_again(proto: Protocol) -> None:
    conversation = proto.server.converse(CallTools((ScriptedCall("delete_everything"),)), *THREE_TURNS)
    request = proto.request((UserMessage(text="go"),))
    with pytest.raises(MalformedToolCall):
        proto.provider.next_turn(request)
    turn = proto.provider.next_turn(request)
    assert [c.name for c in turn.tool_calls] == ["list_episodes", "read_episode"]
    assert proto.provider.next_turn(proto.request((UserMessage(text="go"), turn.message,
                                                   results_for(turn, OUTPUTS)))).tool_calls
    assert len(conversation.requests) == 3 and proto.server.errors == []


def test_arguments_that_are_not_json_are_a_clear_error() -> None:
    """Only OpenAI's wire carries arguments as text, so only it can send text that is not JSON."""
    with OpenAIServer(api_key=KEY, models=(MODEL,)) as srv:
        provider = get_provider("openai", base_url=srv.api_base, timeout=10.0)
        assert isinstance(provider, ToolUseProvider)
        srv.converse(CallTools((ScriptedCall("read_episode", '{"episode_id": "ep-'),)))
        request = TurnRequest(provider="openai", model=MODEL, messages=(UserMessage(text="go"),), tools=TOOLS)
        with pytest.raises(MalformedToolCall, match=r"read_episode: arguments are not JSON \(Unterminated"):
            provider.next_turn(request)


def test_tool_errors_reach_the_model(proto: Protocol) -> None:
    conversation = proto.server.converse(CallTools((ScriptedCall("read_episode", {"episode_id": "x"}),)),
                                         FinalAnswer("no such episode"))
    first = proto.provider.next_turn(proto.request((UserMessage(text="go"),)))
    failed = ToolResultsMessage(results=(ToolResult(call_id=first.tool_calls[0].id,
                                                    content="KeyError: x", is_error=True),))
    proto.provider.next_turn(proto.request((UserMessage(text="go"), first.message, failed)))
    seen = conversation.exchanges[1].results[0]
    if proto.name == "anthropic":
        assert (seen.content, seen.is_error) == ("KeyError: x", True)
    else:
        assert seen.content == f"{TOOL_ERROR_PREFIX}KeyError: x"


def test_the_request_must_be_for_the_provider(proto: Protocol) -> None:
    other = "openai" if proto.name == "anthropic" else "anthropic"
    request = TurnRequest(provider=other, model=MODEL, messages=(UserMessage(text="go"),))
    with pytest.raises(PermanentLLMError, match="request is for provider"):
        proto.provider.next_turn(request)
    assert proto.server.requests == []


# ---------------------------------------------------------------- the servers check the conversation


def test_a_request_that_changes_a_call_is_refused_and_recorded() -> None:
    with AnthropicServer(api_key=KEY) as srv:
        conversation = srv.converse(*THREE_TURNS)
        client = anthropic.Anthropic(api_key=KEY, base_url=srv.base_url, max_retries=0)
        tools: Any = [{"name": t.name, "input_schema": t.input_schema} for t in TOOLS]
        first = client.messages.create(model=MODEL, max_tokens=64, tools=tools,
                                       messages=[{"role": "user", "content": "go"}])
        calls = [b for b in first.content if b.type == "tool_use"]
        tampered = [{"type": "tool_use", "id": c.id, "name": c.name, "input": {"generation": 99}} for c in calls]
        results = [{"type": "tool_result", "tool_use_id": c.id, "content": "ok"} for c in calls]
        messages: Any = [{"role": "user", "content": "go"}, {"role": "assistant", "content": tampered},
                         {"role": "user", "content": results}]
        with pytest.raises(anthropic.InternalServerError):
            client.messages.create(model=MODEL, max_tokens=64, tools=tools, messages=messages)
        assert len(srv.errors) == 1 and "came back with arguments" in srv.errors[0]
        assert len(conversation.requests) == 1
        assert len(srv.message_requests) == 2, "every request is recorded, refused or not"


def test_a_request_that_drops_a_tool_turn_is_refused(proto: Protocol) -> None:
    conversation = proto.server.converse(*THREE_TURNS)
    proto.provider.next_turn(proto.request((UserMessage(text="go"),)))
    with pytest.raises(PermanentLLMError):
        proto.provider.next_turn(proto.request((UserMessage(text="go"), AssistantMessage(text="hm"),
                                                UserMessage(text="go on"))))
    assert len(proto.server.errors) == 1
    assert "the request carries tool calls [], but the script made [(" in proto.server.errors[0]
    assert len(conversation.requests) == 1


def test_the_cache_is_looked_up_twenty_blocks_back_from_a_breakpoint() -> None:
    with AnthropicServer(api_key=KEY, min_cache_tokens=1) as srv:
        client = anthropic.Anthropic(api_key=KEY, base_url=srv.base_url, max_retries=0)

        def cache_read(blocks: int) -> int:
            content: Any = [{"type": "text", "text": "stable opening"}]
            content += [{"type": "text", "text": f"block {i} of {blocks}"} for i in range(blocks)]
            content[-1]["cache_control"] = {"type": "ephemeral"}
            usage = client.messages.create(model=MODEL, max_tokens=8,
                                           messages=[{"role": "user", "content": content}]).usage
            return usage.cache_read_input_tokens or 0

        assert cache_read(0) == 0, "the first request writes the opening block"
        assert cache_read(CACHE_LOOKBACK_BLOCKS - 1) > 0, "found 20 blocks back from the breakpoint"
        assert cache_read(CACHE_LOOKBACK_BLOCKS) == 0, "21 blocks back is too far"


def test_anthropic_server_refuses_calls_without_results() -> None:
    with AnthropicServer(api_key=KEY) as srv:
        client = anthropic.Anthropic(api_key=KEY, base_url=srv.base_url, max_retries=0)
        tools: Any = [{"name": "read_episode", "input_schema": {"type": "object"}}]
        call = {"type": "tool_use", "id": "toolu_1", "name": "read_episode", "input": {}}
        cases: list[tuple[Any, str]] = [
            ([{"role": "user", "content": "go"}, {"role": "assistant", "content": [call]},
              {"role": "user", "content": "and?"}],
             "tool_use` ids were found without `tool_result` blocks immediately after: toolu_1"),
            ([{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_9", "content": "x"}]}],
             "unexpected `tool_use_id` found in `tool_result` blocks: toolu_9"),
        ]
        for messages, expected in cases:
            with pytest.raises(anthropic.BadRequestError, match=expected):
                client.messages.create(model=MODEL, max_tokens=64, tools=tools, messages=messages)
        with pytest.raises(anthropic.BadRequestError, match="must define tools"):
            client.messages.create(model=MODEL, max_tokens=64, messages=cases[0][0])


def test_openai_server_refuses_calls_without_results() -> None:
    with OpenAIServer(api_key=KEY, models=(MODEL,)) as srv:
        client = openai.OpenAI(api_key=KEY, base_url=srv.api_base, max_retries=0)
        call = {"id": "call_1", "type": "function", "function": {"name": "read_episode", "arguments": "{}"}}
        tools: Any = [{"type": "function", "function": {"name": "read_episode", "parameters": {"type": "object"}}}]
        unanswered: Any = [{"role": "user", "content": "go"},
                           {"role": "assistant", "content": None, "tool_calls": [call]},
                           {"role": "user", "content": "and?"}]
        unasked: Any = [{"role": "user", "content": "go"}, {"role": "tool", "tool_call_id": "call_9", "content": "x"}]
        with pytest.raises(openai.BadRequestError, match="did not have response messages: call_1"):
            client.chat.completions.create(model=MODEL, tools=tools, messages=unanswered)
        with pytest.raises(openai.BadRequestError, match="must be a response to a preceeding message"):
            client.chat.completions.create(model=MODEL, tools=tools, messages=unasked)
        with pytest.raises(openai.BadRequestError, match="only allowed when 'tools' are specified"):
            client.chat.completions.create(model=MODEL, tool_choice="auto",
                                           messages=[{"role": "user", "content": "go"}])


def test_a_script_that_runs_out_is_a_server_error(proto: Protocol) -> None:
    proto.server.converse(FinalAnswer("only one"))
    proto.provider.next_turn(proto.request((UserMessage(text="go"),)))
    with pytest.raises(PermanentLLMError):
        proto.provider.next_turn(proto.request((UserMessage(text="go again"),)))
    assert proto.server.errors and "exhausted after 1 turns" in proto.server.errors[0]


# ---------------------------------------------------------------- Anthropic specifics


def test_a_thinking_models_reasoning_goes_back_as_received() -> None:
    """Always-thinking models need their thinking block back, signature intact, after a tool turn."""
    with AnthropicServer(api_key=KEY) as srv:
        provider = get_provider("anthropic", base_url=srv.base_url, timeout=10.0)
        assert isinstance(provider, ToolUseProvider)
        conversation = srv.converse(*THREE_TURNS)
        messages: tuple[ChatMessage, ...] = (UserMessage(text="go"),)
        first = provider.next_turn(TurnRequest(model="claude-opus-4-7", messages=messages, tools=TOOLS))
        assert [r.kind for r in first.message.reasoning] == ["thinking"] and first.message.reasoning[0].signature
        messages += (first.message, results_for(first, OUTPUTS))
        provider.next_turn(TurnRequest(model="claude-opus-4-7", messages=messages, tools=TOOLS))
        assert srv.message_requests[1]["messages"][1]["content"][0]["type"] == "thinking"

        stripped = first.message.model_copy(update={"reasoning": ()})
        with pytest.raises(PermanentLLMError, match="must start with a thinking block"):
            provider.next_turn(TurnRequest(model="claude-opus-4-7", tools=TOOLS, messages=(
                UserMessage(text="go"), stripped, results_for(first, OUTPUTS))))
        forged = first.message.model_copy(update={"reasoning": (Reasoning(kind="thinking", text="forged",
                                                                          signature="0" * 64),)})
        with pytest.raises(PermanentLLMError, match="Invalid `signature`"):
            provider.next_turn(TurnRequest(model="claude-opus-4-7", tools=TOOLS, messages=(
                UserMessage(text="go"), forged, results_for(first, OUTPUTS))))
        assert len(conversation.requests) == 2


def test_tool_choice_any_falls_back_on_models_that_always_think() -> None:
    with AnthropicServer(api_key=KEY) as srv:
        provider = get_provider("anthropic", base_url=srv.base_url, timeout=10.0)
        assert isinstance(provider, ToolUseProvider)
        srv.converse(CallTools((ScriptedCall("list_episodes", {"generation": 0}),)))
        turn = provider.next_turn(TurnRequest(model="claude-opus-4-7", messages=(UserMessage(text="go"),),
                                              tools=TOOLS, tool_choice="any"))
        assert turn.tool_calls[0].name == "list_episodes"
        refused, retried = srv.message_requests
        assert refused["tool_choice"] == {"type": "any"}
        assert retried["tool_choice"] == {"type": "auto"} and ANY_TOOL_INSTRUCTION in retried["system"]


def test_cached_conversation_reads_earlier_turns_from_the_cache() -> None:
    """With `cache_prefix`, turn n+1 reads what turn n wrote: the prompt is paid for once."""
    long_system = "You are the Feedback Agent. " + "Stable task context. " * 1000
    with AnthropicServer(api_key=KEY) as srv:
        provider = get_provider("anthropic", base_url=srv.base_url, timeout=10.0)
        assert isinstance(provider, ToolUseProvider)
        srv.converse(*THREE_TURNS)
        messages: tuple[ChatMessage, ...] = (UserMessage(text="go"),)
        turns: list[Turn] = []
        while not turns or turns[-1].tool_calls:
            if turns:
                messages += (turns[-1].message, results_for(turns[-1], OUTPUTS))
            turns.append(provider.next_turn(TurnRequest(model=MODEL, system=long_system, messages=messages,
                                                        tools=TOOLS, cache_prefix=True)))
        reads = [t.usage.cache_read_tokens for t in turns]
        writes = [t.usage.cache_write_tokens for t in turns]
        assert reads[0] == 0 and writes[0] > 4096
        assert reads[1] == writes[0] and reads[2] == writes[0] + writes[1], "each turn reads all before it"
        assert all(0 < w < 100 for w in writes[1:]), "later turns write only their new messages"
        last = srv.message_requests[-1]
        assert last["system"][0]["cache_control"] == {"type": "ephemeral"}
        assert last["messages"][-1]["content"][-1]["cache_control"] == {"type": "ephemeral"}
        assert turns[2].dollars == pytest.approx(usage_dollars(MODEL, turns[2].usage))
        assert turns[2].dollars < 0.3 * dollars(MODEL, turns[2].usage.total_input_tokens, turns[2].usage.output_tokens)


def test_anthropic_wire_puts_results_first_in_one_user_message() -> None:
    call = ToolCall(id="toolu_a", name="read_episode", arguments={"episode_id": "e"})
    request = TurnRequest(model=MODEL, tools=TOOLS, messages=(
        UserMessage(text="go"), AssistantMessage(tool_calls=(call,)),
        ToolResultsMessage(results=(ToolResult(call_id="toolu_a", content="out"),)),
        UserMessage(text="now decide")))
    params = build_turn_params(request)
    assert [m["role"] for m in params["messages"]] == ["user", "assistant", "user"]
    assert params["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "toolu_a", "content": "out"},
        {"type": "text", "text": "now decide"}]
    assert params["messages"][1]["content"] == [
        {"type": "tool_use", "id": "toolu_a", "name": "read_episode", "input": {"episode_id": "e"}}]
    assert params["tool_choice"] == {"type": "auto"}
    sampled = build_turn_params(request.model_copy(update={"temperature": 0.5, "seed": 3}))
    assert "temperature" not in sampled and "seed" not in sampled, "cache identity, not wire (API 2026-10-21)"


def test_openai_wire_maps_calls_results_and_tool_choice() -> None:
    call = ToolCall(id="call_a", name="read_episode", arguments={"episode_id": "e"})
    request = TurnRequest(provider="openai", model=MODEL, system="sys", tools=TOOLS, tool_choice="any",
                          seed=7, messages=(UserMessage(text="go"), AssistantMessage(tool_calls=(call,)),
                                            ToolResultsMessage(results=(ToolResult(call_id="call_a", content="out"),))))
    params = build_openai_turn_params(request, MODEL)
    assert params["messages"] == [
        {"role": "system", "content": "sys"}, {"role": "user", "content": "go"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_a", "type": "function",
             "function": {"name": "read_episode", "arguments": '{"episode_id": "e"}'}}]},
        {"role": "tool", "tool_call_id": "call_a", "content": "out"}]
    assert params["tool_choice"] == "required" and params["seed"] == 7
    assert params["tools"][0] == {"type": "function", "function": {
        "name": "list_episodes", "description": "List the episodes of a generation.",
        "parameters": TOOLS[0].input_schema}}


def test_a_turn_is_priced_by_the_served_model_when_the_request_names_none() -> None:
    with OpenAIServer(api_key=KEY, models=(MODEL,)) as srv:
        provider = get_provider("openai", base_url=srv.api_base, timeout=10.0, default_model=MODEL)
        assert isinstance(provider, ToolUseProvider)
        srv.converse(FinalAnswer("fine", usage=openai_usage(1000, 100)))
        turn = provider.next_turn(TurnRequest(provider="openai", messages=(UserMessage(text="go"),), tools=TOOLS))
        assert turn.model == MODEL and turn.dollars == dollars(MODEL, 1000, 100)


def test_openai_next_turn_switches_to_max_completion_tokens() -> None:
    with OpenAIServer(api_key=KEY, models=(MODEL,), completion_tokens_models=(MODEL,)) as srv:
        provider = get_provider("openai", base_url=srv.api_base, timeout=10.0)
        assert isinstance(provider, ToolUseProvider)
        srv.converse(FinalAnswer("fine"))
        turn = provider.next_turn(TurnRequest(provider="openai", model=MODEL, messages=(UserMessage(text="go"),),
                                              tools=TOOLS, max_tokens=99))
        assert turn.text == "fine"
        assert [("max_tokens" in r, r.get("max_completion_tokens")) for r in srv.completion_requests] == [
            (True, None), (False, 99)]


# ---------------------------------------------------------------- the values


def test_request_refuses_conversations_no_provider_accepts() -> None:
    call = ToolCall(id="c1", name="read_episode", arguments={})
    answered = ToolResultsMessage(results=(ToolResult(call_id="c1", content="x"),))
    go = UserMessage(text="go")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"messages": (go, AssistantMessage(tool_calls=(call,)), go)},
         r"tool calls \['c1'\] must be answered by a tool results message right after it"),
        ({"messages": (go, AssistantMessage(tool_calls=(call,)))}, "ends with unanswered tool calls"),
        ({"messages": (go, answered)}, "must follow an assistant message with tool calls"),
        ({"messages": (go, AssistantMessage(tool_calls=(call,)),
                       ToolResultsMessage(results=(ToolResult(call_id="c2", content="x"),)))},
         r"results answer \['c2'\], but messages\[1\] called \['c1'\]"),
        ({"messages": (go, AssistantMessage(tool_calls=(call,)), answered, AssistantMessage(tool_calls=(call,)),
                       answered)}, "tool call id 'c1' is used twice"),
        ({"messages": (go, AssistantMessage(text="  "))}, "an assistant message needs text or tool calls"),
        ({"messages": (go,), "tools": (TOOLS[0], TOOLS[0])}, "tool names must be unique"),
        ({"messages": (go,), "tools": (), "tool_choice": "any"}, "tool_choice 'any' needs at least one tool"),
    ]
    for fields, expected in cases:
        with pytest.raises(ValueError, match=expected):
            TurnRequest(**{"tools": TOOLS, **fields})
    two = (call, ToolCall(id="c2", name="list_episodes", arguments={}))
    TurnRequest(tools=TOOLS, messages=(go, AssistantMessage(tool_calls=two), ToolResultsMessage(results=(
        ToolResult(call_id="c2", content="b"), ToolResult(call_id="c1", content="a")))))  # any order
    with pytest.raises(ValueError, match="must define tools"):
        TurnRequest(messages=(go, AssistantMessage(tool_calls=(call,)), answered))
    with pytest.raises(ValueError, match="input_schema must describe a JSON object"):
        ToolSpec(name="t", input_schema={"type": "string"})
    with pytest.raises(ValueError, match="String should match pattern"):
        ToolSpec(name="has space", input_schema={"type": "object"})
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        TurnRequest(messages=(go,), api_key="sk-nope")  # type: ignore[call-arg]


def test_a_request_names_the_default_model() -> None:
    assert TurnRequest(messages=(UserMessage(text="go"),)).model == "claude-sonnet-4-6"
    assert TurnRequest(provider="openai", messages=(UserMessage(text="go"),)).model is None


_text = st.text(min_size=1, max_size=30)
_json_scalar = st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False,
                                                                               allow_infinity=False) | _text
_arguments = st.dictionaries(_text, st.recursive(_json_scalar, lambda inner: st.lists(inner, max_size=3)
                                                 | st.dictionaries(_text, inner, max_size=3), max_leaves=6),
                             max_size=4)


@st.composite
def conversations(draw: st.DrawFn) -> tuple[ChatMessage, ...]:
    messages: list[ChatMessage] = [UserMessage(text=draw(_text))]
    for turn in range(draw(st.integers(0, 3))):
        names = draw(st.lists(st.sampled_from([t.name for t in TOOLS]), min_size=1, max_size=3))
        calls = tuple(ToolCall(id=f"c{turn}_{i}", name=name, arguments=draw(_arguments))
                      for i, name in enumerate(names))
        reasoning = tuple(draw(st.lists(st.builds(Reasoning, kind=st.just("thinking"), text=_text,
                                                  signature=_text), max_size=1)))
        messages.append(AssistantMessage(text=draw(st.just("") | _text), tool_calls=calls, reasoning=reasoning))
        messages.append(ToolResultsMessage(results=tuple(
            ToolResult(call_id=c.id, content=draw(st.text(max_size=20)), is_error=draw(st.booleans()))
            for c in calls)))
    return tuple(messages)


@settings(max_examples=60, deadline=None)
@given(conversations(), st.sampled_from(["auto", "any", "none"]), st.none() | st.floats(0, 2))
def test_request_and_turn_round_trip_through_canonical_json(messages: tuple[ChatMessage, ...], choice: str,
                                                            temperature: float | None) -> None:
    request = TurnRequest(messages=messages, tools=TOOLS, tool_choice=choice,  # type: ignore[arg-type]
                          temperature=temperature)
    assert TurnRequest.model_validate(json.loads(canonical_json(request.model_dump(mode="json")))) == request
    assistant = next((m for m in messages if isinstance(m, AssistantMessage)), AssistantMessage(text="x"))
    turn = Turn(message=assistant, stop_reason="tool_use", raw_stop_reason="tool_use", model=MODEL,
                usage=Usage(input_tokens=3, cache_read_tokens=4), dollars=0.25, raw_id="msg_1")
    assert Turn.model_validate(json.loads(canonical_json(turn.model_dump(mode="json")))) == turn


def test_unrecordable_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="no canonical JSON form"):
        ToolCall(id="c", name="t", arguments={"x": float("nan")})


def test_usage_adds_field_by_field_and_prices_cache_at_its_rates() -> None:
    a = Usage(input_tokens=1, output_tokens=2, cache_read_tokens=3, cache_write_tokens=4)
    b = Usage(input_tokens=10, output_tokens=20, cache_read_tokens=30, cache_write_tokens=40)
    assert a + b == Usage(input_tokens=11, output_tokens=22, cache_read_tokens=33, cache_write_tokens=44)
    priced = usage_dollars(MODEL, Usage(input_tokens=1_000_000, output_tokens=1_000_000,
                                        cache_read_tokens=1_000_000, cache_write_tokens=1_000_000))
    assert priced == pytest.approx(1.0 + 5.0 + CACHE_WRITE_FACTOR * 1.0 + CACHE_READ_FACTOR * 1.0)
    assert usage_dollars("unpriced-model", a) == 0.0


def test_every_provider_takes_turns() -> None:
    for name in ("anthropic", "openai"):
        assert isinstance(get_provider(name), ToolUseProvider)
