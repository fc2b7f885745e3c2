"""trimul evaluator: the answer's `custom_kernel` is checked against the reference and timed
by `sia.tasks.trimul.evaluate` in a limited child process (`sia.tasks.code_answers`); every
timed call gets fresh inputs and is checked again, so a kernel that memoises outputs scores
no better than the reference.

Reward: speedup over the reference (reference time / candidate time, 1.0 = as fast),
clipped to the task's range [0, 10]; 0 with a failure kind when the code does not compile,
defines no `custom_kernel`, gives a wrong result, crashes or runs out of time.
Extra metrics: correct_rate (share of answers that passed the checks).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from sia.tasks.code_answers import run_isolated

_LIMITS = tomllib.loads(Path(__file__).with_name("task.toml").read_text(encoding="utf-8"))["limits"]
CONFIG_FIELDS = ("batch", "seq_len", "dim", "hidden_dim", "seeds", "repeats", "warmup")


def reward(sample: dict, prediction: str, label: None) -> tuple[float, str | None]:
    config = {key: sample[key] for key in CONFIG_FIELDS if key in sample}
    outcome = run_isolated("trimul", prediction, config, wall_s=_LIMITS["wall_s"],
                           cpu_s=_LIMITS["cpu_s"], memory_mb=_LIMITS["memory_mb"])
    return outcome.reward, outcome.failure


def metrics(samples: list[dict], predictions: list, labels: list, rewards: list[float]) -> dict[str, float]:
    return {"correct_rate": sum(r > 0 for r in rewards) / len(rewards)}
