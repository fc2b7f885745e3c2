"""Reference denoisers: identity (no denoising), MAGIC-style diffusion, and a Monte-Carlo oracle.

Each denoiser maps a training count matrix (cells x genes) to a non-negative matrix of the
same shape; only relative values within a cell matter to the metric.

MAGIC follows openproblems' `openproblems/tasks/denoising/methods/magic.py`: normalise
each cell to total 1, sqrt, MAGIC (decay=1, t=3, exact solver, MAGIC's defaults n_pca=100,
knn=5, knn_max=3*knn), square, multiply back by the library size. MAGIC's graph (van Dijk
et al. 2018, built by graphtools) is written out in numpy: PCA of the transformed data; an
adaptive kernel whose bandwidth for cell i is the distance to its `knn`-th neighbour,
`K_ij = exp(-(d_ij / sigma_i)^decay)`, thresholded at `thresh` and cut to the `knn_max`
nearest cells; symmetrised as `(K + K^T) / 2`; row-normalised to a Markov matrix `P`; the
data diffused as `P^t X`. Distances are dense (cells^2 memory), fine for a few hundred cells.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from sia.tasks.denoise.mcv import TRAIN_FRACTION
from sia.tasks.denoise.metric import log_normalise
from sia.tasks.denoise.streams import stream

Denoiser = Callable[[np.ndarray], np.ndarray]


def identity(train_counts: np.ndarray) -> np.ndarray:
    """No denoising: the training counts themselves (openproblems' `no_denoising`)."""
    return np.asarray(train_counts, dtype=np.float64).copy()


def pca_scores(data: np.ndarray, n_components: int) -> np.ndarray:
    """Cell coordinates on the top principal components.

    Computed from the cells x cells Gram matrix of the centred data, whose eigenvectors
    scaled by sqrt(eigenvalue) equal U * S of its SVD: with far fewer cells than genes
    this is much cheaper than a full SVD.
    """
    centred = data - data.mean(axis=0, keepdims=True)
    eigenvalues, eigenvectors = np.linalg.eigh(centred @ centred.T)
    order = np.argsort(eigenvalues)[::-1][: max(1, min(n_components, eigenvalues.size))]
    return eigenvectors[:, order] * np.sqrt(np.maximum(eigenvalues[order], 0.0))


def markov_matrix(
    points: np.ndarray, knn: int = 5, knn_max: int | None = None, decay: float = 1.0, thresh: float = 1e-4
) -> np.ndarray:
    """Row-stochastic diffusion operator of MAGIC's adaptive-bandwidth kernel."""
    n = points.shape[0]
    squared = np.sum(points**2, axis=1)
    distances = np.sqrt(np.maximum(squared[:, None] + squared[None, :] - 2.0 * points @ points.T, 0.0))
    np.fill_diagonal(distances, 0.0)
    k = min(max(knn, 1), n - 1)
    bandwidth = np.partition(distances, k, axis=1)[:, k]
    bandwidth = np.where(bandwidth > 0, bandwidth, 1.0)
    kernel = np.exp(-((distances / bandwidth[:, None]) ** decay))
    kernel[kernel < thresh] = 0.0
    if knn_max is not None and knn_max + 1 < n:
        beyond = np.argpartition(distances, knn_max, axis=1)[:, knn_max + 1:]
        np.put_along_axis(kernel, beyond, 0.0, axis=1)
    kernel = (kernel + kernel.T) / 2.0
    return kernel / kernel.sum(axis=1, keepdims=True)


def magic(
    train_counts: np.ndarray,
    n_pca: int = 100,
    knn: int = 5,
    knn_max: int | None = 15,
    decay: float = 1.0,
    t: int = 3,
    thresh: float = 1e-4,
) -> np.ndarray:
    """MAGIC-style diffusion denoising, returned on the count scale."""
    counts = np.asarray(train_counts, dtype=np.float64)
    library = counts.sum(axis=1)
    safe_library = np.where(library > 0, library, 1.0)
    transformed = np.sqrt(counts / safe_library[:, None])
    scores = pca_scores(transformed, n_pca)
    operator = markov_matrix(scores, knn=knn, knn_max=knn_max, decay=decay, thresh=thresh)
    diffused = np.linalg.matrix_power(operator, t) @ transformed
    return diffused**2 * library[:, None]


def oracle(true_rates: np.ndarray, seed: int, train_fraction: float = TRAIN_FRACTION, draws: int = 16) -> Denoiser:
    """A Monte-Carlo denoiser that ignores its input and uses the truth: a baseline, not a scale.

    The held-out half is `Poisson((1 - train_fraction) * rates)`. Returning the rates
    themselves is *not* optimal for a log-normalised MSE: log1p of a sparse count averages
    far below log1p of its mean. This baseline averages `draws` simulated test halves
    (from the seed's "oracle" stream, independent of the evaluation's thinning) in
    log-normalised space and returns `expm1` of the mean. More draws score better, and the
    metric's row normalisation costs it dearly, so it is no bound: the scale's best end is
    `bound.bound_mse`.
    """
    truth = np.asarray(true_rates, dtype=np.float64)
    rng = stream(seed, "oracle")
    expected = np.zeros_like(truth)
    for _ in range(draws):
        expected += log_normalise(rng.poisson((1.0 - train_fraction) * truth))
    prediction = np.expm1(expected / draws)

    def denoise(train_counts: np.ndarray) -> np.ndarray:
        if np.shape(train_counts) != truth.shape:
            raise ValueError(f"oracle built for shape {truth.shape}, given {np.shape(train_counts)}")
        return prediction.copy()

    return denoise
