"""Weight initialisers; each takes an explicit ``np.random.Generator``."""

from __future__ import annotations

import numpy as np


def uniform(
    rng: np.random.Generator, shape: tuple[int, ...], bound: float, dtype: np.dtype = np.float32
) -> np.ndarray:
    """Samples from U(-bound, bound), PyTorch's default for recurrent layers
    (``bound = 1 / sqrt(hidden_size)``)."""
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


def as_generator(rng: np.random.Generator | int | None) -> np.random.Generator:
    """A Generator from a Generator, an integer seed, or None (fresh OS entropy)."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(rng)
    raise TypeError(
        f"rng must be a numpy.random.Generator, an int seed or None, got {type(rng).__name__}"
    )
