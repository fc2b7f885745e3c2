"""The single entry point for a weight update: rollouts + algorithm + params -> LoRA adapter.

The Feedback agent picks the algorithm from the shape of the reward and records the
choice with its hyper-parameters; this function turns that record into an adapter,
deterministically on CPU (same inputs and seed give byte-identical adapter files), and
resumably when given a checkpoint directory.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sia.core.events.canonical import content_hash
from sia.train import deterministic_torch
from sia.train.rollouts import Rollout

ALGORITHMS = ("ppo_gae", "grpo", "entropic", "reinforce_kl", "dpo", "best_of_n")

SCALES = ("tiny", "large")
LARGE_MODEL_PARAMETERS = 50_000_000
"""Above this many parameters a base model gets the "large" defaults."""

_TINY: dict[str, Any] = {"lr": 5e-3, "epochs": 4, "batch_size": 32, "max_grad_norm": 1.0,
                         "checkpoint_every": 25, "forward_batch_size": 64}
_LARGE: dict[str, Any] = {"lr": 1e-5, "epochs": 1, "batch_size": 8, "max_grad_norm": 1.0,
                          "checkpoint_every": 25, "forward_batch_size": 4}
_PPO = {"clip": 0.2, "value_clip": 0.2, "vf_coef": 0.1, "gamma": 1.0, "lam": 0.95,
        "normalize_advantages": True, "fit_critic": True, "critic_ridge": 1e-3}
DEFAULT_PARAMS: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {
        "ppo_gae": {**_TINY, **_PPO},
        # Per-group std normalisation makes a lone success's advantage ~2.6 in a group of 8:
        # at 5e-3 one epoch took the classify test's accuracy from 0.34 to 0.0; 2e-3 → 0.50.
        "grpo": {**_TINY, "lr": 2e-3, "clip": 0.2},
        "entropic": {**_TINY, "clip": 0.2, "beta": None},
        "reinforce_kl": {**_TINY, "clip": 0.2, "kl_coef": 0.01, "normalize_advantages": True},
        "dpo": {**_TINY, "epochs": 3, "batch_size": 16, "beta": 0.1, "sft_weight": 1.0,
                "max_pairs_per_group": 16},
        "best_of_n": {**_TINY, "epochs": 3, "batch_size": 16, "top_k": 1},
    },
    # LoRA on a real model: ~10x the full fine-tuning rates of RL (1e-6), DPO (5e-7) and
    # SFT (1e-5); one pass over on-policy rollouts; small anchor passes.
    "large": {
        "ppo_gae": {**_LARGE, **_PPO},
        "grpo": {**_LARGE, "clip": 0.2},
        "entropic": {**_LARGE, "clip": 0.2, "beta": None},
        "reinforce_kl": {**_LARGE, "clip": 0.2, "kl_coef": 0.01, "normalize_advantages": True},
        "dpo": {**_LARGE, "lr": 5e-6, "beta": 0.1, "sft_weight": 1.0, "max_pairs_per_group": 16},
        "best_of_n": {**_LARGE, "lr": 1e-4, "epochs": 2, "top_k": 1},
    },
}
"""Defaults per model scale (`model_scale`); a plan overrides any of them by name."""


def model_scale(config: dict[str, Any] | None) -> str:
    """"tiny" or "large" from a transformers config.json (None: a model with no local copy,
    which is a served real one). Counts embedding and transformer-block weights."""
    if config is None:
        return "large"
    hidden = int(config.get("hidden_size") or config.get("n_embd") or 0)
    layers = int(config.get("num_hidden_layers") or config.get("n_layer") or 0)
    inner = int(config.get("intermediate_size") or 4 * hidden)
    vocab = int(config.get("vocab_size") or 0)
    experts = int(config.get("num_local_experts") or config.get("num_experts") or 1)
    count = vocab * hidden + layers * (4 * hidden * hidden + 3 * hidden * inner * experts)
    return "large" if count > LARGE_MODEL_PARAMETERS else "tiny"


def _positive(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _positive_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x > 0


def _unit(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x <= 1


def _non_negative(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x >= 0


_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "lr": (_positive, "a positive number"),
    "epochs": (_positive_int, "a positive integer"),
    "batch_size": (_positive_int, "a positive integer"),
    "max_grad_norm": (_positive, "a positive number"),
    "checkpoint_every": (_positive_int, "a positive integer"),
    "clip": (_positive, "a positive number"),
    "value_clip": (_positive, "a positive number"),
    "vf_coef": (_non_negative, "a non-negative number"),
    "gamma": (_unit, "a number in [0, 1]"),
    "lam": (_unit, "a number in [0, 1]"),
    "normalize_advantages": (lambda x: isinstance(x, bool), "true or false"),
    "beta": (lambda x: x is None or (_non_negative(x) and x <= 1e3), "null (adaptive) or a number in [0, 1000]"),
    "kl_coef": (_non_negative, "a non-negative number"),
    "sft_weight": (_non_negative, "a non-negative number"),
    "max_pairs_per_group": (_positive_int, "a positive integer"),
    "top_k": (_positive_int, "a positive integer"),
    "forward_batch_size": (_positive_int, "a positive integer"),
    "fit_critic": (lambda x: isinstance(x, bool), "true or false"),
    "critic_ridge": (_positive, "a positive number"),
}


@dataclass(frozen=True)
class LoraSpec:
    """The adapter to create (ignored when continuing an existing adapter, which keeps its own)."""

    rank: int = 32
    alpha: int = 64
    dropout: float = 0.0
    target_modules: str | tuple[str, ...] = "all-linear"


def resolve_params(algorithm: str, params: dict[str, Any], scale: str = "tiny") -> dict[str, Any]:
    """The algorithm's defaults for a model of `scale`, overridden by `params`; ValueError
    naming any bad entry."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown training algorithm {algorithm!r}; expected one of {', '.join(ALGORITHMS)}")
    if scale not in SCALES:
        raise ValueError(f"unknown model scale {scale!r}; expected one of {', '.join(SCALES)}")
    defaults = DEFAULT_PARAMS[scale][algorithm]
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ValueError(f"unknown params for {algorithm}: {', '.join(unknown)}; "
                         f"accepted: {', '.join(sorted(defaults))}")
    resolved = {**defaults, **params}
    for name, value in resolved.items():
        check, expected = _CHECKS[name]
        if not check(value):
            raise ValueError(f"param {name!r} of {algorithm} must be {expected}, got {value!r}")
    if algorithm == "dpo" and resolved["beta"] is None:
        raise ValueError("dpo's beta must be a number")
    return resolved


