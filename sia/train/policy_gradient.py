"""Policy-gradient losses over recorded rollouts, on a peft LoRA model.

TRL's RL trainers sample their own completions; sia learns from the completions its
harness actually produced (recorded, scored, audited), so the loss is computed here
over given rollouts: GRPO, entropic and REINFORCE+KL weight completion-token
log-probabilities by a per-rollout advantage (clipped against the initial policy, so
several epochs over the same rollouts stay stable); PPO adds a value head, GAE, and the
clipped objective against the sampling (or initial) policy.

The loop is resumable: with a checkpoint directory it saves the trainable weights,
optimizer, step, RNG and every quantity computed from the initial policy, so a killed
job continues to exactly the same adapter an uninterrupted one would produce.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sia.train import advantages as adv
from sia.train.rollouts import Rollout, group_indices

VALUE_HEAD_FILE = "value_head.safetensors"
CHECKPOINT_FILE = "pg_state.pt"

Progress = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Batch:
    """Right-padded prompt+completion ids; `targets[b, t]` marks that token t+1 is a
    completion token of row b (the one predicted from position t)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    targets: torch.Tensor


def make_batch(rollouts: list[Rollout], pad_id: int) -> Batch:
    width = max(len(r.prompt_ids) + len(r.completion_ids) for r in rollouts)
    ids, mask, targets = [], [], []
    for r in rollouts:
        seq = r.prompt_ids + r.completion_ids
        fill = width - len(seq)
        ids.append(seq + [pad_id] * fill)
        mask.append([1] * len(seq) + [0] * fill)
        start = len(r.prompt_ids) - 1
        targets.append([start <= t < start + len(r.completion_ids) for t in range(width - 1)])
    return Batch(torch.tensor(ids), torch.tensor(mask), torch.tensor(targets, dtype=torch.bool))


def token_logprobs(model: nn.Module, batch: Batch,
                   hidden: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probability of each next token, [B, L-1] (and the last hidden states that predict them),
    on the CPU in fp32 whatever the model's device, so the bookkeeping stays in one place."""
    device = next(model.parameters()).device
    ids = batch.input_ids.to(device)
    out = model(input_ids=ids, attention_mask=batch.attention_mask.to(device),
                output_hidden_states=hidden, use_cache=False)
    logits = out.logits[:, :-1, :].float()
    logp = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1).cpu()
    states = out.hidden_states[-1][:, :-1, :].float().cpu() if hidden else None
    return logp, states


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def scatter_tokens(batch: Batch, rows: list[list[float]]) -> torch.Tensor:
    """Per-completion-token values (one list per row) placed at the row's target positions."""
    out = torch.zeros(batch.targets.shape, dtype=torch.float32)
    for b, values in enumerate(rows):
        positions = batch.targets[b].nonzero().flatten()
        out[b, positions] = torch.tensor(values, dtype=torch.float32)
    return out


def sequence_advantages(rollouts: list[Rollout], algorithm: str,
                        params: dict[str, Any]) -> tuple[list[float], dict[str, float]]:
    """One advantage per rollout, from the rewards of its group."""
    groups = group_indices(rollouts)
    rewards = [[rollouts[i].reward for i in g] for g in groups]
    stats: dict[str, float] = {}
    if algorithm == "grpo":
        nested = adv.grpo(rewards)
    elif algorithm == "reinforce_kl":
        nested = adv.reinforce_loo(rewards)
    elif algorithm == "entropic":
        nested, betas = adv.entropic(rewards, params.get("beta"))
        stats["mean_beta"] = sum(betas) / len(betas)
    else:
        raise ValueError(f"no sequence advantages for algorithm {algorithm!r}")
    flat = [0.0] * len(rollouts)
    for g, values in zip(groups, nested):
        for i, a in zip(g, values):
            flat[i] = a
    if params.get("normalize_advantages"):
        # Leave-one-out advantages are already centred per group; scaling them by the batch
        # spread gives REINFORCE the step size GRPO's per-group std gives it.
        spread = (sum(a * a for a in flat) / len(flat)) ** 0.5
        flat = [a / (spread + 1e-8) for a in flat]
    return flat, stats


class ValueHead(nn.Module):
    """V(s) from the last hidden state; zero-initialised so the first advantages are plain returns."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.linear(states.float()).squeeze(-1)


def save_value_head(head: ValueHead, out_dir: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in head.state_dict().items()},
              str(Path(out_dir) / VALUE_HEAD_FILE))


def minibatch_plan(n: int, epochs: int, batch_size: int, seed: int) -> list[list[int]]:
    """Every step's rollout indices: a seeded permutation per epoch, cut into minibatches."""
    plan: list[list[int]] = []
    for epoch in range(epochs):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()
        plan.extend(order[i: i + batch_size] for i in range(0, n, batch_size))
    return plan


