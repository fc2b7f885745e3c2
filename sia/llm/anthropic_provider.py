"""Claude through the official `anthropic` SDK (Messages API, non-streaming).

Structured output uses one tool whose input schema is the response schema, forced with
`tool_choice`; the tool's input is the answer. Prompt caching puts an ephemeral
`cache_control` breakpoint on the system block, which caches the tools and the system
prompt together (the API orders the prefix tools → system → messages). The SDK's retries
are off (`max_retries=0`): the runtime retries and records each attempt.

Models that only allow adaptive thinking (Claude Opus 4.7 and later, per Anthropic's
adaptive-thinking guide) think on every call, and thinking is incompatible with forced
tool use: they answer a forced `tool_choice` with a 400 "Thinking may not be enabled when
tool_choice forces tool use." Such a model is asked once more with `tool_choice` "auto"
and an instruction to answer through the tool, and is asked that way from then on.

`next_turn` takes one turn of a tool-using conversation: tool results travel as
`tool_result` blocks at the head of the next user message, the thinking blocks of a turn
are kept and sent back as received (required when a thinking model's turn called tools),
and with `cache_prefix` a second breakpoint on the last message lets each turn read the
conversation so far from the cache. `tool_choice` "any" gets the same fallback as a forced
tool on models that refuse it.

API version 2026-10-21 (what this SDK sends) rejects `temperature`, `top_p` and `top_k`
with a 400, and there is no seed, so those request fields stay part of the cache identity
but are not sent.
"""

from __future__ import annotations

import os
from typing import Any

import anthropic
from pydantic import ValidationError

from sia.llm.clients import ClientPerKey, api_key
from sia.llm.errors import (
    NO_STATUS,
    PermanentLLMError,
    TransientLLMError,
    from_http_status,
)
from sia.llm.pricing import usage_dollars
from sia.llm.turns import (
    AssistantMessage,
    ChatMessage,
    MalformedToolCall,
    Reasoning,
    StopReason,
    ToolCall,
    ToolResultsMessage,
    ToolSpec,
    Turn,
    TurnRequest,
    UserMessage,
    checked_call,
)
from sia.llm.types import DEFAULT_MODELS, LLMRequest, LLMResponse, Usage

DEFAULT_MODEL = DEFAULT_MODELS["anthropic"]
EPHEMERAL = {"type": "ephemeral"}
FORCED_TOOL_REFUSED = "tool_choice forces tool use"
"""Part of the API's 400 message when a thinking model is given a forced `tool_choice`."""


class AnthropicProvider:
    """`complete(request)` against the Messages API; the key comes only from `api_key_env`."""

    name = "anthropic"

    def __init__(self, *, base_url: str | None = None, api_key_env: str = "ANTHROPIC_API_KEY",
                 timeout: float = 600.0) -> None:
        self.base_url = base_url or os.environ.get("ANTHROPIC_BASE_URL") or None
        self.api_key_env = api_key_env
        self.timeout = timeout
        self._clients = ClientPerKey(lambda key: anthropic.Anthropic(
            api_key=key, base_url=self.base_url, max_retries=0, timeout=self.timeout))
        self._unforced_models: set[str] = set()
        """Models that refused a forced tool_choice (they always think)."""

    def __repr__(self) -> str:
        return f"AnthropicProvider(base_url={self.base_url!r}, api_key_env={self.api_key_env!r})"

    def check_credentials(self) -> None:
        """Fail now, with MissingCredentials, rather than at the first call."""
        self._key()

    def complete(self, request: LLMRequest) -> LLMResponse:
        if request.provider != self.name:
            raise PermanentLLMError(f"anthropic: request is for provider {request.provider!r}")
        client = self._clients.get(self._key())
        model = request.model or DEFAULT_MODEL
        force = model not in self._unforced_models
        try:
            message = self._create(client, build_params(request, force_tool=force))
        except PermanentLLMError as error:
            if not (force and request.response_schema is not None and refuses_forced_tool(error)):
                raise
            self._unforced_models.add(model)
            return self.complete(request)
        return to_response(request, message)

    def next_turn(self, request: TurnRequest) -> Turn:
        """The assistant's next turn of a tool-using conversation (see `sia.llm.turns`).

        A malformed tool call in the reply raises `MalformedToolCall`, carrying the turn's usage.
        """
        if request.provider != self.name:
            raise PermanentLLMError(f"anthropic: request is for provider {request.provider!r}")
        client = self._clients.get(self._key())
        model = request.model or DEFAULT_MODEL
        force = model not in self._unforced_models
        try:
            message = self._create(client, build_turn_params(request, force_tool=force))
        except PermanentLLMError as error:
            if not (force and request.tool_choice == "any" and refuses_forced_tool(error)):
                raise
            self._unforced_models.add(model)
            return self.next_turn(request)
        return to_turn(request, message)

    def _create(self, client: anthropic.Anthropic, params: dict[str, Any]) -> Any:
        """One `messages.create` call, its failures mapped to the `sia.llm.errors` kinds."""
        try:
            return client.messages.create(**params)
        except anthropic.APIStatusError as exc:
            raise from_http_status(self.name, exc.status_code, exc.response.headers, exc.body,
                                   fallback=exc.message) from None
        except anthropic.APIConnectionError as exc:
            raise TransientLLMError(f"anthropic: {type(exc).__name__}: {exc.message}",
                                    status=NO_STATUS) from None
        except anthropic.AnthropicError as exc:
            raise PermanentLLMError(f"anthropic: {type(exc).__name__}: {exc}") from None

    def _key(self) -> str:
        return api_key(self.api_key_env, self.name)

    def close(self) -> None:
        self._clients.close()


