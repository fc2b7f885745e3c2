"""Policy-gradient losses over recorded rollouts, on a peft LoRA model.

TRL's RL trainers sample their own completions; sia learns from the completions its
harness actually produced (recorded, scored, audited), so the loss is computed here
over given rollouts: GRPO, entropic and REINFORCE+KL weight completion-token
log-probabilities by a per-rollout advantage (clipped against the initial policy, so
several epochs over the same rollouts stay stable); PPO adds a value head (carried from
the adapter it starts from, fitted to the returns before any policy step), GAE with the
fitted values, and the clipped objective against the sampling policy.

Tokens are scored under the distribution they were sampled from (the rollout's
temperature and top-p, `sia.target.sampling`), so the ratio to the sampler starts at 1.
Passes over all rollouts without gradients (the anchors, the critic fit) run in chunks
of `forward_batch_size`, so they fit in memory whatever the number of rollouts.

The loop is resumable: with a checkpoint directory it saves the trainable weights,
optimizer, step, RNG and every quantity computed from the initial policy, so a killed
job continues to exactly the same adapter an uninterrupted one would produce.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sia.target.sampling import sampling_logprobs, scoring_temperature
from sia.train import advantages as adv
from sia.train.rollouts import Rollout, group_indices

VALUE_HEAD_FILE = "value_head.safetensors"
MAX_SAMPLER_GAP = 0.05
"""Mean |sampler logprob - trainer logprob| (nats) above which PPO does not take the sampler's
logprobs as its behaviour policy: they are then of another distribution (e.g. vLLM's
default raw_logprobs, taken before temperature), and the trainer's own score of the
sampling distribution is the better anchor. Numerical drift (bf16 serving) is ~1e-2."""
CHECKPOINT_FILE = "pg_state.pt"

Progress = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Batch:
    """Right-padded prompt+completion ids; `targets[b, t]` marks that token t+1 is a
    completion token of row b (the one predicted from position t). `temperature` and
    `top_p` [B] are each row's sampling distribution."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    targets: torch.Tensor
    temperature: torch.Tensor
    top_p: torch.Tensor


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
    return Batch(torch.tensor(ids), torch.tensor(mask), torch.tensor(targets, dtype=torch.bool),
                 torch.tensor([scoring_temperature(r.temperature) for r in rollouts], dtype=torch.float32),
                 torch.tensor([r.top_p for r in rollouts], dtype=torch.float32))


