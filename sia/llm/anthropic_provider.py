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
            message = client.messages.create(**build_params(request, force_tool=force))
        except anthropic.APIStatusError as exc:
            error = from_http_status(self.name, exc.status_code, exc.response.headers, exc.body,
                                     fallback=exc.message)
            if not (force and request.response_schema is not None and exc.status_code == 400
                    and FORCED_TOOL_REFUSED in str(error)):
                raise error from None
            self._unforced_models.add(model)
            return self.complete(request)
        except anthropic.APIConnectionError as exc:
            raise TransientLLMError(f"anthropic: {type(exc).__name__}: {exc.message}",
                                    status=NO_STATUS) from None
        except anthropic.AnthropicError as exc:
            raise PermanentLLMError(f"anthropic: {type(exc).__name__}: {exc}") from None
        return to_response(request, message)

    def _key(self) -> str:
        return api_key(self.api_key_env, self.name)

    def close(self) -> None:
        self._clients.close()


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
    usage = message.usage
    try:
        return LLMResponse(
            text=text,
            structured=structured,
            usage=Usage(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
                        cache_read_tokens=usage.cache_read_input_tokens or 0,
                        cache_write_tokens=usage.cache_creation_input_tokens or 0),
            model=message.model,
            stop_reason=message.stop_reason,
            raw_id=message.id,
        )
    except ValidationError as exc:
        raise PermanentLLMError(f"anthropic: unrecordable response {message.id}: {exc}") from None
