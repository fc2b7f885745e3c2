"""A tool-using conversation and one assistant turn of it, as frozen, canonical-JSON-ready values.

An agent that uses tools asks for one assistant turn at a time: the conversation so far
(user text, the assistant's earlier turns with their tool calls, the tool results), the
tools it may call, and a token limit. The answer is a `Turn`: the assistant's message,
which the agent appends to the conversation as it is, why the model stopped, and what the
turn cost. Requests are hashed into effect cache keys and turns are recorded in events,
so both round-trip through `model_dump(mode="json")` unchanged and neither may hold a
secret. The same values serve every provider; each provider maps them onto its wire form.

A request refuses a conversation no provider would accept, so the mistake is reported at
the line that made it rather than as an HTTP 400: every tool call must be answered by the
tool-results message that follows it, and only calls are answered.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from sia.core.events.canonical import canonical_json
from sia.llm.errors import PermanentLLMError
from sia.llm.types import Frozen, ProviderRequest, Usage

__all__ = [
    "AssistantMessage", "ChatMessage", "MalformedToolCall", "Reasoning", "StopReason", "ToolCall", "ToolChoice",
    "ToolResult", "ToolResultsMessage", "ToolSpec", "Turn", "TurnRequest", "UserMessage",
]

TOOL_NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
"""What both APIs accept as a tool name (Anthropic allows 128 characters, OpenAI 64)."""

StopReason = Literal["end_turn", "tool_use", "max_tokens", "refusal", "other"]
"""Why a turn ended, the same for every provider; `Turn.raw_stop_reason` keeps the provider's word."""

ToolChoice = Literal["auto", "any", "none"]
"""`auto`: the model may call tools; `any`: it must call one; `none`: it may not call any."""


class ToolSpec(Frozen):
    """A tool the model may call: its name, what it is for, and the JSON schema of its arguments."""

    name: str = Field(pattern=TOOL_NAME_PATTERN)
    description: str = ""
    input_schema: dict[str, Any]

    @model_validator(mode="after")
    def _object_schema(self) -> ToolSpec:
        if self.input_schema.get("type") != "object":
            raise ValueError(f"tool {self.name!r}: input_schema must describe a JSON object "
                             "(\"type\": \"object\"): tool arguments are objects")
        canonical_json(self.input_schema)
        return self


class ToolCall(Frozen):
    """One call the model made: the provider's call id, the tool's name and its arguments."""

    id: str = Field(min_length=1)
    name: str = Field(pattern=TOOL_NAME_PATTERN)
    arguments: dict[str, Any]

    @field_validator("arguments")
    @classmethod
    def _recordable(cls, value: dict[str, Any]) -> dict[str, Any]:
        canonical_json(value)
        return value


class ToolResult(Frozen):
    """What a tool returned for the call `call_id`; `is_error` says the call failed."""

    call_id: str = Field(min_length=1)
    content: str
    is_error: bool = False


class Reasoning(Frozen):
    """A thinking block the model returned, kept to be sent back exactly as received.

    Anthropic requires the thinking blocks of an assistant turn that called tools to be
    passed back, signature intact, when the conversation continues. `kind` "thinking"
    holds readable `text` and a `signature`; "redacted_thinking" holds only opaque `data`.
    """

    kind: Literal["thinking", "redacted_thinking"]
    text: str = ""
    signature: str = ""
    data: str = ""


class UserMessage(Frozen):
    role: Literal["user"] = "user"
    text: str = Field(min_length=1)


