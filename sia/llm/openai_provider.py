"""Any OpenAI-compatible chat endpoint (OpenAI, vLLM, Ollama, OpenRouter) through the `openai` SDK.

Structured output asks for `response_format: json_schema`. An endpoint that refuses
`response_format` (a 400/422 naming it) is asked once more with the schema written into
the system prompt, and if that works this provider uses the prompt from then on. A reply
that is prose despite `response_format` (some hosted routers drop the field) is asked
again the same way, for that call only: one bad reply does not give up the schema for
good (set `structured_mode="prompt"` for such a router to save the first call). Any other
400 (e.g. OpenAI's `context_length_exceeded`) fails at once: asking again cannot help.
Models that take only `max_completion_tokens` (OpenAI's o-series and gpt-5.x) answer
`max_tokens` with a 400 whose `param` is "max_tokens" and `code` "unsupported_parameter";
the call is repeated once with `max_completion_tokens`, which this provider then keeps.
Either way the answer text is parsed as one JSON object. Usage is normalised to
Anthropic's split: `input_tokens` excludes the prompt tokens the endpoint reports as
served from its cache.

`next_turn` takes one turn of a tool-using conversation through function calling:
`tools` of type "function", `tool_choice` "any" sent as "required", each tool result as a
`tool` message (a failed call's content prefixed `error: `, there being no error flag),
arguments sent and parsed as JSON text; arguments that do not parse as a JSON object fail
with `MalformedToolCall`.
"""

from __future__ import annotations

import json
import os
from typing import Any, Literal

import openai
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
    StopReason,
    ToolCall,
    ToolResultsMessage,
    ToolSpec,
    Turn,
    TurnRequest,
    UserMessage,
    checked_call,
)
from sia.llm.types import LLMRequest, LLMResponse, ResponseSchema, Usage

StructuredMode = Literal["json_schema", "prompt"]
MaxTokensField = Literal["max_tokens", "max_completion_tokens"]
Refusal = Literal["max_tokens_field", "response_format", "other"]
NO_KEY = "sia-no-key"
"""Sent as the bearer token to endpoints configured with `api_key_env=None` (the SDK insists on one)."""


