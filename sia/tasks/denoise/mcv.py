"""Molecular cross-validation (Batson, Royer & Webber 2019): split molecules, not cells.

Each observed molecule goes to the training half with probability `p`, independently:
`X_train ~ Binomial(X, p)` and `X_test = X - X_train`. For Poisson counts the halves are
independent Poisson draws of the same underlying expression, so how well a denoiser of
`X_train` predicts `X_test` measures recovered signal without needing ground truth.
openproblems splits with `train_fraction=0.9` (`split_molecules(X, 0.9, 0.0, ...)` in
openproblems/tasks/denoising/datasets/utils.py), which is the default here.
"""

from __future__ import annotations

import numpy as np

from sia.tasks.denoise.streams import stream

TRAIN_FRACTION = 0.9


def split_counts(
    counts: np.ndarray, seed: int, train_fraction: float = TRAIN_FRACTION
) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) halves of an integer count matrix by binomial thinning drawn from the
    seed's "thinning" stream (independent of the stream that simulated the counts)."""
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must lie strictly between 0 and 1, got {train_fraction}")
    counts = np.asarray(counts)
    if counts.size and (not np.all(np.isfinite(counts)) or not np.array_equal(counts, np.round(counts))):
        raise ValueError("molecular cross-validation needs integer counts")
    if counts.size and counts.min() < 0:
        raise ValueError("counts must be non-negative")
    whole = counts.astype(np.int64)
    train = stream(seed, "thinning").binomial(whole, train_fraction)
    return train, whole - train
