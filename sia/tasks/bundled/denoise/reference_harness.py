"""Reference harness for denoise: answers every sample with a self-contained MAGIC-style
diffusion denoiser (reward about 0.2). It does not call the model; a better harness asks
the model for a better denoiser and checks what it gets back."""

MAGIC_DENOISER = '''
import numpy as np


def _pca_scores(data, n_components):
    centred = data - data.mean(axis=0, keepdims=True)
    eigenvalues, eigenvectors = np.linalg.eigh(centred @ centred.T)
    order = np.argsort(eigenvalues)[::-1][: max(1, min(n_components, eigenvalues.size))]
    return eigenvectors[:, order] * np.sqrt(np.maximum(eigenvalues[order], 0.0))


def _markov(points, knn=5, knn_max=15, decay=1.0, thresh=1e-4):
    n = points.shape[0]
    squared = np.sum(points ** 2, axis=1)
    distances = np.sqrt(np.maximum(squared[:, None] + squared[None, :] - 2.0 * points @ points.T, 0.0))
    np.fill_diagonal(distances, 0.0)
    k = min(max(knn, 1), n - 1)
    bandwidth = np.partition(distances, k, axis=1)[:, k]
    bandwidth = np.where(bandwidth > 0, bandwidth, 1.0)
    kernel = np.exp(-((distances / bandwidth[:, None]) ** decay))
    kernel[kernel < thresh] = 0.0
    if knn_max + 1 < n:
        beyond = np.argpartition(distances, knn_max, axis=1)[:, knn_max + 1:]
        np.put_along_axis(kernel, beyond, 0.0, axis=1)
    kernel = (kernel + kernel.T) / 2.0
    return kernel / kernel.sum(axis=1, keepdims=True)


def denoise(train_counts, n_pca=100, t=3):
    counts = np.asarray(train_counts, dtype=np.float64)
    library = counts.sum(axis=1)
    transformed = np.sqrt(counts / np.where(library > 0, library, 1.0)[:, None])
    operator = _markov(_pca_scores(transformed, n_pca))
    diffused = np.linalg.matrix_power(operator, t) @ transformed
    return diffused ** 2 * library[:, None]
'''


def solve(sample, model):
    return MAGIC_DENOISER
