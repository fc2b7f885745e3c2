"""What an LLM call cost in dollars, from its token usage and the price table in `sia.core.config`.

Cache writes and reads are priced relative to input tokens at Anthropic's rates for the
5-minute cache; a model missing from the price table costs 0, as it does in the ledger.
"""

from __future__ import annotations

from sia.core.config import dollars
from sia.llm.types import Usage

CACHE_WRITE_FACTOR = 1.25
CACHE_READ_FACTOR = 0.1
"""Prompt-cache prices relative to input tokens (Anthropic's 5-minute cache)."""


def usage_dollars(model: str, usage: Usage) -> float:
    """Dollars for `usage` on `model`: uncached input, output, cache writes and reads."""
    return (dollars(model, usage.input_tokens, usage.output_tokens)
            + CACHE_WRITE_FACTOR * dollars(model, usage.cache_write_tokens, 0)
            + CACHE_READ_FACTOR * dollars(model, usage.cache_read_tokens, 0))
