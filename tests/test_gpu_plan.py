"""GPU sizing from config.json, on the real gpt-oss configs and on models built here.

GPT_OSS_20B / GPT_OSS_120B are the config.json files of openai/gpt-oss-20b and
openai/gpt-oss-120b on the Hugging Face hub (the 120B differs in num_hidden_layers,
num_local_experts and layer_types only). The model card gives 20.91B and 116.83B
parameters; the published LoRA recipes train them on 1 and 8 H100s.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sia.train.gpu_plan import (
    GPU_COUNTS,
    USD_PER_GPU_HOUR,
    ModelTooLarge,
    is_mxfp4,
    lora_parameter_count,
    parameter_count,
    plan_for,
)

_ATTENTION = ["sliding_attention", "full_attention"]
GPT_OSS_20B = json.loads("""{
  "architectures": ["GptOssForCausalLM"], "attention_bias": true, "attention_dropout": 0.0,
  "eos_token_id": 200002, "experts_per_token": 4, "head_dim": 64, "hidden_act": "silu",
  "hidden_size": 2880, "initial_context_length": 4096, "initializer_range": 0.02,
  "intermediate_size": 2880, "max_position_embeddings": 131072, "model_type": "gpt_oss",
  "num_attention_heads": 64, "num_experts_per_tok": 4, "num_hidden_layers": 24,
  "num_key_value_heads": 8, "num_local_experts": 32, "output_router_logits": false,
  "pad_token_id": 199999,
  "quantization_config": {"modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                                     "model.embed_tokens", "lm_head"],
                          "quant_method": "mxfp4"},
  "rms_norm_eps": 1e-05,
  "rope_scaling": {"beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0,
                   "original_max_position_embeddings": 4096, "rope_type": "yarn", "truncate": false},
  "rope_theta": 150000, "router_aux_loss_coef": 0.9, "sliding_window": 128, "swiglu_limit": 7.0,
  "tie_word_embeddings": false, "transformers_version": "4.55.0.dev0", "use_cache": true,
  "vocab_size": 201088
}""") | {"layer_types": _ATTENTION * 12}
GPT_OSS_120B = GPT_OSS_20B | {"num_hidden_layers": 36, "num_local_experts": 128, "layer_types": _ATTENTION * 18}


def test_parameter_counts_match_the_model_card() -> None:
    assert parameter_count(GPT_OSS_20B) == pytest.approx(20.91e9, rel=0.002)
    assert parameter_count(GPT_OSS_120B) == pytest.approx(116.83e9, rel=0.002)


def test_gpt_oss_20b_gets_one_h100_and_120b_eight() -> None:
    small, large = plan_for(GPT_OSS_20B), plan_for(GPT_OSS_120B)
    assert (small.gpus, small.modal_gpu, small.dequantize_mxfp4) == (1, "H100", True)
    assert (large.gpus, large.modal_gpu, large.dequantize_mxfp4) == (8, "H100:8", True)
    assert small.weights_gb == pytest.approx(41.8, abs=0.1) and large.weights_gb == pytest.approx(233.6, abs=0.1)
    assert small.needed_gb <= small.usable_gb and large.needed_gb <= large.usable_gb
    assert plan_for(GPT_OSS_120B | {"num_hidden_layers": 15}).gpus == 4  # a half-size model: half the GPUs
    assert small.usd_per_hour == pytest.approx(USD_PER_GPU_HOUR) and large.usd(1.0) == 31.59
    assert json.loads(json.dumps(large.to_dict()))["gpus"] == 8


def test_lora_count_is_what_peft_trains() -> None:
    """rank x (in + out) over the attention projections: gpt-oss experts are not nn.Linear."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import GptOssConfig, GptOssForCausalLM

    config = GptOssConfig(vocab_size=128, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=32, num_local_experts=4,
                          num_experts_per_tok=2, layer_types=_ATTENTION)
    torch.manual_seed(0)
    model = get_peft_model(GptOssForCausalLM(config), LoraConfig(r=4, target_modules="all-linear"))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert lora_parameter_count(config.to_dict(), rank=4) == trainable


def test_the_embedded_tiny_model_gets_one_gpu(tmp_path: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tests.test_train_job import make_fixture

    model_dir = make_fixture(tmp_path)["model"].path
    config = json.loads((Path(model_dir) / "config.json").read_text())
    plan = plan_for(config, lora_rank=4)
    assert (plan.gpus, plan.dequantize_mxfp4) == (1, False)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    actual = sum(p.numel() for p in model.parameters())
    assert parameter_count(config) == pytest.approx(actual, rel=0.01)  # norms and biases are left out
    lora = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))
    assert plan.lora_parameters == sum(p.numel() for p in lora.parameters() if p.requires_grad)


def test_a_model_no_container_holds_is_refused() -> None:
    dense_400b = {"vocab_size": 128000, "hidden_size": 16384, "num_hidden_layers": 126,
                  "num_attention_heads": 128, "num_key_value_heads": 8, "intermediate_size": 53248}
    with pytest.raises(ModelTooLarge, match=f"more than {max(GPU_COUNTS)} x H100"):
        plan_for(dense_400b)


def test_bad_configs_get_clear_errors() -> None:
    with pytest.raises(ValueError, match="none of hidden_size"):
        plan_for({"vocab_size": 10})
    with pytest.raises(ValueError, match="'num_hidden_layers' must be a non-negative integer"):
        plan_for(GPT_OSS_20B | {"num_hidden_layers": "24"})
    assert not is_mxfp4({"quantization_config": {"quant_method": "fp8"}}) and not is_mxfp4({})