class Checkpoint:
    """Atomic save/load of the loop state in one file; ignored if made by other inputs."""

    def __init__(self, directory: Path | None, fingerprint: str, every: int) -> None:
        self.path = Path(directory) / CHECKPOINT_FILE if directory is not None else None
        self.fingerprint = fingerprint
        self.every = every

    def load(self) -> dict[str, Any] | None:
        if self.path is None or not self.path.exists():
            return None
        state = torch.load(self.path, weights_only=True)
        return state if state.get("fingerprint") == self.fingerprint else None

    def maybe_save(self, step: int, total: int, state: Callable[[], dict[str, Any]]) -> None:
        if self.path is None or step % self.every != 0 or step == total:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save({**state(), "fingerprint": self.fingerprint, "step": step}, tmp)
        os.replace(tmp, self.path)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def train_policy_gradient(model: nn.Module, rollouts: list[Rollout], *, algorithm: str,
                          params: dict[str, Any], pad_id: int, seed: int, checkpoint: Checkpoint,
                          on_progress: Progress | None = None) -> tuple[dict[str, float], ValueHead | None]:
    """Train `model`'s trainable (LoRA) parameters in place; returns final metrics and the
    PPO value head (None for the other algorithms)."""
    ppo = algorithm == "ppo_gae"
    head = ValueHead(model.config.hidden_size) if ppo else None
    trainable = [p for p in model.parameters() if p.requires_grad]
    if head is not None:
        trainable += list(head.parameters())
    optimizer = torch.optim.AdamW(trainable, lr=params["lr"], weight_decay=0.0)
    plan = minibatch_plan(len(rollouts), params["epochs"], params["batch_size"], seed)
    stats: dict[str, float] = {"mean_reward": sum(r.reward for r in rollouts) / len(rollouts)}

    resumed = checkpoint.load()
    if resumed is not None:
        fixed = resumed["fixed"]
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.requires_grad:
                    p.copy_(resumed["trainable"][name])
        if head is not None:
            head.load_state_dict(resumed["value_head"])
        optimizer.load_state_dict(resumed["optimizer"])
        torch.set_rng_state(resumed["rng"])
        start = int(resumed["step"])
    else:
        fixed = (_ppo_fixed(model, head, rollouts, params, pad_id) if ppo
                 else _pg_fixed(model, rollouts, algorithm, params, pad_id))
        start = 0
    stats.update({k: float(v) for k, v in fixed.items() if k.startswith("stat_")})

    def snapshot() -> dict[str, Any]:
        return {"trainable": trainable_state(model), "optimizer": optimizer.state_dict(),
                "value_head": head.state_dict() if head is not None else {}, "rng": torch.get_rng_state(),
                "fixed": fixed}

    metrics: dict[str, float] = {}
    model.train()
    for step, indices in enumerate(plan, start=1):
        if step <= start:
            continue
        batch = make_batch([rollouts[i] for i in indices], pad_id)
        loss, metrics = (_ppo_loss(model, head, batch, indices, fixed, params) if ppo  # type: ignore[arg-type]
                         else _pg_loss(model, batch, indices, fixed, algorithm, params))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, params["max_grad_norm"])
        optimizer.step()
        metrics = {"loss": float(loss.detach()), **metrics}
        if on_progress is not None:
            on_progress({"step": step, "total_steps": len(plan), **metrics})
        checkpoint.maybe_save(step, len(plan), snapshot)
    model.eval()
    return {**stats, **metrics, "steps": float(len(plan))}, head


def _pg_fixed(model: nn.Module, rollouts: list[Rollout], algorithm: str, params: dict[str, Any],
              pad_id: int) -> dict[str, Any]:
    """Sequence advantages and the initial policy's token log-probs (the clipping anchor)."""
    values, stats = sequence_advantages(rollouts, algorithm, params)
    batch = make_batch(rollouts, pad_id)
    model.eval()
    with torch.no_grad():
        old_logp, _ = token_logprobs(model, batch)
    return {"advantages": torch.tensor(values, dtype=torch.float32), "old_logp": old_logp,
            "targets": batch.targets, **{f"stat_{k}": torch.tensor(v) for k, v in stats.items()}}