class AssistantMessage(Frozen):
    """An assistant turn as it goes back into the conversation: text, tool calls, reasoning."""

    role: Literal["assistant"] = "assistant"
    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    reasoning: tuple[Reasoning, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not self.text.strip() and not self.tool_calls


class ToolResultsMessage(Frozen):
    """The results of every call of the assistant message just before it, in any order."""

    role: Literal["tool"] = "tool"
    results: tuple[ToolResult, ...] = Field(min_length=1)


ChatMessage = Annotated[UserMessage | AssistantMessage | ToolResultsMessage, Field(discriminator="role")]


class TurnRequest(ProviderRequest):
    """Ask for the next assistant turn of `messages`, with `tools` on offer.

    `seed` and `temperature` are cache identity even where a provider cannot honour them
    (Anthropic's current API takes neither). `cache_prefix` marks the tools and system
    prompt, and the conversation up to its last message, as cacheable prefixes, so each
    turn reads the previous turns from the cache (Anthropic; OpenAI-compatible endpoints
    cache prefixes on their own).
    """

    system: str = ""
    messages: tuple[ChatMessage, ...] = Field(min_length=1)
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: ToolChoice = "auto"
    max_tokens: int = Field(default=4096, gt=0)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    seed: int | None = None
    cache_prefix: bool = False

    @model_validator(mode="after")
    def _well_formed(self) -> TurnRequest:
        names = [tool.name for tool in self.tools]
        if len(set(names)) != len(names):
            raise ValueError(f"tool names must be unique, got {names}")
        if self.tool_choice == "any" and not self.tools:
            raise ValueError("tool_choice 'any' needs at least one tool")
        problems = conversation_problems(self.messages)
        if any(isinstance(m, AssistantMessage) and m.tool_calls for m in self.messages) and not self.tools:
            problems.append("the conversation holds tool calls, so the request must define tools")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def tool_names(self) -> frozenset[str]:
        return frozenset(tool.name for tool in self.tools)


def conversation_problems(messages: tuple[ChatMessage, ...]) -> list[str]:
    """Why the providers would refuse `messages`: unanswered or unasked-for calls, empty turns."""
    problems: list[str] = []
    seen_ids: set[str] = set()
    for i, message in enumerate(messages):
        previous = messages[i - 1] if i else None
        asked = previous.tool_calls if isinstance(previous, AssistantMessage) else ()
        asked_ids = [call.id for call in asked]
        if isinstance(message, AssistantMessage):
            if message.is_empty:
                problems.append(f"messages[{i}]: an assistant message needs text or tool calls")
            for call in message.tool_calls:
                if call.id in seen_ids:
                    problems.append(f"messages[{i}]: tool call id {call.id!r} is used twice")
                seen_ids.add(call.id)
        if isinstance(message, ToolResultsMessage):
            answered = [result.call_id for result in message.results]
            if not asked:
                problems.append(f"messages[{i}]: tool results must follow an assistant message with tool calls")
            elif sorted(answered) != sorted(asked_ids):
                problems.append(f"messages[{i}]: results answer {sorted(answered)}, but "
                                f"messages[{i - 1}] called {sorted(asked_ids)}; answer each call once")
        elif asked:
            problems.append(f"messages[{i - 1}]: tool calls {asked_ids} must be answered by a "
                            f"tool results message right after it")
    last = messages[-1] if messages else None
    if isinstance(last, AssistantMessage) and last.tool_calls:
        problems.append(f"messages[{len(messages) - 1}]: the conversation ends with unanswered "
                        f"tool calls {[call.id for call in last.tool_calls]}")
    return problems


def checked_call(request: TurnRequest, call_id: str, name: str, arguments: Any) -> tuple[ToolCall | None, str]:
    """A call the model made, or why it cannot be run: a tool the request does not offer,
    arguments that are not a JSON object. The same wording for every provider."""
    if name not in request.tool_names:
        return None, (f"call {call_id} names tool {name!r}, which this request does not offer "
                      f"(offered: {', '.join(sorted(request.tool_names)) or 'none'})")
    if not isinstance(arguments, dict):
        return None, f"call {call_id} to {name}: arguments are {type(arguments).__name__}, not a JSON object"
    try:
        return ToolCall(id=call_id, name=name, arguments=arguments), ""
    except ValidationError as exc:
        return None, f"call {call_id} to {name}: {exc.errors()[0]['msg']}"


class MalformedToolCall(PermanentLLMError):
    """The model answered, but a tool call in its turn cannot be run: arguments that are not a
    JSON object, or a tool the request did not offer. The model chose badly, so asking again
    can help: an agent drops the whole turn and re-asks. The turn still cost tokens, so
    `usage` and `dollars` say how many; `problems` says what was wrong with which call.
    """

    def __init__(self, provider: str, problems: list[str], usage: Usage, dollars: float,
                 raw_id: str = "") -> None:
        super().__init__(f"{provider}: malformed tool call in {raw_id or 'the reply'}: " + "; ".join(problems))
        self.problems = tuple(problems)
        self.usage = usage
        self.dollars = dollars
        self.raw_id = raw_id


class Turn(Frozen):
    """One assistant turn: append `message` to the conversation, run its `tool_calls`, ask again.

    `dollars` is priced by `sia.llm.pricing.usage_dollars` from the requested model (the
    served one when the request named none), cache reads and writes at their own rates.
    """

    message: AssistantMessage
    stop_reason: StopReason
    raw_stop_reason: str | None = None
    usage: Usage = Usage()
    dollars: float = Field(default=0.0, ge=0.0)
    model: str
    raw_id: str = ""

    @property
    def text(self) -> str:
        return self.message.text

    @property
    def tool_calls(self) -> tuple[ToolCall, ...]:
        return self.message.tool_calls
