"""A training job's full recipe, and its identity.

`TrainingSpec` names everything that determines an adapter: the algorithm and its
hyper-parameters, the base model (id and content hash), the adapter it starts from, the
LoRA shape, the training data (sha256 of the rollouts JSONL) and the train settings (seed,
precision). `job_id` is the sha256 of its canonical JSON: the idempotency key a trainer
(local subprocess or Modal) keys its job directory by, so submitting the same recipe
twice never trains twice.

This module imports no torch: the runtime builds specs without loading a model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sia.core.events.canonical import canonical_json, content_hash, sha256_hex

SPEC_VERSION = 1
Precision = Literal["fp32", "bf16"]


class LoraShape(BaseModel):
    """The LoRA part of a spec (mirrors `sia.train.algorithms.LoraSpec`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rank: int = Field(32, ge=1)
    alpha: int = Field(64, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: str | tuple[str, ...] = "all-linear"

    @field_validator("target_modules", mode="before")
    @classmethod
    def _sorted_modules(cls, value: Any) -> Any:
        # A list of module names is a set: its order must not change the job id.
        if isinstance(value, (list, tuple, set, frozenset)):
            return tuple(sorted(value))
        return value

    def to_lora_spec(self) -> Any:
        from sia.train.algorithms import LoraSpec

        return LoraSpec(rank=self.rank, alpha=self.alpha, dropout=self.dropout,
                        target_modules=self.target_modules)


class TrainingSpec(BaseModel):
    """Everything that determines an adapter. Frozen; `job_id` is its content hash."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    spec_version: int = SPEC_VERSION
    algorithm: str
    params: dict[str, Any] = Field(default_factory=dict)
    base_model_id: str
    base_model_hash: str
    initial_adapter_hash: str | None = None
    lora: LoraShape = LoraShape()
    data_hash: str
    seed: int = 0
    precision: Precision = "fp32"

    @field_validator("params")
    @classmethod
    def _canonical_params(cls, value: dict[str, Any]) -> dict[str, Any]:
        canonical_json(value)  # refuses NaN, infinities and non-JSON values up front
        return value

    @property
    def job_id(self) -> str:
        return content_hash(self.canonical())

    def canonical(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_json(self) -> str:
        return canonical_json(self.canonical())

    @classmethod
    def from_json(cls, text: str) -> TrainingSpec:
        return cls.model_validate_json(text)


def default_precision(device: str | None = None) -> Precision:
    """bf16 on a GPU, fp32 on CPU. The spec records the choice, so it is part of job_id."""
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return "bf16" if device.startswith("cuda") else "fp32"


def file_sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def data_hash(rollouts_path: Path) -> str:
    """The `data_hash` of a rollouts JSONL file: sha256 of its bytes."""
    return file_sha256(Path(rollouts_path))


def text_hash(text: str) -> str:
    return sha256_hex(text)
