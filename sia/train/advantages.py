"""Advantage estimators: how much better than expected each rollout (or token) was.

Pure functions over plain floats so each is checked against hand-computed numbers;
the losses in `policy_gradient` only multiply these into log-probabilities.
Group-based estimators take `rewards_by_group` (one list of rewards per prompt) and
return advantages in the same nested shape.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

LN2 = math.log(2.0)


def grpo(rewards_by_group: Sequence[Sequence[float]], eps: float = 1e-6) -> list[list[float]]:
    """(r - group mean) / (group std + eps), population std; a constant group gets zeros
    (nothing in it says which completion was better)."""
    out: list[list[float]] = []
    for rewards in rewards_by_group:
        n = len(rewards)
        mean = sum(rewards) / n if n else 0.0
        std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / n) if n else 0.0
        out.append([0.0] * n if std == 0.0 else [(r - mean) / (std + eps) for r in rewards])
    return out


def reinforce_loo(rewards_by_group: Sequence[Sequence[float]]) -> list[list[float]]:
    """A_i = r_i - mean of the other rewards of the group: an unbiased baseline (the sample
    itself is left out); a group of one has no baseline and gets 0."""
    out: list[list[float]] = []
    for rewards in rewards_by_group:
        n, total = len(rewards), sum(rewards)
        out.append([0.0] * n if n < 2 else [r - (total - r) / (n - 1) for r in rewards])
    return out


def kl_to_uniform(rewards: Sequence[float], beta: float) -> float:
    """KL(softmax(beta r) || uniform) = sum q log(q n)."""
    n = len(rewards)
    top = max(rewards)
    weights = [math.exp(beta * (r - top)) for r in rewards]
    total = sum(weights)
    return sum((w / total) * math.log(w / total * n) for w in weights if w > 0.0)


def adaptive_beta(rewards: Sequence[float], target: float = LN2, max_scaled: float = 64.0) -> float:
    """The beta >= 0 with KL(softmax(beta r) || uniform) = target, by bisection.

    KL grows monotonically with beta (its derivative is beta * Var_q(r)), from 0 to
    ln(n / number of maximal rewards). Constant rewards give 0; an unreachable target
    gives the cap, beta * (max r - min r) = `max_scaled`, i.e. nearly all weight on the best.
    """
    if len(rewards) < 2:
        return 0.0
    spread = max(rewards) - min(rewards)
    if spread == 0.0:
        return 0.0
    high = max_scaled / spread
    if kl_to_uniform(rewards, high) <= target:
        return high
    low = 0.0
    for _ in range(200):
        mid = (low + high) / 2.0
        if kl_to_uniform(rewards, mid) < target:
            low = mid
        else:
            high = mid
        if high - low <= 1e-15 * max(1.0, high):
            break
    return (low + high) / 2.0


def entropic(rewards_by_group: Sequence[Sequence[float]],
             beta: float | None = None) -> tuple[list[list[float]], list[float]]:
    """Entropic weights w_i = e_i / mean_j e_j with e_i = exp(beta r_i); A_i = w_i - 1.

    Up-weights rare high-reward rollouts exponentially. With `beta=None` each group gets
    the beta at which its softmax sits ln 2 away from uniform (`adaptive_beta`).
    Computed in log space, so no beta under the cap can overflow or divide by zero, and
    bounded: w_i = n softmax_i(beta r), so A_i lies in [-1, n - 1] and the advantages of
    a group sum to 0 (the mean is the baseline). A leave-one-out mean (j != i) is neither:
    at the beta cap the other term of a group of two is ~e^-64 of the best, and its weight
    ~e^64.
    Returns the advantages and the beta used per group.
    """
    advantages: list[list[float]] = []
    betas: list[float] = []
    for rewards in rewards_by_group:
        b = adaptive_beta(rewards) if beta is None else float(beta)
        betas.append(b)
        n = len(rewards)
        if n < 2:
            advantages.append([0.0] * n)
            continue
        scaled = [b * r for r in rewards]
        log_mean = _log_sum_exp(scaled) - math.log(n)
        advantages.append([math.exp(s - log_mean) - 1.0 for s in scaled])
    return advantages, betas


def _log_sum_exp(values: Sequence[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def gae(rewards: Sequence[float], values: Sequence[float], gamma: float,
        lam: float) -> tuple[list[float], list[float]]:
    """Generalised advantage estimation on one trajectory that ends after its last step.

    delta_t = r_t + gamma V_{t+1} - V_t (V after the end is 0), A_t = delta_t + gamma lam A_{t+1};
    returns_t = A_t + V_t are the value targets.
    """
    if len(rewards) != len(values):
        raise ValueError(f"{len(rewards)} rewards for {len(values)} values")
    advantages = [0.0] * len(rewards)
    running, next_value = 0.0, 0.0
    for t in reversed(range(len(rewards))):
        delta = rewards[t] + gamma * next_value - values[t]
        running = delta + gamma * lam * running
        advantages[t] = running
        next_value = values[t]
    return advantages, [a + v for a, v in zip(advantages, values)]
