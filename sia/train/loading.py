"""Load a base model for LoRA training on whatever this machine has.

CPU: float32, one device, exactly what the deterministic tiny-model tests train on.
One GPU: bf16 on it. Several GPUs (a Modal container sized by `sia.train.gpu_plan`): bf16
with the layers spread over all of them (`device_map="auto"`); a layer that would spill
to CPU or disk is an error, not a silent slowdown. An MXFP4 checkpoint (gpt-oss) is
dequantized to bf16 on load, because transformers cannot train MXFP4 weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sia.train.gpu_plan import is_mxfp4


class ModelDoesNotFit(RuntimeError):
    """The GPUs of this container cannot hold the model: it would spill to CPU or disk."""


def read_config(model_dir: Path) -> dict[str, Any]:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir} has no config.json: not a transformers model directory")
    return json.loads(path.read_text(encoding="utf-8"))


def load_kwargs(config: dict[str, Any], *, cuda: bool, gpu_count: int) -> dict[str, Any]:
    """The `from_pretrained` keyword arguments for this model on this machine (pure)."""
    import torch

    kwargs: dict[str, Any] = {"dtype": torch.bfloat16 if cuda else torch.float32}
    if cuda:
        kwargs["device_map"] = "auto" if gpu_count > 1 else {"": 0}
    if is_mxfp4(config):
        # A lazy export that transformers' static __init__ does not declare.
        from transformers import Mxfp4Config  # type: ignore[attr-defined]

        kwargs["quantization_config"] = Mxfp4Config(dequantize=True)
    return kwargs


def load_base_model(model_dir: Path, *, cuda: bool) -> Any:
    """The base causal LM from `model_dir`, ready to wrap in a LoRA adapter."""
    import torch
    from transformers import AutoModelForCausalLM

    gpu_count = torch.cuda.device_count() if cuda else 0
    kwargs = load_kwargs(read_config(model_dir), cuda=cuda, gpu_count=gpu_count)
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    check_placement(getattr(model, "hf_device_map", None), gpu_count)
    return model


def check_placement(device_map: dict[str, Any] | None, gpu_count: int) -> None:
    """ModelDoesNotFit if accelerate put any module on CPU or disk instead of a GPU."""
    spilled = sorted({str(d) for d in (device_map or {}).values() if str(d) in ("cpu", "disk")})
    if spilled:
        raise ModelDoesNotFit(f"the model does not fit on {gpu_count} GPU(s): modules went to "
                              f"{', '.join(spilled)}; run it with more GPUs (sia.train.gpu_plan)")
