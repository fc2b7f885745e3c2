"""denoise: how its data files are made (`python sia/tasks/bundled/denoise/task.py` rewrites them).

A sample is one simulated data set (its seed and size); the answer is the source of a module
defining `denoise(train_counts)`. Nothing is hidden to label (the data set is regenerated
from its seed by the evaluator), so every label is null.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from sia.tasks.splits import question_corpus, split_files, write_files

QUESTION = (
    "Write a Python module (numpy is available) defining denoise(train_counts) -> numpy array, "
    "a denoiser for single-cell RNA-seq counts. train_counts is an integer matrix, cells x genes "
    "(here {n_cells} x {n_genes}), holding 90% of each cell's sampled molecules (molecular "
    "cross-validation); return a non-negative, finite matrix of the same shape. It is scored by "
    "the openproblems MSE between log1p of both matrices normalised to 10,000 counts per cell "
    "against the held-out 10%: reward = (mse_no_denoising - mse) / (mse_no_denoising - "
    "mse_bound), clipped to [0, 1], where mse_bound is the MSE of the metric's Bayes optimum "
    "given the simulation's ground truth (no denoiser can beat it in expectation). Answer with "
    "the module source only."
)

SEEDS = {"train": [101, 102, 103, 104], "dev": [201, 202], "test": [301, 302]}
N_CELLS, N_GENES = 300, 2000


def generated_files() -> dict[str, str]:
    samples: dict[str, list[dict[str, Any]]]
    samples = {split: [{"id": f"dn-{split}-{index}",
                        "question": QUESTION.format(n_cells=N_CELLS, n_genes=N_GENES),
                        "seed": seed, "n_cells": N_CELLS, "n_genes": N_GENES}
                       for index, seed in enumerate(seeds, start=1)]
               for split, seeds in SEEDS.items()}
    return split_files(samples, {s["id"]: None for rows in samples.values() for s in rows})


def generate(folder: Path) -> None:
    write_files(folder, generated_files())


def pretraining_corpus(samples: list[dict], seed: int) -> list[str]:
    return question_corpus(samples)


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