class OpenAIProvider:
    """`complete(request)` against `/chat/completions` at `base_url`.

    `api_key_env=None` is for local endpoints that take no key; otherwise the named
    variable must be set. `default_model` serves requests that name no model.
    """

    name = "openai"

    def __init__(self, *, base_url: str | None = None, api_key_env: str | None = "OPENAI_API_KEY",
                 timeout: float = 600.0, default_model: str | None = None,
                 structured_mode: StructuredMode = "json_schema", strict_schema: bool = False,
                 max_tokens_field: MaxTokensField = "max_tokens") -> None:
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        self.api_key_env = api_key_env
        self.timeout = timeout
        self.default_model = default_model
        self.structured_mode: StructuredMode = structured_mode
        self.strict_schema = strict_schema
        self.max_tokens_field: MaxTokensField = max_tokens_field
        self._clients = ClientPerKey(lambda key: openai.OpenAI(
            api_key=key, base_url=self.base_url, max_retries=0, timeout=self.timeout))

    def __repr__(self) -> str:
        return f"OpenAIProvider(base_url={self.base_url!r}, api_key_env={self.api_key_env!r})"

    def check_credentials(self) -> None:
        self._key()

    def complete(self, request: LLMRequest) -> LLMResponse:
        if request.provider != self.name:
            raise PermanentLLMError(f"openai: request is for provider {request.provider!r}")
        model = request.model or self.default_model
        if not model:
            raise PermanentLLMError("openai: the request names no model and no default_model is set")
        client = self._clients.get(self._key())
        mode = self.structured_mode
        field_switched = refused_format = False
        while True:
            try:
                completion = self._create(client, request, model, mode)
            except _Refused as refused:
                if refused.kind == "max_tokens_field" and not field_switched:
                    self.max_tokens_field, field_switched = "max_completion_tokens", True
                    continue
                if refused.kind == "response_format" and self._can_fall_back(request, mode):
                    mode, refused_format = "prompt", True
                    continue
                raise refused.error from None
            try:
                response = to_response(request, completion)
            except UnstructuredReply:
                if not self._can_fall_back(request, mode):
                    raise
                mode, refused_format = "prompt", False  # prose despite response_format
                continue
            if refused_format:
                self.structured_mode = mode
            return response

    def next_turn(self, request: TurnRequest) -> Turn:
        """The assistant's next turn of a tool-using conversation (see `sia.llm.turns`).

        A malformed tool call in the reply raises `MalformedToolCall`, carrying the turn's usage.
        """
        if request.provider != self.name:
            raise PermanentLLMError(f"openai: request is for provider {request.provider!r}")
        model = request.model or self.default_model
        if not model:
            raise PermanentLLMError("openai: the request names no model and no default_model is set")
        client = self._clients.get(self._key())
        try:
            completion = self._call(client, build_turn_params(request, model, self.max_tokens_field))
        except _Refused as refused:
            if refused.kind != "max_tokens_field" or self.max_tokens_field == "max_completion_tokens":
                raise refused.error from None
            self.max_tokens_field = "max_completion_tokens"
            return self.next_turn(request)
        return to_turn(request, model, completion)

    @staticmethod
    def _can_fall_back(request: LLMRequest, mode: StructuredMode) -> bool:
        return request.response_schema is not None and mode == "json_schema"

    def _create(self, client: openai.OpenAI, request: LLMRequest, model: str,
                mode: StructuredMode) -> Any:
        return self._call(client, build_params(request, model, mode, self.strict_schema,
                                               self.max_tokens_field))

    def _call(self, client: openai.OpenAI, params: dict[str, Any]) -> Any:
        """One `chat.completions.create` call; a permanent refusal comes back as `_Refused`."""
        try:
            return client.chat.completions.create(**params)
        except openai.APIStatusError as exc:
            error = from_http_status(self.name, exc.status_code, exc.response.headers, exc.body,
                                     fallback=exc.message)
            if isinstance(error, PermanentLLMError):
                raise _Refused(refusal_kind(exc.status_code, exc.body), error) from None
            raise error from None
        except openai.APIConnectionError as exc:
            raise TransientLLMError(f"openai: {type(exc).__name__}: {exc.message}",
                                    status=NO_STATUS) from None
        except openai.OpenAIError as exc:
            raise PermanentLLMError(f"openai: {type(exc).__name__}: {exc}") from None

    def _key(self) -> str:
        if self.api_key_env is None:
            return NO_KEY
        return api_key(self.api_key_env, self.name)

    def close(self) -> None:
        self._clients.close()


class UnstructuredReply(PermanentLLMError):
    """A structured request answered with text that holds no JSON object."""


class _Refused(Exception):
    """A permanent HTTP refusal, with what it refused, so `complete` can decide to ask again."""

    def __init__(self, kind: Refusal, error: PermanentLLMError) -> None:
        super().__init__(str(error))
        self.kind = kind
        self.error = error


def refusal_kind(status: int, body: Any) -> Refusal:
    """What a 4xx refused, from OpenAI's `param`/`code` (the SDK passes the inner `error` object).

    `max_tokens_field`: the model takes only `max_completion_tokens`; `response_format`:
    the endpoint cannot do structured output; `other`: anything else (context length,
    bad key, unknown model), which no second attempt can fix.
    """
    if status not in (400, 422) or not isinstance(body, dict):
        return "other"
    error = body.get("error")
    inner = error if isinstance(error, dict) else body
    param, code = str(inner.get("param") or ""), str(inner.get("code") or "")
    message = str(inner.get("message") or "")
    if param == "max_tokens" and code == "unsupported_parameter" or "'max_completion_tokens'" in message:
        return "max_tokens_field"
    if code == "context_length_exceeded":
        return "other"
    if param.startswith("response_format") or "response_format" in message or "json_schema" in message:
        return "response_format"
    return "other"


