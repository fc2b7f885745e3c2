"""Loading a base model for training: the tiny model as before, gpt-oss MXFP4 dequantized.

The MXFP4 checkpoint here is a tiny random gpt-oss written in the hub layout (experts as
`*_blocks` / `*_scales` uint8 tensors, the config's quantization_config as in
openai/gpt-oss-20b) and loaded by the real transformers code on CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sia.train.loading import ModelDoesNotFit, check_placement, load_base_model, load_kwargs, read_config

MXFP4 = {"quant_method": "mxfp4", "modules_to_not_convert": [
    "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}


def write_tiny_mxfp4_gpt_oss(path: Path) -> Path:
    from safetensors.torch import save_file
    from transformers import GptOssConfig, GptOssForCausalLM

    experts, hidden, inner = 4, 64, 64
    config = GptOssConfig(vocab_size=128, hidden_size=hidden, intermediate_size=inner, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=32, num_local_experts=experts,
                          num_experts_per_tok=2, max_position_embeddings=64,
                          layer_types=["sliding_attention", "full_attention"])
    torch.manual_seed(0)
    state = {k: v.contiguous() for k, v in GptOssForCausalLM(config).state_dict().items()}
    generator = torch.Generator().manual_seed(1)
    for layer in range(config.num_hidden_layers):
        prefix = f"model.layers.{layer}.mlp.experts"
        del state[f"{prefix}.gate_up_proj"], state[f"{prefix}.down_proj"]
        # 32 fp4 values per block (two per byte) and one E8M0 exponent per block (124 = 2^-3).
        for name, rows, cols in (("gate_up_proj", 2 * inner, hidden), ("down_proj", hidden, inner)):
            state[f"{prefix}.{name}_blocks"] = torch.randint(0, 256, (experts, rows, cols // 32, 16),
                                                             dtype=torch.uint8, generator=generator)
            state[f"{prefix}.{name}_scales"] = torch.full((experts, rows, cols // 32), 124, dtype=torch.uint8)
    path.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps(config.to_dict() | {"quantization_config": MXFP4}))
    return path


def test_the_tiny_model_loads_exactly_as_before(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from tests.test_train_job import make_fixture

    model_dir = Path(make_fixture(tmp_path)["model"].path)
    model = load_base_model(model_dir, cuda=False)
    before = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    assert getattr(model, "hf_device_map", None) is None
    ours, theirs = model.state_dict(), before.state_dict()
    assert list(ours) == list(theirs)
    for name, tensor in ours.items():
        assert tensor.dtype == torch.float32 and tensor.device.type == "cpu"
        assert torch.equal(tensor, theirs[name]), name


def test_mxfp4_gpt_oss_is_dequantized_and_trainable(tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssExperts

    model = load_base_model(write_tiny_mxfp4_gpt_oss(tmp_path / "gpt-oss-tiny"), cuda=False)
    assert not getattr(model, "is_quantized", False)
    experts = model.model.layers[0].mlp.experts
    assert type(experts) is GptOssExperts and experts.gate_up_proj.shape == (4, 64, 128)
    assert experts.gate_up_proj.dtype == torch.float32
    # every dequantized value is an fp4 value (0, ±0.5 ... ±6) times the block scale 2^-3
    grid = {sign * v / 8 for v in (0, 0.5, 1, 1.5, 2, 3, 4, 6) for sign in (1, -1)}
    assert set(experts.gate_up_proj.detach().unique().tolist()) <= grid
    assert not any(name.endswith(("_blocks", "_scales")) for name, _ in model.named_parameters())

    lora = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))
    loss = lora(input_ids=torch.tensor([[1, 2, 3, 4]]), labels=torch.tensor([[1, 2, 3, 4]])).loss
    loss.backward()
    grads = [p.grad for n, p in lora.named_parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_load_arguments_per_machine() -> None:
    gpt_oss = {"model_type": "gpt_oss", "quantization_config": MXFP4}
    cpu = load_kwargs(gpt_oss, cuda=False, gpu_count=0)
    assert cpu["dtype"] == torch.float32 and "device_map" not in cpu
    assert cpu["quantization_config"].dequantize is True
    one = load_kwargs(gpt_oss, cuda=True, gpu_count=1)
    assert (one["dtype"], one["device_map"]) == (torch.bfloat16, {"": 0})
    eight = load_kwargs(gpt_oss, cuda=True, gpu_count=8)
    assert (eight["dtype"], eight["device_map"], eight["quantization_config"].dequantize) == (
        torch.bfloat16, "auto", True)
    assert "quantization_config" not in load_kwargs({"model_type": "llama"}, cuda=True, gpu_count=1)


def test_a_model_that_spills_off_the_gpus_is_refused() -> None:
    """What accelerate's "auto" placement does with GPUs too small for the model (~0.9 MB
    here): modules go to the CPU, which check_placement refuses."""
    from accelerate import infer_auto_device_map
    from transformers import GptOssConfig, GptOssForCausalLM

    config = GptOssConfig(vocab_size=128, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=32, num_local_experts=4,
                          num_experts_per_tok=2, layer_types=["sliding_attention", "full_attention"])
    model = GptOssForCausalLM(config)

    def placement(gpu_bytes: int) -> dict:
        return infer_auto_device_map(model, max_memory={0: gpu_bytes, 1: gpu_bytes, "cpu": 10**9},
                                     no_split_module_classes=model._no_split_modules)

    with pytest.raises(ModelDoesNotFit, match="does not fit on 2 GPU\\(s\\): modules went to cpu"):
        check_placement(placement(200_000), 2)
    check_placement(placement(10**7), 2)
    check_placement(None, 0)  # CPU training: no device map at all


def test_a_directory_without_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no config.json"):
        read_config(tmp_path)
