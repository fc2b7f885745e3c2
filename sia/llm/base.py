"""The provider interface and the registry that builds providers by name.

Providers are imported only when first asked for, so importing `sia.llm` (and so the
CLI) never pays for loading an SDK. Settings are non-secret (base URL, the *name* of
the key's environment variable, timeouts); a provider reads its key from the
environment at call time and never accepts one as an argument.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from sia.llm.turns import Turn, TurnRequest
from sia.llm.types import LLMRequest, LLMResponse


@runtime_checkable
class Provider(Protocol):
    """Turns an LLMRequest into an LLMResponse or raises one of the `sia.llm.errors` kinds."""

    name: str

    def complete(self, request: LLMRequest) -> LLMResponse: ...

    def check_credentials(self) -> None:
        """Raise MissingCredentials now if `complete` would, so a run can refuse to start."""
        ...


@runtime_checkable
class ToolUseProvider(Provider, Protocol):
    """A provider that can also take one assistant turn of a tool-using conversation.

    `next_turn` raises the same `sia.llm.errors` kinds as `complete`, plus
    `MalformedToolCall` when the model's turn holds a call that cannot be run.
    """

    def next_turn(self, request: TurnRequest) -> Turn: ...


ProviderFactory = Callable[..., Provider]

_BUILTIN: dict[str, str] = {
    "anthropic": "sia.llm.anthropic_provider:AnthropicProvider",
    "openai": "sia.llm.openai_provider:OpenAIProvider",
}
_REGISTERED: dict[str, ProviderFactory] = {}


def register_provider(name: str, factory: ProviderFactory) -> None:
    """Make `get_provider(name)` build providers with `factory(**settings)`."""
    _REGISTERED[name] = factory


def provider_names() -> list[str]:
    return sorted({*_BUILTIN, *_REGISTERED})


def get_provider(name: str, **settings: Any) -> Provider:
    """A provider named `name`, configured by `settings` (see each provider's constructor)."""
    factory = _REGISTERED.get(name)
    if factory is None:
        target = _BUILTIN.get(name)
        if target is None:
            raise ValueError(f"unknown LLM provider {name!r}; known: {', '.join(provider_names())}")
        module_name, _, attribute = target.partition(":")
        factory = getattr(importlib.import_module(module_name), attribute)
    return factory(**settings)
