"""What an LLM call asks and what it answered, as frozen, canonical-JSON-ready values.

A request is hashed into the effect cache key and a response is recorded in an event,
so both must round-trip through `model_dump(mode="json")` unchanged and may hold no
secret: there is deliberately no field for an API key or a header, and unknown fields
are refused. Token counts follow Anthropic's split (`input_tokens` excludes cached
tokens) for every provider, so costs add up the same way whichever served the call.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sia.core.events.canonical import canonical_json
from sia.llm.errors import MissingCredentials, PermanentLLMError, TransientLLMError

__all__ = [
    "DEFAULT_MODELS", "Frozen", "LLMRequest", "LLMResponse", "Message", "MissingCredentials", "ProviderRequest",
    "PermanentLLMError", "ResponseSchema", "TransientLLMError", "Usage",
]

DEFAULT_MODELS: dict[str, str] = {"anthropic": "claude-sonnet-4-6"}
"""The model a request names when it names none; filled in on the request so it is hashed."""


class Frozen(BaseModel):
    """The base of every value the providers exchange: immutable, strict, finite."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class Message(Frozen):
    role: Literal["user", "assistant"]
    content: str


class ResponseSchema(Frozen):
    """A JSON schema the answer must follow, and the name it travels under (tool / format name)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    json_schema: dict[str, Any]
    description: str = ""

    @model_validator(mode="after")
    def _object_schema(self) -> ResponseSchema:
        if self.json_schema.get("type") != "object":
            raise ValueError("response schema must describe a JSON object (\"type\": \"object\"): "
                             "tool inputs and json_schema formats are objects")
        return self


class ProviderRequest(Frozen):
    """What every request names: the provider, and the model (its default when unnamed)."""

    provider: str = "anthropic"
    model: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_model(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("model"):
            provider = data.get("provider", "anthropic")
            if provider in DEFAULT_MODELS:
                data = {**data, "model": DEFAULT_MODELS[provider]}
        return data


class LLMRequest(ProviderRequest):
    """One completion request. `seed` and `temperature` are part of the cache identity even
    where a provider cannot honour them (Anthropic's current API takes neither)."""

    system: str = ""
    messages: tuple[Message, ...] = Field(min_length=1)
    max_tokens: int = Field(default=4096, gt=0)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    response_schema: ResponseSchema | None = None
    seed: int | None = None
    cache_prefix: bool = False
    """Mark the system prompt (and tools before it) as a cacheable prefix."""



class Usage(Frozen):
    """Tokens one call cost. Total input is `input_tokens + cache_read_tokens + cache_write_tokens`."""

    input_tokens: int = Field(default=0, ge=0)
    output_tokens: int = Field(default=0, ge=0)
    cache_read_tokens: int = Field(default=0, ge=0)
    cache_write_tokens: int = Field(default=0, ge=0)

    @property
    def total_input_tokens(self) -> int:
        return self.input_tokens + self.cache_read_tokens + self.cache_write_tokens

    def __add__(self, other: Usage) -> Usage:
        """Field by field, so the usage of a conversation is the sum of its turns'."""
        return Usage(input_tokens=self.input_tokens + other.input_tokens,
                     output_tokens=self.output_tokens + other.output_tokens,
                     cache_read_tokens=self.cache_read_tokens + other.cache_read_tokens,
                     cache_write_tokens=self.cache_write_tokens + other.cache_write_tokens)


class LLMResponse(Frozen):
    """What came back. `structured` is set exactly when the request carried a response schema."""

    text: str
    structured: dict[str, Any] | None = None
    usage: Usage = Usage()
    model: str
    stop_reason: str | None = None
    raw_id: str = ""

    @field_validator("structured")
    @classmethod
    def _canonical(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        """Refuse what cannot be recorded (NaN, infinities), here rather than at append time."""
        if value is not None:
            canonical_json(value)
        return value
