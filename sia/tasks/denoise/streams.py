"""Independent random streams of one evaluation seed: simulation, thinning, oracle.

One integer seed names a data set, but the draws that simulate it, the binomial thinning
that splits its molecules and any Monte-Carlo oracle must not share a generator: with
`default_rng(seed)` for each, the thinning's uniforms are the very numbers that drew the
simulation's first parameters, and an oracle's simulated test halves replay the thinning.
`numpy.random.SeedSequence(seed).spawn` gives each use its own statistically independent
child stream, still a pure function of the seed.
"""

from __future__ import annotations

import numpy as np

STREAMS = ("simulation", "thinning", "oracle")


def stream(seed: int, name: str) -> np.random.Generator:
    """A fresh generator of the named stream of `seed` (the same seed and name: the same draws)."""
    if name not in STREAMS:
        raise ValueError(f"unknown stream {name!r}; streams are {', '.join(STREAMS)}")
    return np.random.default_rng(np.random.SeedSequence(seed).spawn(len(STREAMS))[STREAMS.index(name)])