def _validate(algorithm: str, rollouts: list[Rollout], lora: LoraSpec) -> None:
    if not rollouts:
        raise ValueError("no rollouts to train on")
    if not all(math.isfinite(r.reward) for r in rollouts):
        raise ValueError("every rollout reward must be finite")
    if not any(r.completion_ids for r in rollouts):
        raise ValueError("every rollout has an empty completion: nothing to train on")
    if lora.rank < 1 or lora.alpha <= 0 or not 0 <= lora.dropout < 1:
        raise ValueError(f"bad LoRA spec {lora}: rank >= 1, alpha > 0, 0 <= dropout < 1")


def no_signal_reason(algorithm: str, rollouts: list[Rollout], params: dict[str, Any]) -> str | None:
    """Why `algorithm` cannot learn anything from `rollouts`, or None if it can (pure).

    Group-relative algorithms need a group with two different rewards (a constant group's
    advantages are all 0); PPO needs rewards that differ at all (equal ones normalise to
    nothing); best-of-N needs a rollout that beats its group's minimum or 0.
    """
    from sia.train.preference import best_rollouts
    from sia.train.rollouts import group_indices

    if algorithm == "best_of_n":
        if not best_rollouts(rollouts, params.get("top_k", 1)):
            return "no rollout's reward beats its group's minimum or 0: nothing to clone"
        return None
    if algorithm == "ppo_gae":
        if len({r.reward for r in rollouts}) < 2:
            return f"all {len(rollouts)} rollouts have the same reward: no advantage to learn from"
        return None
    groups = group_indices(rollouts)
    spread = [g for g in groups if len({rollouts[i].reward for i in g}) > 1]
    if not spread:
        return (f"every one of the {len(groups)} groups has a constant reward: "
                f"group-relative advantages are all 0")
    if algorithm == "dpo" and not any(
            len({tuple(rollouts[i].completion_ids) for i in g}) > 1 for g in spread):
        return "no group has two different completions with different rewards: no preference pair"
    return None


