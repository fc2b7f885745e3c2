"""trimul: how its data files are made (`python sia/tasks/bundled/trimul/task.py` rewrites them).

A sample is one evaluation configuration (problem size, input seeds, timing repeats); the
answer is the source of a module defining `custom_kernel(x, mask, weights)`. There is
nothing hidden to label, so every label is null: the reward is measured, not looked up.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from sia.tasks.splits import question_corpus, split_files, write_files

QUESTION = (
    "Write a Python module (torch is available) defining custom_kernel(x, mask, weights) -> "
    "torch.Tensor, the outgoing triangle multiplicative update of AlphaFold2 (Algorithm 11), "
    "as fast as you can on this machine. x: float32 [B, N, N, C]; mask: float32 0/1 [B, N, N]; "
    "weights: dict of tensors 'norm.weight', 'norm.bias' [C], 'left_proj.weight', "
    "'right_proj.weight', 'left_gate.weight', 'right_gate.weight', 'out_gate.weight' [H, C], "
    "'to_out_norm.weight', 'to_out_norm.bias' [H], 'to_out.weight' [C, H]. Computation: "
    "x = LayerNorm_C(x); left = mask * (x W_left^T) * sigmoid(x W_left_gate^T); right likewise; "
    "out[b,i,j] = sum_k left[b,i,k] * right[b,j,k]; "
    "return (LayerNorm_H(out) * sigmoid(x W_out_gate^T)) W_to_out^T. All linear maps have no bias; "
    "outputs must match within rtol = atol = 2e-2. Answer with the module source only."
)

CONFIGS = {
    "train": [(1, 16, 32, 32, 11), (1, 24, 32, 32, 12), (2, 16, 32, 16, 13), (1, 32, 16, 32, 14)],
    "dev": [(1, 16, 32, 32, 21), (1, 32, 32, 32, 22)],
    "test": [(1, 24, 32, 32, 31), (2, 24, 16, 32, 32)],
}
"""(batch, seq_len, dim, hidden_dim, seed) per split: small CPU sizes, a few ms per call."""


def generated_files() -> dict[str, str]:
    samples: dict[str, list[dict[str, Any]]]
    samples = {split: [{"id": f"tm-{split}-{index}", "question": QUESTION, "batch": batch,
                        "seq_len": seq_len, "dim": dim, "hidden_dim": hidden_dim,
                        "seeds": [seed, seed + 1000], "repeats": 10, "warmup": 2}
                       for index, (batch, seq_len, dim, hidden_dim, seed) in enumerate(configs, start=1)]
               for split, configs in CONFIGS.items()}
    return split_files(samples, {s["id"]: None for rows in samples.values() for s in rows})


def generate(folder: Path) -> None:
    write_files(folder, generated_files())


def pretraining_corpus(samples: list[dict], seed: int) -> list[str]:
    return question_corpus(samples)


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
