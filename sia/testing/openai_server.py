"""A loopback stand-in for an OpenAI-compatible endpoint: `POST /v1/chat/completions`, `GET /v1/models`.

Point the SDK at `srv.base_url + "/v1"` (`srv.api_base`). It checks the bearer key
(unless built with `api_key=None`, like a local vLLM or Ollama), the body's shape and
`response_format`, and refuses unknown arguments the way OpenAI does. With
`supports_json_schema=False` it refuses `response_format: json_schema` with a 400, as
older local servers do, so tests can drive a provider's fallback. Models named in
`completion_tokens_models` (OpenAI's o-series and gpt-5.x) refuse `max_tokens`, and a
prompt over `context_window` tokens is refused, each with OpenAI's documented 400 body
(`{"error": {"message", "type": "invalid_request_error", "param", "code"}}` with codes
`unsupported_parameter` and `context_length_exceeded`, as the OpenAI API reference and
openai-python's `BadRequestError` carry them). It simulates automatic
prefix caching: a system prompt seen before, of at least `min_cache_tokens`, is reported
in `usage.prompt_tokens_details.cached_tokens`.

The answer comes from `responder(request_json)`, returning:
  * `str` — the message content;
  * `dict` — a JSON object, sent as the content's JSON text (a structured answer);
  * `Reply` — full control (text or `tool_input` as JSON, `tool_calls`, `stop_reason` as
    finish_reason, usage).

`converse(*turns)` scripts a tool conversation instead (see `sia.testing.loopback.Conversation`).
Requests with tools are checked as the API checks them: function tools, a `tool_choice` only
with tools, and every assistant `tool_calls` answered by `tool` messages right after it.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Callable
from typing import Any

from sia.testing.loopback import (
    JSON,
    CallTools,
    Conversation,
    Fault,
    FinalAnswer,
    IssuedCall,
    LoopbackServer,
    ProtocolError,
    RecordedRequest,
    Reply,
    Route,
    SeenResult,
    ToolExchange,
    estimate_tokens,
)

Responder = Callable[[JSON], "str | dict[str, Any] | Reply"]

CREATED = 1_700_000_000
"""A fixed `created` timestamp, so identical scripts give identical responses."""

_ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "permission_error",
                404: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_exceeded"}
_ERROR_CODES = {401: "invalid_api_key", 404: "model_not_found", 429: "rate_limit_exceeded"}
_FIELDS = frozenset({
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed",
    "stop", "n", "response_format", "tools", "tool_choice", "stream", "stream_options", "user",
    "metadata", "store", "frequency_penalty", "presence_penalty", "logprobs", "top_logprobs",
    "logit_bias", "parallel_tool_calls", "reasoning_effort", "service_tier", "prompt_cache_key",
    "prompt_cache_retention", "verbosity", "modalities", "prediction", "safety_identifier",
})
_ROLES = ("system", "developer", "user", "assistant", "tool")

MAX_TOKENS_UNSUPPORTED = ("Unsupported parameter: 'max_tokens' is not supported with this model. "
                          "Use 'max_completion_tokens' instead.")
"""OpenAI's answer to `max_tokens` on a model that takes only `max_completion_tokens`."""


class InvalidRequest(ProtocolError):
    """A 400 with OpenAI's `param` and `code`, which clients read to tell refusals apart."""

    def __init__(self, message: str, param: str | None, code: str | None) -> None:
        super().__init__(400, message, "invalid_request_error", param=param, code=code)


def default_responder(request: JSON) -> str | dict[str, Any]:
    """Answers a json_schema request with `{}` and anything else with a short fixed text."""
    kind = (request.get("response_format") or {}).get("type")
    return {} if kind in ("json_schema", "json_object") else "ok"


