"""Reward-shape analysis: which training algorithm the rewards call for (pure).

The Feedback Agent is shown this recommendation and may override it with a reason;
both are recorded. `classify_rewards` reads what the trainer will see: the reward of
every sampled completion, grouped by the prompt it answers (rollouts of one prompt).
Its rules follow what each algorithm needs from its signal:

* no group with two different rewards, and every reward equal → no learning signal at
  all (recommended algorithm None: every algorithm's update would be a no-op);
* no group with two different rewards, but rewards differ between prompts → PPO with
  GAE, whose learned baseline compares across prompts (group-relative ones see zeros);
* no spread anywhere, every completion rewarded → best-of-N cloning of them;
* binary, successes rare (< 15%) → entropic advantage weighting, which up-weights the few
  high-reward rollouts instead of averaging them away;
* binary, successes common (> 70%) → best-of-N behavioural cloning on the successes;
* binary otherwise → GRPO: group-relative, no value network, made for pass/fail outcomes;
* a few discrete levels, most groups spread → DPO on preference pairs within groups;
* a few discrete levels otherwise → REINFORCE with a leave-one-out baseline and KL;
* continuous and heavy-tailed (skew > 2) → entropic weighting again (rare high rewards);
* continuous, most groups spread → GRPO: each prompt's own mean is an exact baseline;
* continuous otherwise → PPO with GAE, whose critic is the baseline across prompts.

`classify_episode_scores` is the earlier classification of per-episode dev scores. It
is kept, unchanged, because `decide` recorded its answer in the feedback requests of
existing runs, and replaying them must ask the same.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RewardShape:
    kind: str
    recommended_algorithm: str | None
    reason: str
    mean: float
    std: float
    n: int
    groups_with_spread: int = 0
    groups: int = 0


def _moments(rewards: Sequence[float]) -> tuple[float, float]:
    n = len(rewards)
    mean = sum(rewards) / n if n else 0.0
    return mean, (math.sqrt(sum((r - mean) ** 2 for r in rewards) / n) if n else 0.0)


def classify_rewards(groups: Sequence[Sequence[float]]) -> RewardShape:
    """Classify per-completion rewards, one list per prompt (as the trainer groups them)."""
    rewards = [r for group in groups for r in group]
    n = len(rewards)
    mean, std = _moments(rewards)
    spread = sum(1 for g in groups if len(set(g)) > 1)

    def shape(kind: str, algorithm: str | None, reason: str) -> RewardShape:
        return RewardShape(kind, algorithm, reason, mean, std, n, spread, len(groups))

    if n == 0:
        return shape("no_signal", None, "no learning signal: no sampled completion was recorded "
                                        "(no rollout reached the model)")
    if spread == 0:
        where = f"none of the {len(groups)} prompts has two completions with different rewards"
        if len(set(rewards)) > 1:
            return shape("across_prompts", "ppo_gae",
                         f"{where}, but rewards differ between prompts: PPO's learned baseline")
        if rewards and rewards[0] > 0:
            return shape("all_rewarded", "best_of_n", f"{where}; every completion is rewarded: clone them")
        level = f" (all {rewards[0]:g})" if rewards else ""
        return shape("no_signal", None, f"no learning signal: {where} and every reward is equal{level}")
    levels = set(rewards)
    if levels <= {0.0, 1.0}:
        if mean < 0.15:
            return shape("sparse_high", "entropic", f"binary with rare successes ({mean:.0%}): up-weight them")
        if mean > 0.7:
            return shape("binary", "best_of_n", f"binary with frequent successes ({mean:.0%}): clone them")
        return shape("binary", "grpo", f"binary pass/fail at {mean:.0%}: group-relative advantages")
    if len(levels) <= 5:
        if spread >= max(1, len(groups) // 2):
            return shape("pairwise", "dpo", f"{len(levels)} reward levels, {spread} of {len(groups)} prompts "
                                             "with completions of different rewards: preference pairs")
        return shape("categorical", "reinforce_kl",
                     f"{len(levels)} discrete reward levels: REINFORCE, leave-one-out baseline")
    skew = sum(((r - mean) / std) ** 3 for r in rewards) / n if std > 0 else 0.0
    if skew > 2.0:
        return shape("heavy_tailed", "entropic", f"continuous, right-skewed (skew {skew:.1f})")
    if spread >= max(1, len(groups) // 2):
        return shape("continuous", "grpo", f"continuous reward, {spread} of {len(groups)} prompts with "
                                           "spread: each group's own mean is the baseline, no critic to fit")
    return shape("continuous", "ppo_gae", f"continuous reward, only {spread} of {len(groups)} prompts with "
                                          "spread: PPO with GAE, its critic compares across prompts")


def classify_episode_scores(
    rewards: Sequence[float], groups: Sequence[Sequence[float]] | None = None
) -> RewardShape:
    """The earlier classification of per-episode dev scores (see the module docstring)."""
    n = len(rewards)
    mean, std = _moments(rewards)

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
