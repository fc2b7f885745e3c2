from __future__ import annotations

import pytest

from sia.reward_shape import classify_rewards


@pytest.mark.parametrize("rewards, groups, kind, algorithm", [
    ([1.0, 0.0, 1.0, 0.0, 0.0, 1.0], None, "binary", "grpo"),
    ([1.0] + [0.0] * 19, None, "sparse_high", "entropic"),
    ([1.0] * 9 + [0.0], None, "binary", "best_of_n"),
    ([0.0, 0.5, 1.0, 0.5, 0.0, 1.0, 0.5], None, "categorical", "reinforce_kl"),
    ([0.1, 0.12, 0.09, 0.11, 0.1, 0.13, 0.08, 0.1, 0.11, 0.12, 0.1, 9.0], None, "heavy_tailed", "entropic"),
    ([0.11, 0.23, 0.35, 0.42, 0.5, 0.58, 0.66, 0.71, 0.83, 0.9], None, "continuous", "ppo_gae"),
    ([0.0, 0.0, 0.0], None, "constant", "best_of_n"),
    ([1.0, 0.0, 1.0, 0.0], [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], "pairwise", "dpo"),
    ([], None, "constant", "best_of_n"),
])
def test_each_reward_shape_recommends_its_algorithm(rewards: list[float], groups: list[list[float]] | None,
                                                    kind: str, algorithm: str) -> None:
    shape = classify_rewards(rewards, groups)
    assert (shape.kind, shape.recommended_algorithm) == (kind, algorithm)
    assert shape.reason


def test_statistics_are_reported() -> None:
    shape = classify_rewards([1.0, 0.0, 1.0, 0.0])
    assert (shape.mean, shape.std, shape.n) == (0.5, 0.5, 4)
