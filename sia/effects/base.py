"""The effect handler interface: the only place nondeterminism enters a run.

A handler turns one typed request (its kind's model in `sia.core.effect_models`, parsed
from the recorded JSON by the runtime) into its kind's result model plus what it cost. It never
appends events itself; it may `report` a progress fact (a submitted training job) that
the runtime records at once, so a crash can re-attach instead of re-submitting.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sia.core.effect_models import EffectAnswer
from sia.core.events.types import BaseEvent, Usage
from sia.core.reducers.state import AgentStep
from sia.store.blobs import BlobStore


class TransientEffectError(Exception):
    """Worth retrying (rate limit, 5xx, a lost connection); `retry_after` in seconds."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EffectError(Exception):
    """The effect failed for good; the message is recorded in EffectFailed."""


@dataclass(frozen=True)
class EffectResult:
    result: EffectAnswer
    usage: Usage = Usage()


@dataclass
class EffectContext:
    run_id: str
    effect_id: str
    kind: str
    seed: int
    attempt: int
    blobs: BlobStore
    home: Any
    job_id: str | None = None
    call_id: str | None = None
    """Set when a previous attempt recorded TrainingJobSubmitted: re-attach, don't re-submit."""
    journal: tuple[AgentStep, ...] = ()
    """The steps an earlier attempt of this effect recorded (AgentStepRecorded): an agent
    replays them from their blobs instead of asking the model or running the tool again."""
    report: Callable[[BaseEvent], object] = field(default=lambda event: None)


class EffectHandler(Protocol):
    kind: str

    def run(self, request: Any, ctx: EffectContext) -> EffectResult:
        """`request` is the `EffectRequest` subclass of this handler's kind."""


class HandlerRegistry:
    """Which handler serves each effect kind in this process."""

    def __init__(self, handlers: dict[str, EffectHandler] | None = None,
                 name: str = "custom", *, owns_handlers: bool = True) -> None:
        self.handlers: dict[str, EffectHandler] = dict(handlers or {})
        self.name = name
        self.owns_handlers = owns_handlers
        self._resources: list[Callable[[], None]] = []

    def borrowed(self) -> HandlerRegistry:
        """The same handlers for a nested runtime (a search's branch): closing it releases
        nothing, as the handlers' owner is still running."""
        return HandlerRegistry(self.handlers, name=self.name, owns_handlers=False)

    def register(self, handler: EffectHandler) -> None:
        self.handlers[handler.kind] = handler

    def close_with(self, release: Callable[[], None]) -> None:
        """Also release a resource several handlers share when the registry closes."""
        self._resources.append(release)

    def close(self) -> None:
        """Release what handlers hold across effects (model gateways, servers, processes)."""
        if not self.owns_handlers:
            return
        for handler in self.handlers.values():
            close = getattr(handler, "close", None)
            if callable(close):
                close()
        for release in self._resources:
            release()

    def get(self, kind: str) -> EffectHandler:
        try:
            return self.handlers[kind]
        except KeyError:
            raise EffectError(f"no handler registered for effect kind {kind!r} "
                              f"(registry {self.name!r} has {sorted(self.handlers)})") from None
