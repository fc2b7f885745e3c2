"""LLM providers for the Meta and Feedback agents: request/response values, errors, registry.

SDKs are imported only by the provider modules, on first use.
"""

from sia.llm.base import Provider, get_provider, provider_names, register_provider
from sia.llm.errors import MissingCredentials, PermanentLLMError, TransientLLMError
from sia.llm.types import (
    DEFAULT_MODELS,
    LLMRequest,
    LLMResponse,
    Message,
    ResponseSchema,
    Usage,
)

__all__ = [
    "DEFAULT_MODELS", "LLMRequest", "LLMResponse", "Message", "MissingCredentials",
    "PermanentLLMError", "Provider", "ResponseSchema", "TransientLLMError", "Usage",
    "get_provider", "provider_names", "register_provider",
]