def refuses_forced_tool(error: PermanentLLMError) -> bool:
    """A thinking model's 400 for a `tool_choice` that forces tool use."""
    return error.status == 400 and FORCED_TOOL_REFUSED in str(error)


def tool_instruction(name: str) -> str:
    """What stands in for a forced `tool_choice` on models that refuse one."""
    return f"Answer only by calling the {name} tool, once, with your complete answer as its input."


def build_params(request: LLMRequest, force_tool: bool = True) -> dict[str, Any]:
    """The `messages.create` keyword arguments for `request` (exactly what goes on the wire).

    With `force_tool=False` a structured request offers its tool with `tool_choice` "auto"
    and says in the system prompt to answer through it.
    """
    params: dict[str, Any] = {
        "model": request.model or DEFAULT_MODEL,
        "max_tokens": request.max_tokens,
        "messages": [{"role": m.role, "content": m.content} for m in request.messages],
    }
    schema = request.response_schema
    system = request.system
    if schema is not None and not force_tool:
        system = f"{system}\n\n{tool_instruction(schema.name)}" if system else tool_instruction(schema.name)
    if system:
        if request.cache_prefix:
            params["system"] = [{"type": "text", "text": system, "cache_control": EPHEMERAL}]
        else:
            params["system"] = system
    if schema is not None:
        tool: dict[str, Any] = {"name": schema.name, "input_schema": schema.json_schema}
        if schema.description:
            tool["description"] = schema.description
        if request.cache_prefix and not system:
            tool["cache_control"] = EPHEMERAL
        params["tools"] = [tool]
        params["tool_choice"] = {"type": "tool", "name": schema.name} if force_tool else {"type": "auto"}
    return params


def to_response(request: LLMRequest, message: Any) -> LLMResponse:
    """Map an SDK `Message` to an LLMResponse; a schema request without its tool call fails."""
    text = "".join(block.text for block in message.content if block.type == "text")
    structured: dict[str, Any] | None = None
    schema = request.response_schema
    if schema is not None:
        if message.stop_reason == "max_tokens":
            raise PermanentLLMError(f"anthropic: the {schema.name!r} answer was cut off at max_tokens="
                                    f"{request.max_tokens}; raise max_tokens")
        calls = [b for b in message.content if b.type == "tool_use" and b.name == schema.name]
        if not calls or not isinstance(calls[0].input, dict):
            raise PermanentLLMError(
                f"anthropic: expected a {schema.name!r} tool call with an object input, got "
                f"{[b.type for b in message.content]} (stop_reason={message.stop_reason})")
        structured = dict(calls[0].input)
    try:
        return LLMResponse(
            text=text,
            structured=structured,
            usage=_usage_of(message),
            model=message.model,
            stop_reason=message.stop_reason,
            raw_id=message.id,
        )
    except ValidationError as exc:
        raise PermanentLLMError(f"anthropic: unrecordable response {message.id}: {exc}") from None


ANY_TOOL_INSTRUCTION = "Answer only by calling one or more of the tools."
"""What stands in for `tool_choice` "any" on models that refuse a forced tool choice."""

_STOP_REASONS: dict[str, StopReason] = {
    "end_turn": "end_turn", "stop_sequence": "end_turn", "tool_use": "tool_use",
    "max_tokens": "max_tokens", "model_context_window_exceeded": "max_tokens", "refusal": "refusal",
}


