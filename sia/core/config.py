"""Run configuration: defaults, `sia.toml`, and `key=value` overrides (CLI and forks).

Overrides are validated against RunConfig before anything is recorded, so a bad
`--set` is a clear error and never a half-written fork.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from sia.core.events.types import RunConfig

OVERRIDE_KEYS: dict[str, tuple[str, ...]] = {
    "mode": ("mode",),
    "max_gen": ("max_generations",),
    "max_generations": ("max_generations",),
    "patience": ("patience",),
    "seed": ("seed",),
    "meta": ("meta",),
    "meta.provider": ("meta",),
    "feedback": ("feedback",),
    "feedback.provider": ("feedback",),
    "feedback.force": ("feedback_force",),
    "target": ("target",),
    "trainer": ("trainer",),
    "budget.tokens": ("budget", "tokens"),
    "budget.dollars": ("budget", "dollars"),
    "budget.wall_s": ("budget", "wall_s"),
    "budget.gpu_s": ("budget", "gpu_s"),
    "budget.episodes": ("budget", "episodes"),
    "candidates": ("search", "candidates"),
    "search.candidates": ("search", "candidates"),
    "search.parents": ("search", "parents"),
    "search.explore": ("search", "explore"),
    "search.good_enough": ("search", "good_enough"),
    "agent.max_turns": ("agent", "max_turns"),
    "agent.max_tokens": ("agent", "max_tokens"),
    "agent.max_dollars": ("agent", "max_dollars"),
    "max_meta_attempts": ("max_meta_attempts",),
    "max_effect_attempts": ("max_effect_attempts",),
    "sandbox": ("sandbox",),
}


PRICES_PER_MTOK: dict[str, tuple[float, float]] = {
    "claude-sonnet-4-6": (3.0, 15.0),
    "claude-opus-4-1": (15.0, 75.0),
    "claude-haiku-4-5": (1.0, 5.0),
    "deterministic": (4.0, 4.0),
}
"""USD per million (input, output) tokens; the ledger's dollars come from here."""


def dollars(model: str, tokens_in: int, tokens_out: int) -> float:
    """Cost of a call; a model missing from the table costs 0 (and says so in its name)."""
    price_in, price_out = PRICES_PER_MTOK.get(model, (0.0, 0.0))
    return (tokens_in * price_in + tokens_out * price_out) / 1_000_000


class ConfigError(ValueError):
    """A configuration value or override that cannot be used; the message says which."""


def parse_assignments(items: list[str]) -> dict[str, str]:
    overrides: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not key=value")
        overrides[key.strip()] = value.strip()
    return overrides


def apply_overrides(config: RunConfig, overrides: dict[str, str]) -> RunConfig:
    data: dict[str, Any] = config.model_dump()
    for key, value in overrides.items():
        path = OVERRIDE_KEYS.get(key)
        if path is None:
            raise ConfigError(f"unknown setting {key!r}; known: {', '.join(sorted(OVERRIDE_KEYS))}")
        target = data
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = None if value.lower() in ("", "none", "null") else value
    try:
        updated = RunConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid settings: {problems}") from None
    return updated
