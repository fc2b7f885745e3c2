"""A denoiser reached in the answer sandbox: the training counts out, a float64 matrix back.

Only the training half leaves the scorer; the held-out half and the ground truth stay in
it, where `evaluate` computes the metric.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from sia.tasks.answer_sandbox import (
    AnswerSandbox,
    CandidateRaised,
    SandboxLost,
    UnusableOutput,
    array_specs,
)


def remote_denoiser(sandbox: AnswerSandbox) -> Callable[[np.ndarray], np.ndarray]:
    """Runs the sandbox's loaded `denoise`; replies larger than a float64 copy of the input
    (plus 1 MiB) are refused unread."""

    def denoise(train_counts: np.ndarray) -> np.ndarray:
        counts = np.ascontiguousarray(train_counts, dtype=np.int64)
        specs, payload = array_specs([("counts", "int64", counts.shape, counts.tobytes())])
        reply = sandbox.exchange({"op": "call", "arrays": specs}, payload,
                                 max_bytes=counts.size * 8 + 2**20)
        header = reply.header
        if "raised" in header:
            raise CandidateRaised(str(header["raised"])[:2000])
        if "problem" in header:
            raise UnusableOutput(str(header["problem"])[:2000])
        arrays = header.get("arrays")
        shape = arrays[0].get("shape") if isinstance(arrays, list) and arrays and isinstance(arrays[0], dict) else None
        if (not isinstance(shape, list) or len(shape) > 8
                or not all(isinstance(n, int) and n >= 0 for n in shape)
                or math.prod(shape) * 8 != len(reply.payload)):
            raise SandboxLost("incorrect", "the sandbox sent a malformed output")
        return np.frombuffer(reply.payload, dtype=np.float64).reshape(shape)

    return denoise
