"""Weight training for the target model: rollouts in, a LoRA adapter out.

Everything here must be reproducible from recorded inputs (an adapter is an artifact
named by the hash of what produced it), so every torch computation runs inside
`deterministic_torch`: one thread, deterministic kernels, a fixed seed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def deterministic_torch(seed: int) -> Iterator[None]:
    """Run a block single-threaded with deterministic kernels and seeded RNGs, then restore.

    Float reductions are order dependent, so more than one thread can change the
    last bits of a weight; the previous global settings are restored so callers
    (the sampling backend, other tests) keep theirs.
    """
    import random

    import numpy as np
    import torch

    threads = torch.get_num_threads()
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        torch.set_num_threads(threads)
