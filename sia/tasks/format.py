"""The task folder format: what a task is on disk, and the pydantic models of its `task.toml`.

A task is a folder::

    task.toml               the spec below (TaskSpec)
    public/train.jsonl      one JSON object per line: "id" plus public fields (e.g. "question",
    public/dev.jsonl        "options"); what agents and harnesses may see
    private/test.jsonl      the held-out samples (same public fields), never shown to any agent
    private/labels.jsonl    {"id": ..., "label": ...} for every train, dev and test sample;
                            labels never leave the evaluator but those `public_labels` names
    evaluator.py            def reward(sample, prediction, label) -> float | (float, failure_kind)
                            optional def metrics(samples, predictions, labels, rewards) -> {name: float}
    reference_harness.py    optional: a harness (`solve(sample, model) -> str`) agents may read
    task.py                 optional: def build(data, out, params) writes public/ and private/
                            into `out` from a user data file ([data] required = true);
                            def pretraining_corpus(samples, seed) -> list[str] (public text only)

Labels are public only where `task.toml` says so: `public_labels` names the splits whose labels
agents and harnesses may see (default `["train"]`, as in ordinary ML practice; `[]` keeps every
label with the evaluator). Only "train" may be named: dev labels stay with the evaluator (agents
see dev scores and rewards only) and test labels are used once, at the end. A public label
reaches the Meta and Feedback Agents through their `list_train_examples` tool and a harness
through the read-only JSONL file named by `SIA_TRAIN_EXAMPLES` (`Task.public_examples`); a
public split's fields are still refused when they hold its label, since a harness's `sample`
never carries one.

`reward` is called only for answered predictions: an unanswered one (None or only
whitespace) scores the worst value of the reward range without reaching the evaluator, so
no task can count it as anything but wrong.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

RewardKind = Literal["binary", "categorical", "continuous"]
REWARD_KINDS: tuple[str, ...] = ("binary", "categorical", "continuous")

TASK_FILE = "task.toml"
EVALUATOR_FILE = "evaluator.py"
REFERENCE_HARNESS_FILE = "reference_harness.py"
BUILDER_FILE = "task.py"
PUBLIC_SPLITS: tuple[str, ...] = ("train", "dev")
"""Splits agents may see; "test" is held out."""
SPLIT_FILES = {"train": "public/train.jsonl", "dev": "public/dev.jsonl", "test": "private/test.jsonl"}
LABELS_FILE = "private/labels.jsonl"
LABEL_SPLITS_THAT_MAY_BE_PUBLIC: tuple[str, ...] = ("train",)
"""Splits whose labels `public_labels` may name; dev and test labels never leave the evaluator."""
_WHY_LABELS_STAY_PRIVATE = {
    "dev": "dev labels stay with the evaluator: agents see dev scores and rewards only",
    "test": "test labels are used once, at the end, to score the final answer",
}
LABEL_FIELD_NAMES = frozenset({"label", "labels", "answer", "answers", "gold", "target"})
"""Public fields with these names are refused: they would hand the label to the harness."""


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RewardSpec(_Strict):
    """Shape of the per-episode reward, which steers the choice of training algorithm."""

    kind: RewardKind
    range: tuple[float, float] = (0.0, 1.0)
    """Inclusive [min, max]; rewards outside it are clipped into it."""
    higher_is_better: bool = True

    @model_validator(mode="after")
    def _range_is_an_interval(self) -> RewardSpec:
        low, high = self.range
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError(f"reward range must be finite numbers, got [{low}, {high}]")
        if low >= high:
            raise ValueError(f"reward range min must be below max, got [{low}, {high}]")
        if self.kind == "binary" and (low, high) != (0.0, 1.0):
            raise ValueError(f"a binary reward has range [0, 1], got [{low}, {high}]")
        return self

    @property
    def worst(self) -> float:
        """What an unanswered or failed episode scores."""
        return self.range[0] if self.higher_is_better else self.range[1]

    def clip(self, value: float) -> float:
        return min(self.range[1], max(self.range[0], value))


class Limits(_Strict):
    """Per-episode limits for running a harness (and for evaluating a code answer)."""

    wall_s: float = Field(default=30.0, gt=0)
    cpu_s: int = Field(default=30, gt=0)
    memory_mb: int = Field(default=1024, gt=0)


class SplitSizes(_Strict):
    """Expected split sizes; when given they are checked against the files."""

    train: int | None = Field(default=None, ge=0)
    dev: int | None = Field(default=None, ge=0)
    test: int | None = Field(default=None, ge=0)


class DataSpec(_Strict):
    """A task built from a file the user provides (`--data`), e.g. LawBench's 3-3.json."""

    required: bool = False
    description: str = ""


class TaskSpec(_Strict):
    """The contents of `task.toml`."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    description: str = Field(min_length=1)
    """What the task is, for the agents (shown to Meta and Feedback)."""
    reward: RewardSpec
    limits: Limits = Limits()
    splits: SplitSizes = SplitSizes()
    rollouts_per_generation: int = Field(default=0, ge=0)
    """Train samples rolled out per generation (mode WH) as training data; capped at the train size."""
    seed: int = 0
    """Seed of anything the task derives pseudo-randomly (e.g. its pretraining corpus)."""
    data: DataSpec = DataSpec()
    build: dict[str, Any] = {}
    """Parameters handed to task.py's `build(data, out, params)`."""
    public_labels: tuple[str, ...] = ("train",)
    """Splits whose labels agents and harnesses may see (see the module docstring)."""

    @field_validator("public_labels")
    @classmethod
    def _only_train_labels_are_public(cls, splits: tuple[str, ...]) -> tuple[str, ...]:
        for split in splits:
            if split in _WHY_LABELS_STAY_PRIVATE:
                raise ValueError(f"{split!r} labels cannot be public: {_WHY_LABELS_STAY_PRIVATE[split]}")
            if split not in LABEL_SPLITS_THAT_MAY_BE_PUBLIC:
                raise ValueError(f"unknown split {split!r}: only \"train\" labels may be public")
        return tuple(dict.fromkeys(splits))
