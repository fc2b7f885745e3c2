"""denoise evaluator: the answer's `denoise(train_counts)` is scored by
`sia.tasks.denoise.evaluate` on the sample's simulated data set, in a limited child process
(`sia.tasks.code_answers`).

Reward: the share of the possible improvement over no denoising, in [0, 1] (0 = no better
than returning the input, 1 = the metric's Bayes optimum given the ground truth,
`sia.tasks.denoise.bound`); 0 with a failure kind when the code does not compile, defines no
`denoise`, returns a bad matrix, crashes or runs out of time.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from sia.tasks.code_answers import run_isolated

_LIMITS = tomllib.loads(Path(__file__).with_name("task.toml").read_text(encoding="utf-8"))["limits"]


def reward(sample: dict, prediction: str, label: None) -> tuple[float, str | None]:
    config = {key: sample[key] for key in ("seed", "n_cells", "n_genes")}
    outcome = run_isolated("denoise", prediction, config, wall_s=_LIMITS["wall_s"],
                           cpu_s=_LIMITS["cpu_s"], memory_mb=_LIMITS["memory_mb"])
    return outcome.reward, outcome.failure
