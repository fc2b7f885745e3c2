"""The best score any denoiser can expect: the metric's Bayes optimum given the truth.

Under molecular cross-validation of Poisson counts the held-out part of cell c is
`T_cg ~ Poisson((1 - p) lambda_cg)`, independent of the training part given `lambda`. Given
the cell's held-out total `S_c`, its genes' counts are `Multinomial(S_c, pi_c)` with
`pi_cg = lambda_cg / sum_g lambda_cg`, so each `T_cg ~ Binomial(S_c, pi_cg)` and the metric's
target `Y_cg = log1p(10^4 T_cg / S_c)` has the exact conditional mean

    m_cg = sum_t Binomial(t; S_c, pi_cg) * log1p(10^4 t / S_c).

A denoiser sees only the training part, independent of (T, S) given `lambda`, so for its
log-normalised output `y`: E[(Y - y)^2] = E[(Y - m)^2] + E[(m - y)^2] >= E[(Y - m)^2]. The
MSE of `m` is therefore a floor no denoiser can beat in expectation (on one draw only by
sampling noise), unlike a Monte-Carlo oracle, which more draws improve. `m` is a bound, not
a competitor: it knows each cell's held-out total, and its rows need not re-normalise to
10,000 as a denoiser's output does.
"""

from __future__ import annotations

import numpy as np

from sia.tasks.denoise.metric import TARGET_SUM, log_normalise

TAIL_SDS = 12.0
"""Binomial terms beyond mean + 12 sd (+ 12) are dropped: their mass is below 1e-15."""


def conditional_target(rates: np.ndarray, test_totals: np.ndarray, target_sum: float = TARGET_SUM,
                       tail_sds: float | None = TAIL_SDS) -> np.ndarray:
    """`m`: E[log-normalised held-out counts | true rates, each cell's held-out total].

    `tail_sds=None` sums every term up to the cell's total (exact, slower; for checking).
    """
    rates = np.asarray(rates, dtype=np.float64)
    totals = np.asarray(test_totals, dtype=np.int64)
    if totals.shape != rates.shape[:1] or rates.ndim != 2:
        raise ValueError(f"need one held-out total per cell: rates {rates.shape}, totals {totals.shape}")
    if np.any(rates < 0) or np.any(rates.sum(axis=1) <= 0):
        raise ValueError("rates must be non-negative with a positive total in every cell")
    proportions = rates / rates.sum(axis=1, keepdims=True)
    log_factorial = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, max(int(totals.max()), 1) + 1)))])
    target = np.zeros_like(rates)
    for cell, (total, pi) in enumerate(zip(totals, proportions)):
        if total == 0:
            continue  # an all-zero held-out cell normalises to zeros
        top = int(total)
        if tail_sds is not None:
            mean = total * float(pi.max())
            top = min(top, int(np.ceil(mean + tail_sds * np.sqrt(mean) + tail_sds)))
        t = np.arange(1, top + 1, dtype=np.float64)[:, None]
        with np.errstate(divide="ignore"):
            log_pmf = (log_factorial[total] - log_factorial[t.astype(np.int64)]
                       - log_factorial[total - t.astype(np.int64)]
                       + t * np.log(pi) + (total - t) * np.log1p(-pi))
        target[cell] = np.sum(np.exp(log_pmf) * np.log1p(target_sum * t / total), axis=0)
    return target


def bound_mse(test_counts: np.ndarray, rates: np.ndarray, target_sum: float = TARGET_SUM) -> float:
    """The MSE of the Bayes target `m` against the held-out counts (the scale's best end)."""
    test_counts = np.asarray(test_counts)
    target = conditional_target(rates, test_counts.sum(axis=1), target_sum)
    return float(np.mean((log_normalise(test_counts, target_sum) - target) ** 2))
