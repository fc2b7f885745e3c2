"""TriMul kernel task (GPU MODE bioml/trimul): reference outgoing triangle update, inputs, evaluator.

Importing this package imports torch; the CLI's fast paths must not import it.
"""

from sia.tasks.trimul.evaluator import (
    CPU_SPECS,
    GPU_BENCHMARK_CASES,
    GPU_TEST_CASES,
    TIMED_SEED_STEP,
    CaseTiming,
    TrimulCase,
    TrimulResult,
    correctness_cases,
    evaluate,
    evaluate_calls,
    in_process,
    mismatch,
    timed_seed,
    timing_cases,
)
from sia.tasks.trimul.reference import (
    ShapeSpec,
    TriMul,
    TrimulInputs,
    make_inputs,
    module_from_weights,
    trimul_reference,
)

__all__ = [
    "CPU_SPECS",
    "GPU_BENCHMARK_CASES",
    "GPU_TEST_CASES",
    "TIMED_SEED_STEP",
    "CaseTiming",
    "ShapeSpec",
    "TriMul",
    "TrimulCase",
    "TrimulInputs",
    "TrimulResult",
    "correctness_cases",
    "evaluate",
    "evaluate_calls",
    "in_process",
    "make_inputs",
    "mismatch",
    "timed_seed",
    "module_from_weights",
    "timing_cases",
    "trimul_reference",
]