def build_turn_params(request: TurnRequest, force_tool: bool = True) -> dict[str, Any]:
    """The `messages.create` keyword arguments for one turn of a tool-using conversation.

    With `cache_prefix`, one breakpoint closes the tools and system prompt and a second the
    last message, so the next turn reads everything before its own new messages from the
    cache. `tool_choice` "any" becomes "auto" plus an instruction when `force_tool` is False.
    """
    params: dict[str, Any] = {
        "model": request.model or DEFAULT_MODEL,
        "max_tokens": request.max_tokens,
        "messages": wire_messages(request.messages, cache_last=request.cache_prefix),
    }
    unforced = request.tool_choice == "any" and not force_tool
    system = request.system
    if unforced:
        system = f"{system}\n\n{ANY_TOOL_INSTRUCTION}" if system else ANY_TOOL_INSTRUCTION
    if system:
        params["system"] = ([{"type": "text", "text": system, "cache_control": EPHEMERAL}]
                            if request.cache_prefix else system)
    if request.tools:
        tools = [wire_tool(tool) for tool in request.tools]
        if request.cache_prefix and not system:
            tools[-1]["cache_control"] = EPHEMERAL
        params["tools"] = tools
        params["tool_choice"] = {"type": "auto" if unforced else request.tool_choice}
    return params


def wire_tool(tool: ToolSpec) -> dict[str, Any]:
    wired: dict[str, Any] = {"name": tool.name, "input_schema": tool.input_schema}
    if tool.description:
        wired["description"] = tool.description
    return wired


def wire_messages(messages: tuple[ChatMessage, ...], cache_last: bool = False) -> list[dict[str, Any]]:
    """Messages as the API takes them: tool results travel as `tool_result` blocks of a user
    message, and a user text that follows them joins that message after its results (the API
    wants the results first, right after the turn that called the tools)."""
    wired: list[dict[str, Any]] = []
    for message in messages:
        blocks = _blocks_of(message)
        role = "assistant" if isinstance(message, AssistantMessage) else "user"
        if wired and role == "user" and wired[-1]["role"] == "user":
            wired[-1]["content"] += blocks
        else:
            wired.append({"role": role, "content": blocks})
    if cache_last:
        last_block = wired[-1]["content"][-1]
        if last_block["type"] not in ("thinking", "redacted_thinking"):
            last_block["cache_control"] = EPHEMERAL
    return wired


def _blocks_of(message: ChatMessage) -> list[dict[str, Any]]:
    if isinstance(message, UserMessage):
        return [{"type": "text", "text": message.text}]
    if isinstance(message, ToolResultsMessage):
        return [{"type": "tool_result", "tool_use_id": result.call_id, "content": result.content,
                 **({"is_error": True} if result.is_error else {})} for result in message.results]
    blocks: list[dict[str, Any]] = [
        {"type": "thinking", "thinking": r.text, "signature": r.signature} if r.kind == "thinking"
        else {"type": "redacted_thinking", "data": r.data} for r in message.reasoning]
    if message.text.strip():
        blocks.append({"type": "text", "text": message.text})
    blocks += [{"type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments}
               for call in message.tool_calls]
    return blocks


def to_turn(request: TurnRequest, message: Any) -> Turn:
    """Map an SDK `Message` to a Turn; a call to an unoffered tool or with non-object input fails."""
    usage = _usage_of(message)
    cost = usage_dollars(request.model or message.model, usage)
    texts: list[str] = []
    calls: list[ToolCall] = []
    reasoning: list[Reasoning] = []
    problems: list[str] = []
    for block in message.content:
        if block.type == "text":
            texts.append(block.text)
        elif block.type == "thinking":
            reasoning.append(Reasoning(kind="thinking", text=block.thinking, signature=block.signature))
        elif block.type == "redacted_thinking":
            reasoning.append(Reasoning(kind="redacted_thinking", data=block.data))
        elif block.type == "tool_use":
            call, problem = checked_call(request, block.id, block.name, block.input)
            if call is not None:
                calls.append(call)
            if problem:
                problems.append(problem)
        else:
            problems.append(f"unexpected {block.type!r} block (this request offers only client tools)")
    if problems:
        raise MalformedToolCall("anthropic", problems, usage, cost, message.id)
    try:
        return Turn(
            message=AssistantMessage(text="".join(texts), tool_calls=tuple(calls), reasoning=tuple(reasoning)),
            stop_reason=_STOP_REASONS.get(message.stop_reason or "", "other"),
            raw_stop_reason=message.stop_reason,
            usage=usage, dollars=cost, model=message.model, raw_id=message.id,
        )
    except ValidationError as exc:
        raise PermanentLLMError(f"anthropic: unrecordable turn {message.id}: {exc}") from None


def _usage_of(message: Any) -> Usage:
    usage = message.usage
    return Usage(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
                 cache_read_tokens=usage.cache_read_input_tokens or 0,
                 cache_write_tokens=usage.cache_creation_input_tokens or 0)
