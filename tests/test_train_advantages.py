"""Advantage estimators against numbers worked out by hand (in the comments)."""

from __future__ import annotations

import math

import pytest

from sia.train.advantages import LN2, adaptive_beta, entropic, gae, grpo, reinforce_loo


def test_grpo_normalises_within_each_group() -> None:
    # [1, 0, 0, 1]: mean 0.5, population std 0.5 -> +-0.5 / (0.5 + 1e-6) = +-0.999998
    # [1, 2, 3]: mean 2, std sqrt(2/3) = 0.8164966 -> -1/0.8164976, 0, +1/0.8164976 = -+1.2247434
    # [2, 2]: std 0 -> zeros
    out = grpo([[1.0, 0.0, 0.0, 1.0], [1.0, 2.0, 3.0], [2.0, 2.0]])
    assert out[0] == pytest.approx([0.999998, -0.999998, -0.999998, 0.999998], abs=1e-6)
    assert out[1] == pytest.approx([-1.2247434, 0.0, 1.2247434], abs=1e-6)
    assert out[2] == [0.0, 0.0]


def test_reinforce_leave_one_out() -> None:
    # [1, 0, 0]: A0 = 1 - (0+0)/2 = 1; A1 = 0 - (1+0)/2 = -0.5; A2 = -0.5
    # [3, 1]: A0 = 3 - 1 = 2; A1 = 1 - 3 = -2; a group of one has no baseline -> 0
    assert reinforce_loo([[1.0, 0.0, 0.0], [3.0, 1.0], [5.0]]) == [[1.0, -0.5, -0.5], [2.0, -2.0], [0.0]]


def test_entropic_fixed_beta() -> None:
    # beta = ln 3, r = [1, 0, 0]: e = [3, 1, 1], mean 5/3
    # w0 = 3 / (5/3) = 1.8 -> A0 = 0.8; w1 = w2 = 1 / (5/3) = 0.6 -> A = -0.4
    advantages, betas = entropic([[1.0, 0.0, 0.0]], beta=math.log(3.0))
    assert advantages[0] == pytest.approx([0.8, -0.4, -0.4])
    assert betas == [pytest.approx(math.log(3.0))]


def _kl_uniform(rewards: list[float], beta: float) -> float:
    # independent of the module: q = softmax(beta r), KL = sum q log(q n)
    e = [math.exp(beta * r) for r in rewards]
    q = [x / sum(e) for x in e]
    return sum(p * math.log(p * len(q)) for p in q)


def test_entropic_adaptive_beta_hits_ln2() -> None:
    rewards = [1.0, 0.0, 0.0, 0.0]
    advantages, (beta,) = entropic([rewards])
    # KL(q||u) = ln 4 - H(q) with q = (p, (1-p)/3 x3), p = e^b / (e^b + 3); at the answer H(q) = ln 2
    assert _kl_uniform(rewards, beta) == pytest.approx(LN2, abs=1e-6)
    p = math.exp(beta) / (math.exp(beta) + 3)
    assert -p * math.log(p) - (1 - p) * math.log((1 - p) / 3) == pytest.approx(LN2, abs=1e-6)
    # mean e = (e^b + 3) / 4: A0 = 4 e^b / (e^b + 3) - 1; A1 = 4 / (e^b + 3) - 1
    eb = math.exp(beta)
    assert advantages[0] == pytest.approx([4 * eb / (eb + 3) - 1] + [4 / (eb + 3) - 1] * 3, rel=1e-9)


def test_entropic_adaptive_beta_clamps() -> None:
    # constant rewards: any beta gives q = uniform, KL = 0 -> beta 0 and no advantage
    advantages, betas = entropic([[0.5, 0.5, 0.5]])
    assert betas == [0.0] and advantages == [[0.0, 0.0, 0.0]]
    # n = 2: KL <= ln 2 with equality only as beta -> inf, so the cap (64 / spread = 64)
    assert adaptive_beta([1.0, 0.0]) == 64.0
    # two of four maximal: KL <= ln(4/2) = ln 2, again unreachable -> cap (64 / 2 = 32)
    assert adaptive_beta([2.0, 2.0, 0.0, 0.0]) == 32.0
    assert entropic([[7.0]]) == ([[0.0]], [0.0])


def test_gae_three_steps() -> None:
    # rewards [0, 0, 1], values [0.5, 0.6, 0.7], gamma 0.9, lam 0.8 (gamma*lam = 0.72)
    # d2 = 1 + 0 - 0.7 = 0.3                 A2 = 0.3
    # d1 = 0 + 0.9*0.7 - 0.6 = 0.03          A1 = 0.03 + 0.72*0.3 = 0.246
    # d0 = 0 + 0.9*0.6 - 0.5 = 0.04          A0 = 0.04 + 0.72*0.246 = 0.21712
    # returns = A + V = [0.71712, 0.846, 1.0]
    advantages, returns = gae([0.0, 0.0, 1.0], [0.5, 0.6, 0.7], gamma=0.9, lam=0.8)
    assert advantages == pytest.approx([0.21712, 0.246, 0.3])
    assert returns == pytest.approx([0.71712, 0.846, 1.0])


def test_gae_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError):
        gae([1.0], [0.1, 0.2], gamma=1.0, lam=1.0)


@pytest.mark.parametrize("size", [2, 16])
def test_entropic_at_the_beta_cap_is_finite_bounded_and_centred(size: int) -> None:
    # a group of two with different rewards: adaptive beta hits its cap (64 / spread),
    # where a leave-one-out normaliser was 1 + e^-64 - 1 = 0.0 (ZeroDivisionError)
    rewards = [1.0] + [0.0] * (size - 1)
    advantages, (beta,) = entropic([rewards])
    assert beta == 64.0 or size > 2
    assert all(math.isfinite(a) and -1.0 <= a <= size - 1 + 1e-9 for a in advantages[0])
    assert sum(advantages[0]) == pytest.approx(0.0, abs=1e-9)
    assert advantages[0][0] > 0 > advantages[0][1]
    huge, _ = entropic([[5.0, -5.0]], beta=1000.0)
    assert huge == [[pytest.approx(1.0), pytest.approx(-1.0)]]
