"""How many H100s a LoRA job on a model needs, from the model's config.json alone (pure).

The trainer runs in one process and spreads the base model's layers over the GPUs of one
Modal container (`device_map="auto"`), so every GPU holds a slice of the weights and the
activations of its own layers. Memory needed:

    weights    = parameters x 2 bytes        (bf16; MXFP4 checkpoints are dequantized to
                                              bf16 for training, so the file size does not
                                              count, the parameter count does)
    lora_state = lora_parameters x 16 bytes  (fp32 weight 4 + gradient 4 + Adam m, v 8)
    gpus       = smallest of 1, 2, 4, 8 with  weights + lora_state <= gpus x 80 GB x 0.6

The 40% of every GPU left free is for the activations of the forward batch (kept for the
backward pass), the CUDA context and allocator fragmentation. With it,
gpt-oss-20b (20.9B parameters, 41.8 GB) gets 1 H100 and gpt-oss-120b (116.8B, 233.7 GB)
gets 8, the GPU counts of the published LoRA recipes for both (NeMo Megatron-Bridge
`gpt_oss_20b_peft_1gpu_h100_bf16_config` / `gpt_oss_120b_peft_8gpu_h100_bf16_config`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

GPU_TYPE = "H100"
GPU_MEMORY_GB = 80.0
USABLE_FRACTION = 0.6
"""Share of each GPU's memory given to weights and LoRA state; the rest is headroom."""
GPU_COUNTS = (1, 2, 4, 8)
"""The H100 counts the Modal app deploys a function for (Modal attaches at most 8 per container)."""
USD_PER_GPU_HOUR = 3.9492
"""Modal's list price for one H100, $0.001097 per second (modal.com/pricing, May 2026)."""
BF16_BYTES = 2
LORA_STATE_BYTES = 16
DEFAULT_LORA_RANK = 32


class ModelTooLarge(ValueError):
    """No supported GPU count holds the model."""


@dataclass(frozen=True)
class GpuPlan:
    """The GPUs one training job runs on, and why."""

    gpu: str
    gpus: int
    parameters: int
    lora_parameters: int
    weights_gb: float
    lora_state_gb: float
    needed_gb: float
    usable_gb: float
    usd_per_hour: float
    dequantize_mxfp4: bool

    @property
    def modal_gpu(self) -> str:
        """The `gpu=` argument of a Modal function: "H100" or "H100:<n>"."""
        return self.gpu if self.gpus == 1 else f"{self.gpu}:{self.gpus}"

    def usd(self, hours: float) -> float:
        return round(self.usd_per_hour * hours, 2)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _int(config: dict[str, Any], *names: str, default: int | None = None) -> int:
    for name in names:
        value = config.get(name)
        if value is not None:
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"config.json field {name!r} must be a non-negative integer, got {value!r}")
            return value
    if default is None:
        raise ValueError(f"config.json has none of {', '.join(names)}: cannot size the model")
    return default


def _dims(config: dict[str, Any]) -> dict[str, int]:
    hidden = _int(config, "hidden_size", "n_embd", "d_model")
    heads = _int(config, "num_attention_heads", "n_head")
    head_dim = _int(config, "head_dim", default=hidden // max(heads, 1))
    return {
        "vocab": _int(config, "vocab_size"),
        "hidden": hidden,
        "layers": _int(config, "num_hidden_layers", "n_layer"),
        "q": heads * head_dim,
        "kv": _int(config, "num_key_value_heads", default=heads) * head_dim,
        "inner": _int(config, "intermediate_size", "n_inner", default=4 * hidden),
        "experts": _int(config, "num_local_experts", "num_experts", default=0),
    }


def parameter_count(config: dict[str, Any]) -> int:
    """Weights of a decoder-only transformer from its config dims: embeddings, output
    layer (unless tied), attention projections and the MLP (times the experts of an MoE)
    in every layer. Norms, biases and routers (< 0.1%) are left out."""
    d = _dims(config)
    embeddings = d["vocab"] * d["hidden"] * (1 if config.get("tie_word_embeddings") else 2)
    attention = 2 * d["hidden"] * d["q"] + 2 * d["hidden"] * d["kv"]
    mlp = 3 * d["hidden"] * d["inner"] * max(d["experts"], 1)
    return embeddings + d["layers"] * (attention + mlp)


def lora_parameter_count(config: dict[str, Any], rank: int = DEFAULT_LORA_RANK) -> int:
    """LoRA weights for peft's "all-linear": rank x (in + out) for every nn.Linear of a
    layer. MoE experts are fused 3-d parameters in transformers 5 (gpt-oss's GptOssExperts),
    not nn.Linear, so an MoE layer adapts its attention projections only."""
    d = _dims(config)
    attention = 2 * (d["hidden"] + d["q"]) + 2 * (d["hidden"] + d["kv"])
    mlp = 0 if d["experts"] else 3 * (d["hidden"] + d["inner"])
    return rank * d["layers"] * (attention + mlp)


def is_mxfp4(config: dict[str, Any]) -> bool:
    quantization = config.get("quantization_config") or {}
    return isinstance(quantization, dict) and quantization.get("quant_method") == "mxfp4"


def plan_for(config: dict[str, Any], *, lora_rank: int = DEFAULT_LORA_RANK) -> GpuPlan:
    """The smallest supported H100 count that holds the model in bf16 plus its LoRA state."""
    parameters = parameter_count(config)
    lora = lora_parameter_count(config, lora_rank)
    weights_gb = parameters * BF16_BYTES / 1e9
    lora_gb = lora * LORA_STATE_BYTES / 1e9
    needed = weights_gb + lora_gb
    per_gpu = GPU_MEMORY_GB * USABLE_FRACTION
    fits = [n for n in GPU_COUNTS if n >= math.ceil(needed / per_gpu)]
    if not fits:
        raise ModelTooLarge(f"{parameters / 1e9:.1f}B parameters need {needed:.0f} GB in bf16, more than "
                            f"{max(GPU_COUNTS)} x {GPU_TYPE} hold at {USABLE_FRACTION:.0%} "
                            f"({max(GPU_COUNTS) * per_gpu:.0f} GB)")
    gpus = fits[0]
    return GpuPlan(gpu=GPU_TYPE, gpus=gpus, parameters=parameters, lora_parameters=lora,
                   weights_gb=round(weights_gb, 1), lora_state_gb=round(lora_gb, 2),
                   needed_gb=round(needed, 1), usable_gb=round(gpus * per_gpu, 1),
                   usd_per_hour=round(gpus * USD_PER_GPU_HOUR, 4), dequantize_mxfp4=is_mxfp4(config))