class OpenAIServer(LoopbackServer):
    """`with OpenAIServer(responder) as srv:` then `OpenAI(base_url=srv.api_base, ...)`."""

    def __init__(self, responder: Responder = default_responder, *, api_key: str | None = "test-key",
                 models: tuple[str, ...] = ("loopback-model",), supports_json_schema: bool = True,
                 min_cache_tokens: int = 1024, completion_tokens_models: tuple[str, ...] = (),
                 context_window: int | None = None) -> None:
        super().__init__()
        self.responder = responder
        self.api_key = api_key
        self.models = models
        self.supports_json_schema = supports_json_schema
        self.completion_tokens_models = completion_tokens_models
        self.context_window = context_window
        self.min_cache_tokens = min_cache_tokens
        self._seen_prefixes: set[str] = set()
        self._count = 0
        self._count_lock = threading.Lock()

    def __enter__(self) -> OpenAIServer:
        self.start()
        return self

    @property
    def api_base(self) -> str:
        """The base URL the OpenAI SDK wants (it appends `/chat/completions`)."""
        return f"{self.base_url}/v1"

    @property
    def env(self) -> dict[str, str]:
        """Environment that points a provider, or a `sia` subprocess, at this server."""
        return {"OPENAI_BASE_URL": self.api_base, "OPENAI_API_KEY": self.api_key or "test-key"}

    def converse(self, *turns: CallTools | FinalAnswer) -> Conversation:
        """Answer the next requests with a scripted tool conversation (see `Conversation`)."""
        conversation = Conversation(turns, tool_exchange, id_prefix="call_loopback_")
        self.responder = conversation
        return conversation

    @property
    def completion_requests(self) -> list[JSON]:
        return [r.body for r in self.requests
                if r.path.startswith("/v1/chat/completions") and r.body is not None]

    def routes(self) -> dict[tuple[str, str], Route]:
        return {("POST", "/v1/chat/completions"): self._completions, ("GET", "/v1/models"): self._models}

    def error_body(self, status: int, message: str, error_type: str | None) -> tuple[dict[str, str], JSON]:
        kind = error_type or _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        return ({"x-request-id": f"req_loopback_{self._next():06d}"},
                {"error": {"message": message, "type": kind, "param": None,
                           "code": _ERROR_CODES.get(status)}})

    def _next(self) -> int:
        with self._count_lock:
            self._count += 1
            return self._count

    def _check_auth(self, request: RecordedRequest) -> None:
        if self.api_key is None:
            return
        bearer = request.headers.get("authorization", "")
        if not bearer.lower().startswith("bearer ") or not bearer[7:].strip():
            raise ProtocolError(401, "You didn't provide an API key.")
        if bearer[7:].strip() != self.api_key:
            raise ProtocolError(401, "Incorrect API key provided.")

    def _models(self, request: RecordedRequest) -> tuple[int, dict[str, str], JSON]:
        self._check_auth(request)
        return 200, {}, {"object": "list", "data": [
            {"id": model, "object": "model", "created": CREATED, "owned_by": "loopback"}
            for model in self.models]}

    def _completions(self, request: RecordedRequest) -> tuple[int, dict[str, str], JSON]:
        self._check_auth(request)
        body = request.body
        if not isinstance(body, dict):
            raise ProtocolError(400, "We could not parse the JSON body of your request.")
        self._check_body(body)
        answer = self.responder(body)
        reply = answer if isinstance(answer, Reply) else (
            Reply(text=answer) if isinstance(answer, str) else Reply(tool_input=answer))
        content = reply.text if reply.tool_input is None else json.dumps(dict(reply.tool_input))
        message: JSON = {"role": "assistant", "content": content, "refusal": None}
        if reply.tool_calls:
            message = {**message, "content": content or None,
                       "tool_calls": [_wire_call(call) for call in reply.tool_calls]}
        prompt, cached = self._prompt_tokens(body)
        completion = max(1, estimate_tokens(_message_text(message)))
        usage: dict[str, Any] = {
            "prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
        }
        if reply.usage:
            usage.update(reply.usage)
        return 200, {"x-request-id": f"req_loopback_{self._next():06d}"}, {
            "id": f"chatcmpl-loopback-{self._next():06d}",
            "object": "chat.completion",
            "created": CREATED,
            "model": body["model"],
            "choices": [{"index": 0, "logprobs": None, "message": message,
                         "finish_reason": reply.stop_reason or ("tool_calls" if reply.tool_calls else "stop")}],
            "usage": usage,
            "system_fingerprint": "fp_loopback",
        }

    def _check_body(self, body: JSON) -> None:
        for name in body:
            if name not in _FIELDS:
                raise ProtocolError(400, f"Unrecognized request argument supplied: {name}")
        if body.get("stream"):
            raise ProtocolError(400, "stream: this loopback server answers non-streaming requests only")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise ProtocolError(400, "you must provide a model parameter")
        if self.models and model not in self.models:
            raise ProtocolError(404, f"The model `{model}` does not exist or you do not have access to it.")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ProtocolError(400, "'messages' must contain at least one message")
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in _ROLES:
                raise ProtocolError(400, f"Invalid value for 'messages[{i}].role'")
            content = message.get("content")
            calls_only = message["role"] == "assistant" and bool(message.get("tool_calls")) and content is None
            if not isinstance(content, (str, list)) and not calls_only:
                raise ProtocolError(400, f"Invalid type for 'messages[{i}].content'")
        _check_tool_messages(messages)
        _check_tools(body)
        for name in ("max_tokens", "max_completion_tokens"):
            value = body.get(name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ProtocolError(400, f"Invalid '{name}': expected a positive integer")
        if "max_tokens" in body and model in self.completion_tokens_models:
            raise InvalidRequest(MAX_TOKENS_UNSUPPORTED, "max_tokens", "unsupported_parameter")
        temperature = body.get("temperature")
        if temperature is not None and (not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2):
            raise ProtocolError(400, "Invalid 'temperature': expected a number between 0 and 2")
        self._check_response_format(body.get("response_format"))
        self._check_context(body)

    def _check_context(self, body: JSON) -> None:
        if self.context_window is None:
            return
        asked = sum(estimate_tokens(_message_text(m)) for m in body["messages"])
        if asked > self.context_window:
            raise InvalidRequest(
                f"This model's maximum context length is {self.context_window} tokens. However, your "
                f"messages resulted in {asked} tokens. Please reduce the length of the messages.",
                "messages", "context_length_exceeded")

    def _check_response_format(self, response_format: Any) -> None:
        if response_format is None:
            return
        kind = response_format.get("type") if isinstance(response_format, dict) else None
        if kind not in ("text", "json_object", "json_schema"):
            raise ProtocolError(400, "Invalid value for 'response_format.type'")
        if kind != "json_schema":
            return
        if not self.supports_json_schema:
            raise InvalidRequest("response_format of type 'json_schema' is not supported by this server",
                                 "response_format", None)
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or not spec.get("name") or not isinstance(spec.get("schema"), dict):
            raise ProtocolError(400, "Missing required parameter: 'response_format.json_schema.name' "
                                     "or 'response_format.json_schema.schema'")

    def _prompt_tokens(self, body: JSON) -> tuple[int, int]:
        """`(prompt_tokens, cached_tokens)`: a leading system prompt seen before counts as cached."""
        texts = [_message_text(m) for m in body["messages"]]
        prompt = max(1, sum(estimate_tokens(t) for t in texts))
        first = body["messages"][0]
        if first["role"] not in ("system", "developer") or not isinstance(first["content"], str):
            return prompt, 0
        prefix_tokens = estimate_tokens(first["content"])
        if prefix_tokens < self.min_cache_tokens:
            return prompt, 0
        key = hashlib.sha256(f"{body['model']}\0{first['content']}".encode()).hexdigest()
        with self._count_lock:
            seen = key in self._seen_prefixes
            self._seen_prefixes.add(key)
        return prompt, prefix_tokens if seen else 0


def _message_text(message: JSON) -> str:
    """A message's content and tool calls as text, for token estimates."""
    content = message.get("content")
    text = content if isinstance(content, str) else ("" if content is None else json.dumps(content))
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        text += f"{function.get('name', '')}{function.get('arguments', '')}"
    return text


def _wire_call(call: IssuedCall) -> JSON:
    arguments = call.arguments if isinstance(call.arguments, str) else json.dumps(dict(call.arguments))
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": arguments}}


def tool_exchange(body: JSON) -> ToolExchange:
    """The `tool_calls` of assistant messages (arguments parsed when they are JSON) and the
    `tool` messages answering them."""
    calls: list[IssuedCall] = []
    results: list[SeenResult] = []
    for message in body.get("messages") or []:
        for call in message.get("tool_calls") or []:
            raw = call["function"]["arguments"]
            try:
                arguments = json.loads(raw)
            except ValueError:
                arguments = raw
            calls.append(IssuedCall(call["id"], call["function"]["name"], arguments))
        if message.get("role") == "tool":
            content = message.get("content")
            results.append(SeenResult(message["tool_call_id"],
                                      content if isinstance(content, str) else json.dumps(content)))
    offered = frozenset(str((tool.get("function") or {}).get("name")) for tool in body.get("tools") or [])
    return ToolExchange(tuple(calls), tuple(results), offered)


_TOOL_CHOICE_MODES = ("auto", "none", "required")


def _check_tools(body: JSON) -> None:
    """`tools` and `tool_choice` as the Chat Completions API validates them."""
    tools = body.get("tools")
    names: list[str] = []
    for i, tool in enumerate(tools or []):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict):
            raise InvalidRequest(f"Invalid value for 'tools[{i}]': expected a function tool", f"tools[{i}]", None)
        name = function.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
            raise InvalidRequest(f"Invalid 'tools[{i}].function.name': string does not match pattern. "
                                 "Expected a string that matches the pattern '^[a-zA-Z0-9_-]+$'.",
                                 f"tools[{i}].function.name", "invalid_value")
        if "parameters" in function and not isinstance(function["parameters"], dict):
            raise InvalidRequest(f"Invalid type for 'tools[{i}].function.parameters'",
                                 f"tools[{i}].function.parameters", "invalid_type")
        names.append(name)
    choice = body.get("tool_choice")
    if choice is None:
        return
    if not tools:
        raise InvalidRequest("Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' "
                             "are specified.", "tool_choice", None)
    if isinstance(choice, str):
        if choice not in _TOOL_CHOICE_MODES:
            raise InvalidRequest(f"Invalid value: '{choice}'. Supported values are: 'none', 'auto', and "
                                 "'required'.", "tool_choice", "invalid_value")
    elif not isinstance(choice, dict) or (choice.get("function") or {}).get("name") not in names:
        raise InvalidRequest("Invalid value for 'tool_choice': no function of that name in 'tools'.",
                             "tool_choice", "invalid_value")


