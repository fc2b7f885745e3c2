"""The openproblems denoising MSE: error in log-normalised space against held-out molecules.

Followed: openproblems-bio/openproblems `openproblems/tasks/denoising/metrics/mse.py` and
its successor openproblems-bio/task_denoising `src/metrics/mse/script.py`. Definition:

    norm(Y)_cg = log1p( target_sum * Y_cg / sum_g' Y_cg' )      (target_sum = 10,000)
    mse_norm   = mean over all cells c and genes g of (norm(X_test) - norm(denoised))^2

i.e. scanpy's `normalize_total(target_sum=1e4)` then `log1p` on both matrices, then
`sklearn.metrics.mean_squared_error` (the plain mean over every entry). A cell whose total
is 0 stays all-zero, as scanpy leaves it. Because each cell is rescaled to the same total,
the train/test depth ratio (0.9 : 0.1) and any global scale of the denoised matrix cancel:
no separate ratio scaling is needed (the earliest openproblems version scaled both to the
median test total instead of 10,000; the current one uses 10,000).
"""

from __future__ import annotations

import numpy as np

TARGET_SUM = 10_000.0


def log_normalise(matrix: np.ndarray, target_sum: float = TARGET_SUM) -> np.ndarray:
    """Each row scaled to `target_sum` then log1p; all-zero rows stay zero."""
    values = np.asarray(matrix, dtype=np.float64)
    totals = values.sum(axis=1, keepdims=True)
    safe = np.where(totals > 0, totals, 1.0)
    return np.log1p(values * (target_sum / safe))


def mse_norm(test_counts: np.ndarray, denoised: np.ndarray, target_sum: float = TARGET_SUM) -> float:
    """openproblems' denoising MSE between held-out counts and a denoised matrix; lower is better."""
    test_counts, denoised = np.asarray(test_counts), np.asarray(denoised)
    if test_counts.shape != denoised.shape:
        raise ValueError(f"shape mismatch: test {test_counts.shape} vs denoised {denoised.shape}")
    difference = log_normalise(test_counts, target_sum) - log_normalise(denoised, target_sum)
    return float(np.mean(difference**2))
