"""Learning from comparisons and from the best samples, with TRL's trainers.

DPO learns from pairs of completions of the same prompt (higher reward = chosen);
best-of-N behavioural cloning fine-tunes on each prompt's best completions. Both take
the exact recorded token ids: text would be re-tokenized, and a real tokenizer does not
always give back the ids that were sampled.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sia.train.rollouts import Rollout, group_indices

Progress = Callable[[dict[str, Any]], None]


def preference_pairs(rollouts: list[Rollout], max_pairs_per_group: int) -> list[tuple[Rollout, Rollout]]:
    """(chosen, rejected) pairs within each group, widest reward gap first."""
    pairs: list[tuple[Rollout, Rollout]] = []
    for group in group_indices(rollouts):
        candidates = [(rollouts[i].reward - rollouts[j].reward, i, j)
                      for i in group for j in group
                      if rollouts[i].reward > rollouts[j].reward
                      and rollouts[i].completion_ids != rollouts[j].completion_ids]
        candidates.sort(key=lambda c: (-c[0], c[1], c[2]))
        pairs.extend((rollouts[i], rollouts[j]) for _, i, j in candidates[:max_pairs_per_group])
    return pairs


def best_rollouts(rollouts: list[Rollout], top_k: int) -> list[Rollout]:
    """Each group's `top_k` highest-reward rollouts that beat something: reward above the
    group minimum, or above 0 (a group where every sample succeeded still teaches)."""
    chosen: list[Rollout] = []
    for group in group_indices(rollouts):
        low = min(rollouts[i].reward for i in group)
        good = [i for i in group if rollouts[i].reward > low or rollouts[i].reward > 0]
        good.sort(key=lambda i: (-rollouts[i].reward, i))
        chosen.extend(rollouts[i] for i in good[:top_k] if rollouts[i].completion_ids)
    return chosen


def _progress_callback(on_progress: Progress | None):  # type: ignore[no-untyped-def]
    from transformers import TrainerCallback

    class _Report(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):  # type: ignore[no-untyped-def]
            if on_progress is not None and logs and "loss" in logs:
                numbers = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float))}
                on_progress({**numbers, "step": state.global_step, "total_steps": state.max_steps})

    return _Report()


def _common_args(params: dict[str, Any], seed: int, output_dir: Path, checkpointing: bool) -> dict[str, Any]:
    """Trainer settings shared by DPO and SFT: fp32 on CPU, no hub, no reporting, seeded."""
    import torch

    cuda = torch.cuda.is_available()
    return dict(
        output_dir=str(output_dir), learning_rate=params["lr"], num_train_epochs=params["epochs"],
        per_device_train_batch_size=params["batch_size"], gradient_accumulation_steps=1,
        max_grad_norm=params["max_grad_norm"], lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, seed=seed, data_seed=seed, full_determinism=not cuda, use_cpu=not cuda,
        bf16=cuda, fp16=False, gradient_checkpointing=False, report_to=[], push_to_hub=False,
        logging_steps=1, logging_strategy="steps", disable_tqdm=True, dataloader_num_workers=0,
        save_strategy="steps" if checkpointing else "no", save_steps=params["checkpoint_every"],
        save_total_limit=1, save_only_model=False, remove_unused_columns=True,
    )


def _run(trainer, checkpoint_dir: Path | None) -> dict[str, float]:  # type: ignore[no-untyped-def]
    resume = checkpoint_dir is not None and any(Path(checkpoint_dir).glob("checkpoint-*"))
    result = trainer.train(resume_from_checkpoint=True if resume else None)
    metrics = {k: float(v) for k, v in result.metrics.items() if isinstance(v, (int, float))}
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {**metrics, "loss": float(losses[-1]) if losses else float("nan"),
            "steps": float(trainer.state.global_step)}


def _dpo_loss(sft_weight: float) -> dict[str, Any]:
    """Sigmoid DPO, plus (RPO-style) the chosen completions' NLL: pure DPO can lower the
    chosen log-prob too, as long as the rejected one falls faster, which moves mass onto
    tokens no rollout contains."""
    if sft_weight == 0:
        return {"loss_type": ["sigmoid"]}
    return {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, float(sft_weight)]}


def train_dpo(model, tokenizer, rollouts: list[Rollout], *, params: dict[str, Any], seed: int,  # type: ignore[no-untyped-def]
              checkpoint_dir: Path | None, on_progress: Progress | None) -> dict[str, float]:
    """DPO on the peft `model`; the reference is the adapter as it was before training
    (TRL copies it to a frozen "ref" adapter; for a fresh LoRA that is the base model)."""
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import DPOConfig, DPOTrainer

    class _TokenDPOTrainer(DPOTrainer):
        """DPOTrainer fed the recorded token ids: its own preparation would re-tokenize text."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):  # type: ignore[no-untyped-def]
            return dataset

    pairs = preference_pairs(rollouts, params["max_pairs_per_group"])
    if not pairs:
        raise ValueError("dpo needs at least one group with two different rewards; none found")
    data = Dataset.from_list([{"prompt_ids": c.prompt_ids, "chosen_ids": c.completion_ids,
                               "rejected_ids": r.completion_ids} for c, r in pairs])
    with tempfile.TemporaryDirectory(prefix="sia-dpo-") as scratch:
        output_dir = Path(checkpoint_dir) if checkpoint_dir is not None else Path(scratch)
        config = DPOConfig(**_common_args(params, seed, output_dir, checkpoint_dir is not None),
                           beta=params["beta"], max_length=None, precompute_ref_log_probs=False,
                           **_dpo_loss(params["sft_weight"]))
        trainer = _TokenDPOTrainer(model=model, ref_model=None, args=config, train_dataset=data,
                                   processing_class=tokenizer, callbacks=[_progress_callback(on_progress)])
        trainer.remove_callback(PrinterCallback)
        metrics = _run(trainer, checkpoint_dir)
    if "ref" in model.peft_config:
        model.delete_adapter("ref")
    model.set_adapter("default")
    return {**metrics, "pairs": float(len(pairs))}


def train_best_of_n(model, tokenizer, rollouts: list[Rollout], *, params: dict[str, Any], seed: int,  # type: ignore[no-untyped-def]
                    checkpoint_dir: Path | None, on_progress: Progress | None) -> dict[str, float]:
    """Supervised fine-tuning on each group's best completions; loss on completion tokens only."""
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    best = best_rollouts(rollouts, params["top_k"])
    if not best:
        raise ValueError("best_of_n found no rollout whose reward beats its group's minimum or 0")
    data = Dataset.from_list([{"input_ids": r.prompt_ids + r.completion_ids,
                               "labels": [-100] * len(r.prompt_ids) + r.completion_ids} for r in best])
    with tempfile.TemporaryDirectory(prefix="sia-bon-") as scratch:
        output_dir = Path(checkpoint_dir) if checkpoint_dir is not None else Path(scratch)
        config = SFTConfig(**_common_args(params, seed, output_dir, checkpoint_dir is not None),
                           max_length=None, packing=False, completion_only_loss=False,
                           dataset_kwargs={"skip_prepare_dataset": True})
        trainer = SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer,
                             callbacks=[_progress_callback(on_progress)])
        trainer.remove_callback(PrinterCallback)
        metrics = _run(trainer, checkpoint_dir)
    return {**metrics, "examples": float(len(best))}