def token_logprobs(model: nn.Module, batch: Batch,
                   hidden: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probability of each next token under its row's sampling distribution, [B, L-1]
    (and the last hidden states that predict them), on the CPU in fp32 whatever the model's
    device, so the bookkeeping stays in one place."""
    device = next(model.parameters()).device
    ids = batch.input_ids.to(device)
    out = model(input_ids=ids, attention_mask=batch.attention_mask.to(device),
                output_hidden_states=hidden, use_cache=False)
    logits = out.logits[:, :-1, :].float()
    following = ids[:, 1:]
    dist = sampling_logprobs(logits, batch.temperature.to(device)[:, None], batch.top_p.to(device)[:, None],
                             keep=following)
    logp = dist.gather(-1, following[:, :, None]).squeeze(-1).cpu()
    states = out.hidden_states[-1][:, :-1, :].float().cpu() if hidden else None
    return logp, states


def forward_chunks(model: nn.Module, rollouts: list[Rollout], pad_id: int, chunk: int, hidden: bool = False,
                   ) -> Iterator[tuple[list[int], Batch, torch.Tensor, torch.Tensor | None]]:
    """(indices, batch, logp, states) for consecutive chunks of `rollouts`, without gradients.

    Rows are right-padded, so a row's completion positions are the same in a chunk's
    batch as in the batch of all rollouts: `full[indices, :width] = logp` places them.
    """
    model.eval()
    for begin in range(0, len(rollouts), chunk):
        indices = list(range(begin, min(begin + chunk, len(rollouts))))
        batch = make_batch([rollouts[i] for i in indices], pad_id)
        with torch.no_grad():
            logp, states = token_logprobs(model, batch, hidden=hidden)
        yield indices, batch, logp, states


def initial_logprobs(model: nn.Module, rollouts: list[Rollout], pad_id: int, chunk: int) -> tuple[torch.Tensor, Batch]:
    """The current policy's token log-probs of every rollout [N, L-1], in chunks."""
    full = make_batch(rollouts, pad_id)
    out = torch.zeros(full.targets.shape, dtype=torch.float32)
    for indices, _, logp, _ in forward_chunks(model, rollouts, pad_id, chunk):
        out[indices, : logp.shape[1]] = logp
    return out, full


def behaviour_logprobs(rollouts: list[Rollout], full: Batch, initial: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The sampler's recorded log-probs where it reported them, else `initial` (the trainer's
    own score of the token under the same distribution, e.g. for the appended eos); and the
    mean |recorded - initial| over recorded tokens, which is ~0 when sampler and trainer agree."""
    out = initial.clone()
    gaps: list[float] = []
    for b, r in enumerate(rollouts):
        if r.logprobs is None:
            continue
        positions = full.targets[b].nonzero().flatten().tolist()
        for position, recorded in zip(positions, r.logprobs):
            if recorded is not None:
                gaps.append(abs(recorded - float(initial[b, position])))
                out[b, position] = recorded
    return out, (sum(gaps) / len(gaps) if gaps else 0.0)


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


CONTEXT_SCALE = 128.0
"""Completion tokens per unit of the value head's running-sum and position features."""


class ValueHead(nn.Module):
    """V(s_t), linear in [h_t, sum of the completion's h up to t / 128, t / 128].

    The reward arrives after the last token, so the value of a prefix depends on what
    was said so far, which a linear read of the last hidden state alone barely sees on
    a small model; the running sum carries it (a reward that counts something in the
    text is linear in it), and the position says how much is left. Zero-initialised, or
    carried from the adapter a job starts from (`load_value_head`), then fitted to the
    returns before the policy moves.
    """

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(2 * hidden_size + 1, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    @staticmethod
    def features(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, L, H] states and [B, L] completion mask → [B, L, 2H + 1] features (causal)."""
        weights = mask.to(states.dtype)[..., None]
        running = torch.cumsum(states * weights, dim=1) / CONTEXT_SCALE
        position = torch.cumsum(weights, dim=1) / CONTEXT_SCALE
        return torch.cat([states, running, position], dim=-1)

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(states.float(), mask)).squeeze(-1)


def save_value_head(head: ValueHead, out_dir: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in head.state_dict().items()},
              str(Path(out_dir) / VALUE_HEAD_FILE))


def load_value_head(adapter_dir: Path | None, hidden_size: int) -> dict[str, torch.Tensor] | None:
    """The value head saved beside an adapter, or None (none saved, or one of another shape:
    an earlier head format or another model, which a new head replaces)."""
    if adapter_dir is None or not (Path(adapter_dir) / VALUE_HEAD_FILE).is_file():
        return None
    from safetensors.torch import load_file

    state = load_file(str(Path(adapter_dir) / VALUE_HEAD_FILE))
    if tuple(state.get("linear.weight", torch.empty(0)).shape) != (1, 2 * hidden_size + 1):
        return None
    return state


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
                          initial_value_head: dict[str, torch.Tensor] | None = None,
                          on_progress: Progress | None = None) -> tuple[dict[str, float], ValueHead | None]:
    """Train `model`'s trainable (LoRA) parameters in place; returns final metrics and the
    PPO value head (None for the other algorithms)."""
    ppo = algorithm == "ppo_gae"
    # `model` is a transformers model; nn.Module's __getattr__ types `config` as Tensor | Module.
    head = ValueHead(model.config.hidden_size) if ppo else None  # type: ignore[union-attr,arg-type]
    if head is not None and initial_value_head is not None and params["fit_critic"]:
        head.load_state_dict(initial_value_head)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if head is not None and params["fit_critic"]:
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
        fixed = (_ppo_fixed(model, head, rollouts, params, pad_id) if ppo  # type: ignore[arg-type]
                 else _pg_fixed(model, rollouts, algorithm, params, pad_id))
        start = 0
    stats.update({k[len("stat_"):]: float(v) for k, v in fixed.items() if k.startswith("stat_")})

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
    initial, full = initial_logprobs(model, rollouts, pad_id, params["forward_batch_size"])
    _, gap = behaviour_logprobs(rollouts, full, initial)
    return {"advantages": torch.tensor(values, dtype=torch.float32), "old_logp": initial,
            "targets": full.targets, "stat_sampler_logprob_gap": torch.tensor(gap),
            **{f"stat_{k}": torch.tensor(v) for k, v in stats.items()}}


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
    """Old log-probs, the critic fitted to the returns, its values, and GAE with them.

    The old log-probs are the sampler's where it reported them and they agree with the
    trainer's score of the same distribution within MAX_SAMPLER_GAP, else the initial
    policy's.

    The reward comes at the last token, so the return of token t is gamma^(T-1-t) r. The
    head is fitted in closed form on the frozen hidden states: ridge regression pulled
    towards the head it starts from (carried from the previous update), so a few rollouts
    refine it rather than replace it. `fit_critic` false keeps V at 0 (the ablation).
    """
    chunk = params["forward_batch_size"]
    full = make_batch(rollouts, pad_id)
    returns = torch.zeros(full.targets.shape, dtype=torch.float32)
    for b, r in enumerate(rollouts):
        positions = full.targets[b].nonzero().flatten()
        count = len(positions)
        returns[b, positions] = torch.tensor([params["gamma"] ** (count - 1 - k) * r.reward for k in range(count)],
                                             dtype=torch.float32)
    initial = torch.zeros(full.targets.shape, dtype=torch.float32)
    size = head.linear.in_features + 1
    gram = torch.zeros((size, size), dtype=torch.float64)
    moment = torch.zeros(size, dtype=torch.float64)
    error_before = 0.0
    for indices, batch, logp, states in forward_chunks(model, rollouts, pad_id, chunk, hidden=params["fit_critic"]):
        initial[indices, : logp.shape[1]] = logp
        if states is None:
            continue
        x = head.features(states, batch.targets)[batch.targets].double()
        y = returns[indices, : logp.shape[1]][batch.targets].double()
        with torch.no_grad():
            error_before += float(((head.linear(x.float()).squeeze(-1).double() - y) ** 2).sum())
        features = torch.cat([x, torch.ones((len(x), 1), dtype=torch.float64)], dim=1)
        gram += features.T @ features
        moment += features.T @ y
    tokens = int(full.targets.sum())
    values = torch.zeros(full.targets.shape, dtype=torch.float32)
    stats: dict[str, float] = {}
    if params["fit_critic"]:
        previous = torch.cat([head.linear.weight.detach().double().flatten(), head.linear.bias.detach().double()])
        ridge = params["critic_ridge"] * float(gram.diagonal().mean()) + 1e-8
        solved = torch.linalg.solve(gram + ridge * torch.eye(size, dtype=torch.float64), moment + ridge * previous)
        with torch.no_grad():
            head.linear.weight.copy_(solved[:-1].float()[None, :])
            head.linear.bias.copy_(solved[-1:].float())
        error_after = 0.0
        for indices, batch, _, states in forward_chunks(model, rollouts, pad_id, chunk, hidden=True):
            with torch.no_grad():
                predicted = head(states, batch.targets)  # type: ignore[arg-type]
            values[indices, : predicted.shape[1]] = torch.where(batch.targets, predicted, 0.0)
            error_after += float(((predicted - returns[indices, : predicted.shape[1]])[batch.targets] ** 2).sum())
        stats = {"value_loss_before_fit": 0.5 * error_before / max(tokens, 1),
                 "value_loss_after_fit": 0.5 * error_after / max(tokens, 1)}
    behaviour, gap = behaviour_logprobs(rollouts, full, initial)
    trusted = gap <= MAX_SAMPLER_GAP
    old_logp = behaviour if trusted else initial
    stats["sampler_logprobs_used"] = float(trusted)
    advantage = torch.zeros_like(initial)
    for b, r in enumerate(rollouts):
        positions = full.targets[b].nonzero().flatten()
        if len(positions) == 0:
            continue
        token_rewards = [0.0] * (len(positions) - 1) + [r.reward]
        a, _ = adv.gae(token_rewards, values[b, positions].tolist(), params["gamma"], params["lam"])
        advantage[b, positions] = torch.tensor(a, dtype=torch.float32)
    mask = full.targets
    if params["normalize_advantages"]:
        mean = masked_mean(advantage, mask)
        std = masked_mean((advantage - mean) ** 2, mask).sqrt()
        advantage = torch.where(mask, (advantage - mean) / (std + 1e-8), torch.zeros_like(advantage))
    spread = float(masked_mean((returns - masked_mean(returns, mask)) ** 2, mask).sqrt())
    return {"old_logp": old_logp, "old_values": values, "advantages": advantage, "returns": returns,
            "targets": mask, "value_clip": torch.tensor(params["value_clip"] * max(spread, 1e-6)),
            "stat_sampler_logprob_gap": torch.tensor(gap),
            **{f"stat_{k}": torch.tensor(v) for k, v in stats.items()}}


def _rows(fixed: torch.Tensor, targets: torch.Tensor, indices: list[int], batch: Batch) -> torch.Tensor:
    """A precomputed [N, L-1] tensor's rows for `indices`, realigned to the minibatch's width."""
    out = torch.zeros(batch.targets.shape, dtype=fixed.dtype)
    for b, i in enumerate(indices):
        out[b, batch.targets[b]] = fixed[i, targets[i]]
    return out


def _ppo_loss(model: nn.Module, head: ValueHead, batch: Batch, indices: list[int],
              fixed: dict[str, Any], params: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped surrogate + clipped value loss (the PPO objective); the value clip is
    `value_clip` times the spread of the returns, around the fitted values."""
    logp, states = token_logprobs(model, batch, hidden=params["fit_critic"])
    old_logp, old_values, advantage, returns = (
        _rows(fixed[k], fixed["targets"], indices, batch)
        for k in ("old_logp", "old_values", "advantages", "returns"))
    mask = batch.targets
    pg, clipped = _clipped_surrogate(logp, old_logp, advantage, mask, params["clip"])
    metrics = {"pg_loss": float(pg.detach()), "clip_frac": float(clipped)}
    if not params["fit_critic"]:
        return pg, metrics
    values = head(states, mask)  # type: ignore[arg-type]
    radius = float(fixed["value_clip"])
    value_clipped = old_values + torch.clamp(values - old_values, -radius, radius)
    value_loss = 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (value_clipped - returns) ** 2), mask)
    metrics["value_loss"] = float(value_loss.detach())
    return pg + params["vf_coef"] * value_loss, metrics