def _pg_loss(model: nn.Module, batch: Batch, indices: list[int], fixed: dict[str, Any],
             algorithm: str, params: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
    """-mean(A . logp) over completion tokens, as a clipped ratio to the initial policy
    (+ kl_coef . k3 to the base model for reinforce_kl).

    At the first step the ratio is 1 and the gradient is exactly that of -mean(A . logp);
    the clip stops later epochs from driving the log-probability of negative-advantage
    tokens towards -inf, which otherwise spills their mass onto arbitrary tokens.
    """
    logp, _ = token_logprobs(model, batch)
    advantage = fixed["advantages"][indices][:, None]
    old_logp = _rows(fixed["old_logp"], fixed["targets"], indices, batch)
    pg, clipped = _clipped_surrogate(logp, old_logp, advantage, batch.targets, params["clip"])
    metrics = {"pg_loss": float(pg.detach()), "clip_frac": clipped}
    if algorithm != "reinforce_kl":
        return pg, metrics
    with torch.no_grad(), model.disable_adapter():  # type: ignore[operator]
        ref, _ = token_logprobs(model, batch)
    log_ratio = ref - logp
    kl = masked_mean(torch.exp(log_ratio) - log_ratio - 1.0, batch.targets)
    metrics["kl"] = float(kl.detach())
    return pg + params["kl_coef"] * kl, metrics


def _clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, advantage: torch.Tensor,
                       mask: torch.Tensor, clip: float) -> tuple[torch.Tensor, float]:
    ratio = torch.exp(logp - old_logp)
    surrogate = torch.minimum(ratio * advantage, torch.clamp(ratio, 1 - clip, 1 + clip) * advantage)
    clipped = masked_mean(((ratio.detach() - 1).abs() > clip).float(), mask)
    return -masked_mean(surrogate, mask), float(clipped)


def _ppo_fixed(model: nn.Module, head: ValueHead, rollouts: list[Rollout], params: dict[str, Any],
               pad_id: int) -> dict[str, Any]:
    """Old log-probs (recorded sampling ones, else the initial policy's), old values, GAE."""
    batch = make_batch(rollouts, pad_id)
    model.eval()
    with torch.no_grad():
        logp, states = token_logprobs(model, batch, hidden=True)
        values = head(states)  # type: ignore[arg-type]
    old_logp = logp.clone()
    advantage = torch.zeros_like(logp)
    returns = torch.zeros_like(logp)
    for b, r in enumerate(rollouts):
        positions = batch.targets[b].nonzero().flatten()
        if r.logprobs is not None:
            old_logp[b, positions] = torch.tensor(r.logprobs, dtype=torch.float32)
        if len(positions) == 0:
            continue
        token_rewards = [0.0] * (len(positions) - 1) + [r.reward]
        a, ret = adv.gae(token_rewards, values[b, positions].tolist(), params["gamma"], params["lam"])
        advantage[b, positions] = torch.tensor(a, dtype=torch.float32)
        returns[b, positions] = torch.tensor(ret, dtype=torch.float32)
    if params["normalize_advantages"]:
        mask = batch.targets
        mean = masked_mean(advantage, mask)
        std = masked_mean((advantage - mean) ** 2, mask).sqrt()
        advantage = torch.where(mask, (advantage - mean) / (std + 1e-8), torch.zeros_like(advantage))
    return {"old_logp": old_logp, "old_values": values, "advantages": advantage, "returns": returns,
            "targets": batch.targets}


def _rows(fixed: torch.Tensor, targets: torch.Tensor, indices: list[int], batch: Batch) -> torch.Tensor:
    """A precomputed [N, L-1] tensor's rows for `indices`, realigned to the minibatch's width."""
    out = torch.zeros(batch.targets.shape, dtype=fixed.dtype)
    for b, i in enumerate(indices):
        out[b, batch.targets[b]] = fixed[i, targets[i]]
    return out


def _ppo_loss(model: nn.Module, head: ValueHead, batch: Batch, indices: list[int],
              fixed: dict[str, Any], params: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped surrogate + clipped value loss (the PPO objective)."""
    logp, states = token_logprobs(model, batch, hidden=True)
    values = head(states)  # type: ignore[arg-type]
    old_logp, old_values, advantage, returns = (
        _rows(fixed[k], fixed["targets"], indices, batch)
        for k in ("old_logp", "old_values", "advantages", "returns"))
    mask = batch.targets
    pg, clipped = _clipped_surrogate(logp, old_logp, advantage, mask, params["clip"])
    value_clipped = old_values + torch.clamp(values - old_values, -params["value_clip"], params["value_clip"])
    value_loss = 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (value_clipped - returns) ** 2), mask)
    metrics = {"pg_loss": float(pg.detach()), "value_loss": float(value_loss.detach()),
               "clip_frac": float(clipped)}
    return pg + params["vf_coef"] * value_loss, metrics