def schema_instruction(schema: ResponseSchema) -> str:
    """The system-prompt text that stands in for `response_format` on endpoints without it."""
    return (f"Reply with one JSON object only, no prose and no code fences. It must conform to "
            f"this JSON schema (named {schema.name}):\n"
            f"{json.dumps(schema.json_schema, sort_keys=True, separators=(',', ':'))}")


def build_params(request: LLMRequest, model: str, mode: StructuredMode = "json_schema",
                 strict_schema: bool = False, max_tokens_field: str = "max_tokens") -> dict[str, Any]:
    """The `chat.completions.create` keyword arguments for `request` in the given structured mode."""
    schema = request.response_schema
    system = request.system
    if schema is not None and mode == "prompt":
        system = f"{system}\n\n{schema_instruction(schema)}" if system else schema_instruction(schema)
    messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    messages += [{"role": m.role, "content": m.content} for m in request.messages]
    params: dict[str, Any] = {"model": model, "messages": messages, max_tokens_field: request.max_tokens}
    if request.temperature is not None:
        params["temperature"] = request.temperature
    if request.seed is not None:
        params["seed"] = request.seed
    if schema is not None and mode == "json_schema":
        format_spec: dict[str, Any] = {"name": schema.name, "schema": schema.json_schema,
                                       "strict": strict_schema}
        if schema.description:
            format_spec["description"] = schema.description
        params["response_format"] = {"type": "json_schema", "json_schema": format_spec}
    return params


def _no_constant(name: str) -> Any:
    """NaN and infinities are not JSON and could not be recorded in an event."""
    raise ValueError(f"{name} is not valid JSON")


def parse_json_object(text: str) -> dict[str, Any]:
    """The JSON object in a reply, tolerating code fences or prose around it."""
    stripped = text.strip()
    try:
        value = json.loads(stripped, parse_constant=_no_constant)
    except json.JSONDecodeError:
        start, end = stripped.find("{"), stripped.rfind("}")
        if start < 0 or end <= start:
            raise ValueError("no JSON object in the reply") from None
        value = json.loads(stripped[start:end + 1], parse_constant=_no_constant)
    if not isinstance(value, dict):
        raise ValueError(f"the reply is JSON but not an object ({type(value).__name__})")
    return value


def to_response(request: LLMRequest, completion: Any) -> LLMResponse:
    if not completion.choices:
        raise PermanentLLMError(f"openai: completion {completion.id} has no choices")
    choice = completion.choices[0]
    text = choice.message.content or ""
    structured: dict[str, Any] | None = None
    if request.response_schema is not None:
        try:
            structured = parse_json_object(text)
        except ValueError as exc:
            raise UnstructuredReply(
                f"openai: the reply for schema {request.response_schema.name!r} is not a JSON object "
                f"({exc}; finish_reason={choice.finish_reason}): {text[:200]!r}") from None
    try:
        return LLMResponse(
            text=text,
            structured=structured,
            usage=usage_of(completion),
            model=completion.model or request.model or "",
            stop_reason=choice.finish_reason,
            raw_id=completion.id or "",
        )
    except ValidationError as exc:
        raise PermanentLLMError(f"openai: unrecordable response {completion.id}: {exc}") from None


def usage_of(completion: Any) -> Usage:
    """The completion's usage in Anthropic's split: `input_tokens` excludes cached prompt tokens."""
    usage = completion.usage
    prompt = usage.prompt_tokens if usage else 0
    details = getattr(usage, "prompt_tokens_details", None) if usage else None
    cached = min(prompt, (getattr(details, "cached_tokens", None) or 0) if details else 0)
    return Usage(input_tokens=prompt - cached, output_tokens=usage.completion_tokens if usage else 0,
                 cache_read_tokens=cached)


TOOL_ERROR_PREFIX = "error: "
"""Chat completions have no error flag on a tool message; a failed call's result starts with this."""

_TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}
_STOP_REASONS: dict[str, StopReason] = {
    "stop": "end_turn", "tool_calls": "tool_use", "function_call": "tool_use",
    "length": "max_tokens", "content_filter": "refusal",
}


def build_turn_params(request: TurnRequest, model: str,
                      max_tokens_field: str = "max_tokens") -> dict[str, Any]:
    """The `chat.completions.create` keyword arguments for one turn of a tool-using conversation."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": request.system}] if request.system else []
    for message in request.messages:
        messages += wire_messages(message)
    params: dict[str, Any] = {"model": model, "messages": messages, max_tokens_field: request.max_tokens}
    if request.tools:
        params["tools"] = [wire_tool(tool) for tool in request.tools]
        params["tool_choice"] = _TOOL_CHOICES[request.tool_choice]
    if request.temperature is not None:
        params["temperature"] = request.temperature
    if request.seed is not None:
        params["seed"] = request.seed
    return params


def wire_tool(tool: ToolSpec) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name, "parameters": tool.input_schema}
    if tool.description:
        function["description"] = tool.description
    return {"type": "function", "function": function}


def wire_messages(message: ChatMessage) -> list[dict[str, Any]]:
    """One message as chat messages: tool results become one `tool` message per call.

    Reasoning blocks are Anthropic's and are not sent; arguments travel as JSON text.
    """
    if isinstance(message, UserMessage):
        return [{"role": "user", "content": message.text}]
    if isinstance(message, ToolResultsMessage):
        return [{"role": "tool", "tool_call_id": result.call_id,
                 "content": f"{TOOL_ERROR_PREFIX}{result.content}" if result.is_error else result.content}
                for result in message.results]
    wired: dict[str, Any] = {"role": "assistant", "content": message.text or None}
    if message.tool_calls:
        wired["tool_calls"] = [
            {"id": call.id, "type": "function",
             "function": {"name": call.name, "arguments": json.dumps(call.arguments, sort_keys=True)}}
            for call in message.tool_calls]
    return [wired]


def to_turn(request: TurnRequest, model: str, completion: Any) -> Turn:
    """Map an SDK `ChatCompletion` to a Turn; unparseable arguments or an unoffered tool fail."""
    if not completion.choices:
        raise PermanentLLMError(f"openai: completion {completion.id} has no choices")
    choice = completion.choices[0]
    usage = usage_of(completion)
    cost = usage_dollars(request.model or completion.model or model, usage)
    calls: list[ToolCall] = []
    problems: list[str] = []
    for wired in choice.message.tool_calls or []:
        call, problem = _tool_call(request, wired, choice.finish_reason)
        if call is not None:
            calls.append(call)
        if problem:
            problems.append(problem)
    if problems:
        raise MalformedToolCall("openai", problems, usage, cost, completion.id or "")
    try:
        return Turn(
            message=AssistantMessage(text=choice.message.content or "", tool_calls=tuple(calls)),
            stop_reason=_STOP_REASONS.get(choice.finish_reason or "", "other"),
            raw_stop_reason=choice.finish_reason,
            usage=usage, dollars=cost, model=completion.model or model, raw_id=completion.id or "",
        )
    except ValidationError as exc:
        raise PermanentLLMError(f"openai: unrecordable turn {completion.id}: {exc}") from None


def _tool_call(request: TurnRequest, wired: Any, finish_reason: str | None) -> tuple[ToolCall | None, str]:
    """The call, or why it cannot be run (arguments cut off at the token limit say so)."""
    function = getattr(wired, "function", None)
    if wired.type != "function" or function is None:
        return None, f"call {wired.id} is of type {wired.type!r}; only function calls are offered"
    try:
        arguments = json.loads(function.arguments or "{}", parse_constant=_no_constant)
    except ValueError as exc:
        cut = " (cut off at max_tokens)" if finish_reason == "length" else ""
        return None, (f"call {wired.id} to {function.name}: arguments are not JSON{cut} ({exc}): "
                      f"{function.arguments[:200]!r}")
    return checked_call(request, wired.id, function.name, arguments)
