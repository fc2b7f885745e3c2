"""Claude through the official `anthropic` SDK (Messages API, non-streaming).

Structured output uses one tool whose input schema is the response schema, forced with
`tool_choice`; the tool's input is the answer. Prompt caching puts an ephemeral
`cache_control` breakpoint on the system block, which caches the tools and the system
prompt together (the API orders the prefix tools → system → messages). The SDK's retries
are off (`max_retries=0`): the runtime retries and records each attempt.

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

    def __repr__(self) -> str:
        return f"AnthropicProvider(base_url={self.base_url!r}, api_key_env={self.api_key_env!r})"

    def check_credentials(self) -> None:
        """Fail now, with MissingCredentials, rather than at the first call."""
        self._key()

    def complete(self, request: LLMRequest) -> LLMResponse:
        if request.provider != self.name:
            raise PermanentLLMError(f"anthropic: request is for provider {request.provider!r}")
        client = self._clients.get(self._key())
        try:
            message = client.messages.create(**build_params(request))
        except anthropic.APIStatusError as exc:
            raise from_http_status(self.name, exc.status_code, exc.response.headers, exc.body,
                                   fallback=exc.message) from None
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


def build_params(request: LLMRequest) -> dict[str, Any]:
    """The `messages.create` keyword arguments for `request` (exactly what goes on the wire)."""
    params: dict[str, Any] = {
        "model": request.model or DEFAULT_MODEL,
        "max_tokens": request.max_tokens,
        "messages": [{"role": m.role, "content": m.content} for m in request.messages],
    }
    if request.system:
        if request.cache_prefix:
            params["system"] = [{"type": "text", "text": request.system, "cache_control": EPHEMERAL}]
        else:
            params["system"] = request.system
    schema = request.response_schema
    if schema is not None:
        tool: dict[str, Any] = {"name": schema.name, "input_schema": schema.json_schema}
        if schema.description:
            tool["description"] = schema.description
        if request.cache_prefix and not request.system:
            tool["cache_control"] = EPHEMERAL
        params["tools"] = [tool]
        params["tool_choice"] = {"type": "tool", "name": schema.name}
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
