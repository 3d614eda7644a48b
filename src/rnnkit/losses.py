"""Losses returning ``(loss, dlogits)``: the value and its gradient in one pass.

:func:`ctc_loss` (connectionist temporal classification, for unaligned label sequences) lives
in :mod:`rnnkit.ctc` with its decoders and is exported here with the others.
"""

from __future__ import annotations

import functools
import math
import sys

import numpy as np

from . import parallel
from .ctc import ctc_loss

__all__ = ["binary_cross_entropy_with_logits", "cross_entropy", "ctc_loss", "perplexity"]


_LARGEST_EXPONENT = math.log(sys.float_info.max)  # about 709.78
_PART = 1 << 16  # logits below which one thread takes them all (cross_entropy)


def perplexity(nats: float) -> float:
    """``exp(mean loss per token)``; inf where that overflows a float (a loss past 709 nats,
    as a diverging run reaches), where ``math.exp`` would raise."""
    return math.exp(nats) if nats < _LARGEST_EXPONENT else math.inf


def cross_entropy(
    logits: np.ndarray, targets: np.ndarray, ignore_index: int = -100, reduction: str = "mean"
) -> tuple[float, np.ndarray]:
    """Softmax cross-entropy, L = -sum_t log ŷ<t>[y<t>], over any leading axes.

    Args:
        logits: ``(..., V)`` unnormalised scores.
        targets: ``(...)`` class ids; entries equal to ``ignore_index`` (padding) are skipped.
        reduction: ``"mean"`` over the real targets (PyTorch's default) or ``"sum"`` (the
            notes' loss summed over time steps).

    Returns:
        ``(loss, dlogits)`` with ``dlogits = (softmax(logits) - onehot(targets)) / count``.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    targets = np.asarray(targets)
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"logits {logits.shape} and targets {targets.shape} disagree: "
            f"expected targets of shape {logits.shape[:-1]}"
        )
    V = logits.shape[-1]
    flat_logits = logits.reshape(-1, V)
    flat_targets = targets.reshape(-1)
    real = flat_targets != ignore_index
    count = int(real.sum())
    if count == 0:
        raise ValueError("no target to score: every target equals ignore_index")
    real_targets = flat_targets[real]
    if real_targets.min() < 0 or real_targets.max() >= V:
        raise ValueError(
            f"targets must lie in [0, {V}) or equal ignore_index={ignore_index}, "
            f"got min {real_targets.min()} and max {real_targets.max()}"
        )
    scale = 1.0 / count if reduction == "mean" else 1.0
    dlogits = np.empty_like(flat_logits)
    spans = parallel.spans(len(flat_targets), min(parallel.num_threads(), dlogits.size // _PART))
    losses = [0.0] * len(spans)

    def rows_of(i: int, r0: int, r1: int) -> None:  # one span of rows, on one of rnnkit's threads
        s = slice(r0, r1)
        losses[i] = _softmax_rows(flat_logits[s], flat_targets[s], real[s], dlogits[s], scale)

    parallel.run([functools.partial(rows_of, i, *span) for i, span in enumerate(spans)])
    return float(sum(losses) * scale), dlogits.reshape(logits.shape)


def _softmax_rows(logits, targets, real, dlogits, scale) -> float:
    """Rows of :func:`cross_entropy`: returns their -Σ log ŷ[y], and ``dlogits`` takes
    ``scale * (ŷ - y)`` (zero in the rows of ignored targets)."""
    rows, real_targets = np.flatnonzero(real), targets[real]
    shifted = logits - logits.max(axis=1, keepdims=True)  # (M, V), no overflow
    np.exp(shifted, out=dlogits)  # (M, V)
    total = dlogits.sum(axis=1, keepdims=True)  # (M, 1)
    # log ŷ[y] = shifted[y] - log sum exp(shifted)
    loss = np.log(total[rows, 0]).sum() - shifted[rows, real_targets].sum()
    dlogits /= total  # ŷ = softmax(z)
    dlogits[rows, real_targets] -= 1  # dL/dz = ŷ - y
    if len(rows) < len(targets):
        dlogits[~real] = 0
    dlogits *= scale
    return float(loss)


def binary_cross_entropy_with_logits(
    logits: np.ndarray, targets: np.ndarray
) -> tuple[float, np.ndarray]:
    """Mean of -[y log σ(z) + (1-y) log(1-σ(z))], computed stably from the logits z.

    Returns ``(loss, dlogits)`` with ``dlogits = (σ(z) - y) / count``.
    """
    targets = np.asarray(targets, dtype=logits.dtype)
    if logits.shape != targets.shape:
        raise ValueError(f"logits {logits.shape} and targets {targets.shape} must match")
    # log(1 + e^z) - y z, written so that no exp overflows
    e = np.exp(-np.abs(logits))  # in (0, 1]: never overflows
    loss = np.maximum(logits, 0) - logits * targets + np.log1p(e)
    sig = np.where(logits >= 0, 1 / (1 + e), e / (1 + e))  # full relative precision both sides
    return float(loss.mean()), (sig - targets) / logits.size