def _load_model(model_dir: Path, init_adapter_dir: Path | None, lora: LoraSpec, seed: int):  # type: ignore[no-untyped-def]
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model

    from sia.train.loading import load_base_model

    base = load_base_model(model_dir, cuda=torch.cuda.is_available())
    if init_adapter_dir is not None:
        return PeftModel.from_pretrained(base, init_adapter_dir, is_trainable=True)
    targets = lora.target_modules if isinstance(lora.target_modules, str) else list(lora.target_modules)
    config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=targets, bias="none", task_type="CAUSAL_LM")
    torch.manual_seed(seed)
    return get_peft_model(base, config)


def _scale_of(model_dir: Path) -> str:
    import json

    config_path = Path(model_dir) / "config.json"
    return model_scale(json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else None)


def _sort_target_modules(config_path: Path) -> None:
    """peft writes an expanded "all-linear" as a set, in hash order that varies between
    processes; sorting makes adapter_config.json as reproducible as the weights."""
    import json

    config = json.loads(config_path.read_text(encoding="utf-8"))
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def train_adapter(*, model_dir: Path, init_adapter_dir: Path | None, rollouts: list[Rollout],
                  algorithm: str, params: dict[str, Any], lora: LoraSpec, seed: int, out_dir: Path,
                  checkpoint_dir: Path | None = None,
                  on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, float]:
    """Train a LoRA adapter on `rollouts` and write it to `out_dir`; returns final metrics.

    Writes `adapter_model.safetensors` and `adapter_config.json` (and, for ppo_gae,
    `value_head.safetensors`, which a later ppo_gae job starting from this adapter
    carries on from). Metrics include `policy_unchanged`: 1.0 when every trained weight
    is bit-identical to where it started (the update changed nothing). With
    `checkpoint_dir`, progress is saved every `checkpoint_every` steps under a
    sub-directory named by the hash of all inputs, and a re-run with the same inputs
    resumes from it.
    """
    import torch
    from transformers import AutoTokenizer

    resolved = resolve_params(algorithm, params, _scale_of(Path(model_dir)))
    _validate(algorithm, rollouts, lora)
    fingerprint = content_hash({
        "model_dir": str(model_dir), "init_adapter_dir": str(init_adapter_dir) if init_adapter_dir else None,
        "rollouts": [r.model_dump() for r in rollouts], "algorithm": algorithm, "params": resolved,
        "lora": {**asdict(lora), "target_modules": lora.target_modules if isinstance(lora.target_modules, str)
                 else list(lora.target_modules)}, "seed": seed})
    state_dir = Path(checkpoint_dir) / fingerprint[:16] if checkpoint_dir is not None else None
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with deterministic_torch(seed):
        model = _load_model(Path(model_dir), init_adapter_dir, lora, seed)
        before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        if algorithm in ("dpo", "best_of_n"):
            from sia.train.preference import train_best_of_n, train_dpo

            run = train_dpo if algorithm == "dpo" else train_best_of_n
            metrics = run(model, tokenizer, rollouts, params=resolved, seed=seed,
                          checkpoint_dir=state_dir, on_progress=on_progress)
            head = None
        else:
            from sia.train.policy_gradient import Checkpoint, load_value_head, train_policy_gradient

            checkpoint = Checkpoint(state_dir, fingerprint, resolved["checkpoint_every"])
            carried = (load_value_head(init_adapter_dir, model.config.hidden_size)
                       if algorithm == "ppo_gae" else None)
            metrics, head = train_policy_gradient(model, rollouts, algorithm=algorithm, params=resolved,
                                                  pad_id=pad_id, seed=seed, checkpoint=checkpoint,
                                                  initial_value_head=carried, on_progress=on_progress)
            metrics["value_head_carried"] = float(carried is not None)
        metrics["policy_unchanged"] = float(all(
            torch.equal(p.detach(), before[n]) for n, p in model.named_parameters() if n in before))
        model.save_pretrained(out_dir, selected_adapters=["default"])
        _sort_target_modules(out_dir / "adapter_config.json")
        if head is not None:
            from sia.train.policy_gradient import save_value_head

            save_value_head(head, out_dir)
    return metrics
