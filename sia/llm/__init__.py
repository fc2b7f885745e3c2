"""LLM providers for the Meta and Feedback agents: request/response values, errors, registry.

`complete(LLMRequest) -> LLMResponse` answers one (optionally structured) request;
`next_turn(TurnRequest) -> Turn` takes one assistant turn of a tool-using conversation.
SDKs are imported only by the provider modules, on first use.
"""

from sia.llm.base import Provider, ToolUseProvider, get_provider, provider_names, register_provider
from sia.llm.errors import MissingCredentials, PermanentLLMError, TransientLLMError
from sia.llm.pricing import usage_dollars
from sia.llm.turns import (
    AssistantMessage,
    ChatMessage,
    MalformedToolCall,
    Reasoning,
    StopReason,
    ToolCall,
    ToolChoice,
    ToolResult,
    ToolResultsMessage,
    ToolSpec,
    Turn,
    TurnRequest,
    UserMessage,
)
from sia.llm.types import (
    DEFAULT_MODELS,
    LLMRequest,
    LLMResponse,
    Message,
    ResponseSchema,
    Usage,
)

__all__ = [
    "DEFAULT_MODELS", "AssistantMessage", "ChatMessage", "LLMRequest", "LLMResponse",
    "MalformedToolCall", "Message", "MissingCredentials", "PermanentLLMError", "Provider",
    "Reasoning", "ResponseSchema", "StopReason", "ToolCall", "ToolChoice", "ToolResult",
    "ToolResultsMessage", "ToolSpec", "ToolUseProvider", "TransientLLMError", "Turn",
    "TurnRequest", "Usage", "UserMessage", "get_provider", "provider_names", "register_provider",
    "usage_dollars",
]
