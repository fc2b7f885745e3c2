"""Which effect handlers serve a run, chosen from its recorded config, so `resume`,
`fork` and `replay` of a run use the same backends it was started with."""

from __future__ import annotations

from sia.effects.base import HandlerRegistry
from sia.events.types import RunConfig, TaskSnapshot


class BackendUnavailable(ValueError):
    pass


def handlers_for(config: RunConfig, task: TaskSnapshot | None = None) -> HandlerRegistry:
    roles = {config.meta, config.feedback, config.target, config.trainer}
    if roles == {"deterministic"}:
        from sia.effects.deterministic import deterministic_registry

        return deterministic_registry()
    raise BackendUnavailable(
        f"no handlers for meta={config.meta} feedback={config.feedback} target={config.target} "
        f"trainer={config.trainer}: only the deterministic backends are wired in so far"
    )
