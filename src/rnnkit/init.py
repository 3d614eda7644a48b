"""Weight initialisers; each takes an explicit ``np.random.Generator``.

Every parameter a layer creates comes from here, so :func:`parameter_budget` can bound what a
model built from a description it does not trust (a checkpoint's metadata, command-line sizes)
may allocate, before each allocation happens.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import numpy as np

# Bytes of parameters still allowed in the current `parameter_budget` block (None: no limit).
_budget: ContextVar[list[int] | None] = ContextVar("parameter_budget", default=None)


class ParameterBudgetExceeded(MemoryError):
    """A model under :func:`parameter_budget` asked for more parameter memory than allowed;
    ``needed`` is the amount it had asked for when it stopped (a lower bound of its size)."""

    def __init__(self, needed: int, allowed: int):
        super().__init__(f"the parameters need at least {needed} bytes, {allowed} are allowed")
        self.needed, self.allowed = needed, allowed


@contextmanager
def parameter_budget(max_bytes: int) -> Iterator[None]:
    """Within the block, creating parameters of more than ``max_bytes`` in all raises
    :class:`ParameterBudgetExceeded` before the allocation that would cross the limit."""
    token = _budget.set([int(max_bytes), 0])
    try:
        yield
    finally:
        _budget.reset(token)


def _charge(shape: tuple[int, ...], dtype: object) -> None:
    budget = _budget.get()
    if budget is None:
        return
    allowed, spent = budget
    spent += math.prod(int(n) for n in shape) * np.dtype(dtype).itemsize
    if spent > allowed:
        raise ParameterBudgetExceeded(spent, allowed)
    budget[1] = spent


def uniform(
    rng: np.random.Generator, shape: tuple[int, ...], bound: float, dtype: np.dtype = np.float32
) -> np.ndarray:
    """Samples from U(-bound, bound), PyTorch's default for recurrent layers
    (``bound = 1 / sqrt(hidden_size)``)."""
    _charge(shape, dtype)
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


def normal(
    rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype = np.float32
) -> np.ndarray:
    """Samples from N(0, 1), PyTorch's default for embeddings."""
    _charge(shape, dtype)
    return rng.standard_normal(shape).astype(dtype)


def as_generator(rng: np.random.Generator | int | None) -> np.random.Generator:
    """A Generator from a Generator, an integer seed, or None (fresh OS entropy)."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(rng)
    raise TypeError(
        f"rng must be a numpy.random.Generator, an int seed or None, got {type(rng).__name__}"
    )
