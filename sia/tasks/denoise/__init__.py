"""Single-cell RNA-seq count denoising (openproblems style): simulator, MCV split, metric, baselines, evaluator."""

from sia.tasks.denoise.baselines import (
    identity,
    magic,
    markov_matrix,
    oracle,
    pca_scores,
)
from sia.tasks.denoise.bound import bound_mse, conditional_target
from sia.tasks.denoise.evaluator import (
    DenoiseResult,
    evaluate,
    reference_mses,
    reward_from_mse,
)
from sia.tasks.denoise.mcv import TRAIN_FRACTION, split_counts
from sia.tasks.denoise.metric import TARGET_SUM, log_normalise, mse_norm
from sia.tasks.denoise.simulate import Simulation, SimulationParams, simulate
from sia.tasks.denoise.streams import STREAMS, stream

__all__ = [
    "STREAMS",
    "TARGET_SUM",
    "TRAIN_FRACTION",
    "DenoiseResult",
    "Simulation",
    "SimulationParams",
    "bound_mse",
    "conditional_target",
    "evaluate",
    "identity",
    "log_normalise",
    "magic",
    "markov_matrix",
    "mse_norm",
    "oracle",
    "pca_scores",
    "reference_mses",
    "reward_from_mse",
    "simulate",
    "split_counts",
    "stream",
]
