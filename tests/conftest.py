"""Shared test helpers: random layers and inputs, upstream gradients, numerical gradients."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import rnnkit

# Every recurrent variant: name -> (class, keyword arguments).
VARIANTS: dict[str, tuple[type, dict]] = {
    "rnn_tanh": (rnnkit.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (rnnkit.RNN, {"nonlinearity": "relu"}),
    "gru": (rnnkit.GRU, {}),
    "gru_reset_before": (rnnkit.GRU, {"reset_after": False}),
    "gru_simple": (rnnkit.GRU, {"simplified": True}),
    "lstm": (rnnkit.LSTM, {}),
    "lstm_peephole": (rnnkit.LSTM, {"peephole": True}),
    "lstm_gers": (rnnkit.LSTM, {"peephole": "gers"}),
    "lstm_proj": (rnnkit.LSTM, {"proj_size": 2}),
}


def make_layer(variant: str, input_size: int, hidden_size: int, **kwargs) -> rnnkit.RNNBase:
    """A layer of one variant; ``kwargs`` go to the constructor (num_layers, rng, dtype, ...)."""
    cls, extra = VARIANTS[variant]
    return cls(input_size, hidden_size, **extra, **kwargs)


def is_lstm(layer: rnnkit.RNNBase) -> bool:
    return layer.kind.num_states == 2


def random_state(layer: rnnkit.RNNBase, N: int, rng: np.random.Generator, scale: float = 0.5):
    """A random non-zero state ``h`` or ``(h, c)`` of the layer's shape and dtype."""
    k = layer.num_layers * layer.num_directions
    shapes = [(k, N, layer.output_size), (k, N, layer.hidden_size)][: 1 + is_lstm(layer)]
    parts = [(scale * rng.standard_normal(shape)).astype(layer.dtype) for shape in shapes]
    return tuple(parts) if is_lstm(layer) else parts[0]


def random_lengths(T: int, N: int, rng: np.random.Generator) -> np.ndarray:
    """Lengths in [1, T] with at least one full-length and one shorter sequence, unsorted."""
    lengths = rng.integers(1, T + 1, size=N)
    lengths[0], lengths[-1] = rng.integers(1, T), T  # one short, one full
    return rng.permutation(lengths)


def as_tuple(state) -> tuple:
    return tuple(state) if isinstance(state, tuple) else (state,)


def numerical_grad(f: Callable[[], float], array: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central-difference gradient of the scalar ``f()`` with respect to ``array``.

    ``array`` is perturbed in place, one entry at a time, and restored afterwards.
    """
    grad = np.zeros(array.shape, dtype=np.float64)
    for idx in np.ndindex(array.shape):
        old = array[idx]
        array[idx] = old + eps
        plus = f()
        array[idx] = old - eps
        minus = f()
        array[idx] = old
        grad[idx] = (plus - minus) / (2 * eps)
    return grad


@pytest.fixture
def durable_writes(monkeypatch) -> list[Path]:
    """The files put in place by ``os.replace`` from a temporary file fsynced first (an atomic,
    durable write), in order."""
    synced, written = set(), []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        st = os.fstat(fd)
        synced.add((st.st_dev, st.st_ino))
        real_fsync(fd)

    def replace(src, dst, *args, **kwargs):
        st = os.stat(src)
        if (st.st_dev, st.st_ino) in synced:
            written.append(Path(dst))
        real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return written
