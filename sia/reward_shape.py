"""Reward-shape analysis: which training algorithm the dev rewards call for (pure).

The Feedback Agent is shown this recommendation and may override it with a reason;
both are recorded. The rules follow what each algorithm needs from its signal:

* no variance at all → nothing to learn from relative rewards: best-of-N cloning of
  whatever succeeded (or nothing) is the only option;
* binary, successes rare (< 15%) → entropic advantage weighting, which up-weights the few
  high-reward rollouts instead of averaging them away;
* binary, successes common (> 70%) → best-of-N behavioural cloning on the successes;
* binary otherwise → GRPO: group-relative, no value network, made for pass/fail outcomes;
* a few discrete levels (categorical) → REINFORCE with a leave-one-out baseline and KL;
* continuous and heavy-tailed (skew > 2) → entropic weighting again (rare high rewards);
* continuous and dense → PPO with GAE, which uses the full scalar signal;
* several rollouts per prompt with different rewards (pairwise-comparable) → DPO.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RewardShape:
    kind: str
    recommended_algorithm: str
    reason: str
    mean: float
    std: float
    n: int


def classify_rewards(
    rewards: Sequence[float], groups: Sequence[Sequence[float]] | None = None
) -> RewardShape:
    """Classify dev rewards; `groups` are rewards of repeated rollouts of the same prompt."""
    n = len(rewards)
    mean = sum(rewards) / n if n else 0.0
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / n) if n else 0.0

    def shape(kind: str, algorithm: str, reason: str) -> RewardShape:
        return RewardShape(kind, algorithm, reason, mean, std, n)

    if groups and sum(1 for g in groups if len(set(g)) > 1) >= max(1, len(groups) // 2):
        return shape("pairwise", "dpo",
                     "most prompts have rollouts with different rewards: preference pairs")
    levels = set(rewards)
    if len(levels) <= 1:
        return shape("constant", "best_of_n", "no reward variance: clone the best rollouts")
    if levels <= {0.0, 1.0}:
        rate = mean
        if rate < 0.15:
            return shape("sparse_high", "entropic",
                         f"binary with rare successes ({rate:.0%}): up-weight them")
        if rate > 0.7:
            return shape("binary", "best_of_n",
                         f"binary with frequent successes ({rate:.0%}): clone them")
        return shape("binary", "grpo", f"binary pass/fail at {rate:.0%}: group-relative advantages")
    if len(levels) <= 5:
        return shape("categorical", "reinforce_kl",
                     f"{len(levels)} discrete reward levels: REINFORCE, leave-one-out baseline")
    skew = sum(((r - mean) / std) ** 3 for r in rewards) / n if std > 0 else 0.0
    if skew > 2.0:
        return shape("heavy_tailed", "entropic", f"continuous, right-skewed (skew {skew:.1f})")
    return shape("continuous", "ppo_gae", "dense continuous reward: PPO with GAE")
