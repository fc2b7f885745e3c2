from __future__ import annotations

import pytest

from sia.core.reward_shape import classify_episode_scores, classify_rewards


@pytest.mark.parametrize("groups, kind, algorithm", [
    ([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], "binary", "grpo"),
    ([[1.0] + [0.0] * 15, [0.0] * 16], "sparse_high", "entropic"),
    ([[1.0] * 16, [1.0] * 14 + [0.0, 0.0]], "binary", "best_of_n"),
    ([[0.0, 0.5, 1.0, 0.5], [0.0, 1.0, 0.5, 0.5]], "pairwise", "dpo"),
    ([[0.0, 0.5], [1.0, 1.0], [0.5, 0.5], [0.0, 0.0], [1.0, 1.0]], "categorical", "reinforce_kl"),
    ([[0.1, 0.12, 0.09, 0.11], [0.1, 0.13, 0.08, 0.1], [0.11, 0.12, 0.1, 9.0]], "heavy_tailed", "entropic"),
    ([[0.11, 0.23, 0.35, 0.42, 0.5], [0.58, 0.66, 0.71, 0.83, 0.9]], "continuous", "grpo"),
    ([[0.11, 0.23], [0.35, 0.35], [0.42, 0.42], [0.5, 0.5], [0.58, 0.58], [0.66, 0.66]], "continuous",
     "ppo_gae"),
    ([[1.0, 1.0], [0.0, 0.0]], "across_prompts", "ppo_gae"),
    ([[1.0, 1.0], [1.0, 1.0]], "all_rewarded", "best_of_n"),
])
def test_each_reward_shape_recommends_its_algorithm(groups: list[list[float]], kind: str, algorithm: str) -> None:
    shape = classify_rewards(groups)
    assert (shape.kind, shape.recommended_algorithm) == (kind, algorithm)
    assert shape.reason and shape.n == sum(len(g) for g in groups) and shape.groups == len(groups)


@pytest.mark.parametrize("size", [2, 16])
def test_no_spread_and_equal_rewards_is_no_signal_not_an_algorithm(size: int) -> None:
    # all-zero rewards used to recommend best-of-N, which then raised: nothing to clone
    shape = classify_rewards([[0.0] * size for _ in range(4)])
    assert (shape.kind, shape.recommended_algorithm, shape.groups_with_spread) == ("no_signal", None, 0)
    assert "no learning signal" in shape.reason
    empty = classify_rewards([])
    assert empty.recommended_algorithm is None and "no sampled completion was recorded" in empty.reason


def test_dpo_is_reachable_from_groups_of_completions() -> None:
    # the same per-episode scores the old classifier saw as "categorical"; with the groups
    # the trainer sees, most prompts offer preference pairs
    groups = [[0.0, 0.5, 1.0], [0.5, 0.0, 0.5], [1.0, 0.5, 0.5]]
    assert classify_rewards(groups).recommended_algorithm == "dpo"
    assert classify_episode_scores([0.0, 0.5, 1.0, 0.5, 0.0, 1.0, 0.5]).recommended_algorithm == "reinforce_kl"


def test_statistics_are_reported() -> None:
    shape = classify_rewards([[1.0, 0.0], [1.0, 0.0]])
    assert (shape.mean, shape.std, shape.n, shape.groups_with_spread) == (0.5, 0.5, 4, 2)


@pytest.mark.parametrize("rewards, kind, algorithm", [
    ([1.0, 0.0, 1.0, 0.0, 0.0, 1.0], "binary", "grpo"),
    ([0.0, 0.0, 0.0], "constant", "best_of_n"),
    ([0.11, 0.23, 0.35, 0.42, 0.5, 0.58, 0.66, 0.71, 0.83, 0.9], "continuous", "ppo_gae"),
])
def test_the_episode_score_classification_recorded_runs_replay_with_is_unchanged(
        rewards: list[float], kind: str, algorithm: str) -> None:
    shape = classify_episode_scores(rewards)
    assert (shape.kind, shape.recommended_algorithm) == (kind, algorithm)
