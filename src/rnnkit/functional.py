"""Stable sigmoid, softmax and log-softmax: pure functions, no state (tanh is ``np.tanh``)."""

from __future__ import annotations

import numpy as np


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic sigmoid, computed as 0.5 * (1 + tanh(x / 2)).

    The tanh form never overflows (``exp(-x)`` does for large negative x) and is accurate
    to rounding in absolute terms, which is what a gate needs; for x below about -20 it loses
    relative precision (it returns 0 below about -37 in float64), so losses on very negative
    logits use their own formula.
    """
    y = np.multiply(x, 0.5)
    np.tanh(y, out=y)
    y += 1.0
    y *= 0.5
    return y


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Softmax along ``axis``, shifted by the maximum so it cannot overflow."""
    shifted = x - np.max(x, axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / np.sum(e, axis=axis, keepdims=True)


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """log(softmax(x)) computed without forming the softmax (no log of 0)."""
    shifted = x - np.max(x, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))
