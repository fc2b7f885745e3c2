"""The training example: one sampled completion of one prompt, with its reward.

Rollouts are what a weight update learns from, taken from recorded trajectories, so
they carry exact token ids (never re-tokenized text) and, when the sampler reported
them, the log-probabilities the tokens were sampled with (PPO's behaviour policy).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Rollout(BaseModel):
    """One completion. `completion_ids` should end with the eos id when sampling stopped at it,
    so training also teaches where to stop. Rollouts of the same prompt share `group`.

    `logprobs` are the sampler's, one per completion token; an entry is None where the
    sampler did not report one (the appended eos), and the trainer scores that token
    itself. `temperature` and `top_p` are those the completion was sampled with: the
    trainer scores tokens under the same distribution, so its ratio starts at 1.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt_ids: list[int] = Field(min_length=1)
    completion_ids: list[int]
    reward: float
    group: str
    logprobs: list[float | None] | None = None
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _logprobs_match(self) -> "Rollout":
        if self.logprobs is not None and len(self.logprobs) != len(self.completion_ids):
            raise ValueError(f"{len(self.logprobs)} logprobs for {len(self.completion_ids)} completion tokens")
        return self


def write_rollouts(path: Path, rollouts: Iterable[Rollout]) -> None:
    """One JSON object per line, keys sorted, so equal rollouts give equal bytes."""
    lines = [json.dumps(r.model_dump(), sort_keys=True, separators=(",", ":")) + "\n" for r in rollouts]
    Path(path).write_text("".join(lines), encoding="utf-8")


def read_rollouts(path: Path) -> list[Rollout]:
    text = Path(path).read_text(encoding="utf-8")
    return [Rollout.model_validate_json(line) for line in text.splitlines() if line.strip()]


def group_indices(rollouts: list[Rollout]) -> list[list[int]]:
    """Indices of the rollouts of each group, groups in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for index, rollout in enumerate(rollouts):
        groups.setdefault(rollout.group, []).append(index)
    return list(groups.values())
