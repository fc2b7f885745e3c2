"""The reward shape a Feedback handler shows and records: what the trainer would see.

`decide` is pure and cannot score sampled completions, so the feedback request carries
the episodes (dev, and the generation's train rollouts under "rollouts") and the
handler classifies the per-completion rewards of the ones a weight update would learn
from. The request's own `reward_shape` (per-episode dev scores) is what recorded runs
were shown; it is replaced here whenever the handler can score completions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sia.core.effect_models import EpisodeRef, FeedbackRequest, RewardShapeView
from sia.store.blobs import BlobStore

RewardShapeOf = Callable[[Sequence[EpisodeRef], BlobStore], dict[str, Any]]
"""Episodes of a request (with trajectory hashes) → the shape of their completion rewards."""


def training_pool(request: FeedbackRequest) -> Sequence[EpisodeRef]:
    """The episodes a weight update decided on `request` would train on (as `decide` picks them)."""
    return request.rollouts or request.episodes


def with_trainer_view(request: FeedbackRequest, shape_of: RewardShapeOf | None,
                      blobs: BlobStore) -> tuple[FeedbackRequest, dict[str, Any] | None]:
    """`request` with its reward_shape replaced by the trainer's view, and that view (None
    when the handler cannot score completions)."""
    if shape_of is None:
        return request, None
    shape = shape_of(training_pool(request), blobs)
    view = RewardShapeView(kind=shape["kind"], recommended=shape["recommended"], reason=shape["reason"])
    return request.model_copy(update={"reward_shape": view}), shape