def _unanswered(call_ids: list[str]) -> InvalidRequest:
    return InvalidRequest("An assistant message with 'tool_calls' must be followed by tool messages "
                          "responding to each 'tool_call_id'. The following tool_call_ids did not "
                          f"have response messages: {', '.join(call_ids)}", "messages", None)


def _check_tool_messages(messages: list[JSON]) -> None:
    """Every assistant `tool_calls` is answered by `tool` messages right after it, and every
    `tool` message answers one of them (OpenAI's wording)."""
    open_ids: list[str] = []
    for i, message in enumerate(messages):
        if message["role"] == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or call_id not in open_ids:
                raise InvalidRequest("Invalid parameter: messages with role 'tool' must be a response to a "
                                     "preceeding message with 'tool_calls'.", f"messages.[{i}].role", None)
            open_ids.remove(call_id)
            continue
        if open_ids:
            raise _unanswered(open_ids)
        for j, call in enumerate(message.get("tool_calls") or []):
            function = call.get("function") if isinstance(call, dict) else None
            if (not isinstance(function, dict) or not isinstance(call.get("id"), str)
                    or call.get("type") != "function" or not isinstance(function.get("name"), str)
                    or not isinstance(function.get("arguments"), str)):
                raise ProtocolError(400, f"Invalid value for 'messages[{i}].tool_calls[{j}]': expected "
                                         "{id, type: 'function', function: {name, arguments: string}}")
            open_ids.append(call["id"])
    if open_ids:
        raise _unanswered(open_ids)


__all__ = ["MAX_TOKENS_UNSUPPORTED", "Fault", "InvalidRequest", "OpenAIServer", "Reply", "default_responder"]
