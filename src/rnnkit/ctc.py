"""Connectionist temporal classification (Graves et al. 2006): the loss of a label sequence
that is shorter than its input and not aligned with it (speech: audio frames in, digits out),
and the two usual ways to decode.

At every input step t the network gives a distribution ŷ<t> over the labels and a *blank*
(index ``blank``). A path π picks one of them per step; collapsing it (merge repeats, then drop
blanks: B(a a - b - b) = a b b) gives a label sequence. For targets l of length S,

    L = -log P(l | x),    P(l | x) = sum over paths π with B(π) = l of prod_t ŷ<t>[π_t],

summed by dynamic programming over the extended targets l' = (-, l1, -, l2, ..., lS, -),
S' = 2 S + 1, in log space so that long inputs do not underflow:

    α_t(s) = ŷ<t>[l'_s] (α_{t-1}(s) + α_{t-1}(s-1) + skip(s) α_{t-1}(s-2))
    β_t(s) = ŷ<t>[l'_s] (β_{t+1}(s) + β_{t+1}(s+1) + skip(s+2) β_{t+1}(s+2))
    P(l | x) = α_{T-1}(S'-1) + α_{T-1}(S'-2)

where skip(s) is 1 when l'_s is a label and differs from l'_{s-2} (a blank must separate two
equal labels). Through the softmax, the gradient with respect to the logits z<t> is

    dL/dz<t>[k] = ŷ<t>[k] - (1 / P(l | x)) sum_{s: l'_s = k} α_t(s) β_t(s) / ŷ<t>[k].
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .functional import log_softmax

NEG_INF = -np.inf


def _as_padded_targets(targets: np.ndarray, target_lengths: np.ndarray, N: int) -> np.ndarray:
    """``(N, S)`` padded targets from PyTorch's two layouts: padded ``(N, S)`` or all targets
    concatenated ``(sum(target_lengths),)``."""
    targets = np.asarray(targets)
    if targets.ndim == 2:
        if targets.shape[0] != N:
            raise ValueError(f"targets {targets.shape} must have one row per sequence ({N})")
        if target_lengths.max(initial=0) > targets.shape[1]:
            raise ValueError(
                f"a target length ({target_lengths.max()}) exceeds the targets' width "
                f"{targets.shape[1]}"
            )
        return targets.astype(np.int64)
    if targets.ndim != 1 or len(targets) != int(target_lengths.sum()):
        raise ValueError(
            f"targets must be (N, S) padded or 1-D with sum(target_lengths) = "
            f"{int(target_lengths.sum())} entries, got shape {targets.shape}"
        )
    padded = np.zeros((N, int(target_lengths.max(initial=0))), dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(target_lengths)[:-1]])
    for n, (start, length) in enumerate(zip(starts, target_lengths)):
        padded[n, :length] = targets[start : start + length]
    return padded


def _shift(a: np.ndarray, k: int, fill: float | bool = NEG_INF) -> np.ndarray:
    """``a`` moved ``k`` places along its last axis (right for k > 0, left for k < 0), the
    places left empty holding ``fill`` (log 0 by default)."""
    out = np.full_like(a, fill)
    if k > 0:
        out[..., k:] = a[..., :-k]
    else:
        out[..., :k] = a[..., -k:]
    return out


def _forward_backward(lp: np.ndarray, skip: np.ndarray, valid: np.ndarray, T_n: np.ndarray):
    """``(log α, log β)``, each ``(T, N, S')``, from ``lp (T, N, S')`` = log ŷ<t>[l'_s]."""
    T, N, _ = lp.shape
    alpha = np.full_like(lp, NEG_INF)
    alpha[0, :, :2] = lp[0, :, :2]
    alpha[0] = np.where(valid, alpha[0], NEG_INF)
    for t in range(1, T):
        prev = alpha[t - 1]
        two_back = np.where(skip, _shift(prev, 2), NEG_INF)
        summed = np.logaddexp(np.logaddexp(prev, _shift(prev, 1)), two_back)
        alpha[t] = np.where(valid, summed + lp[t], NEG_INF)  # α_t(s)
    ends = valid & ~_shift(valid, -2, False)  # the last two places of each l'
    skip_ahead = _shift(skip, -2, False)  # skip(s + 2)
    beta = np.full_like(lp, NEG_INF)
    nxt = np.full((N, lp.shape[2]), NEG_INF)
    for t in range(T - 1, -1, -1):
        two_ahead = np.where(skip_ahead, _shift(nxt, -2), NEG_INF)
        summed = np.logaddexp(np.logaddexp(nxt, _shift(nxt, -1)), two_ahead)
        last = (T_n - 1 == t)[:, None]  # the sequences whose final step is t start here
        beta[t] = np.where(last & ends, lp[t], np.where(valid, summed + lp[t], NEG_INF))  # β_t(s)
        beta[t][T_n - 1 < t] = NEG_INF
        nxt = beta[t]
    return alpha, beta


def ctc_loss(
    logits: np.ndarray,
    targets: np.ndarray,
    input_lengths: Sequence[int] | np.ndarray,
    target_lengths: Sequence[int] | np.ndarray,
    blank: int = 0,
    reduction: str = "mean",
    zero_infinity: bool = False,
) -> tuple[float | np.ndarray, np.ndarray]:
    """CTC loss of unnormalised ``logits`` (the softmax is taken here), in one forward-backward
    pass; PyTorch's ``ctc_loss(log_softmax(logits), ...)`` with its arguments and defaults.

    Args:
        logits: ``(T, N, C)`` scores, time-major; class ``blank`` is the blank.
        targets: ``(N, S)`` label ids padded past each target length, or all targets
            concatenated ``(sum(target_lengths),)``; never ``blank``.
        input_lengths: ``(N,)`` steps of each input, 1 to T; logits past them are ignored.
        target_lengths: ``(N,)`` labels of each target, 0 to S.
        reduction: ``"mean"`` (each loss divided by its target length, at least 1, then the
            mean over the batch, as PyTorch), ``"sum"``, or ``"none"`` (the ``(N,)`` losses;
            the gradient is then that of their sum).
        zero_infinity: an input too short for its target (it needs S steps plus one between
            each pair of equal neighbours) has P(l | x) = 0 and an infinite loss; with
            ``zero_infinity`` that loss counts as 0, as in PyTorch. Either way its gradient is 0.

    Returns:
        ``(loss, dlogits)``: the reduced loss and its gradient ``(T, N, C)`` with respect to
        ``logits``, zero past each input length.
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    logits = np.asarray(logits)
    if logits.ndim != 3:
        raise ValueError(f"logits must be (T, N, C), got shape {logits.shape}")
    T, N, C = logits.shape
    if not 0 <= blank < C:
        raise ValueError(f"blank must lie in [0, {C}), got {blank}")
    T_n = np.asarray(input_lengths, dtype=np.int64).reshape(-1)
    S_n = np.asarray(target_lengths, dtype=np.int64).reshape(-1)
    if T_n.shape != (N,) or S_n.shape != (N,):
        raise ValueError(f"input_lengths and target_lengths need one entry per sequence ({N})")
    if T_n.min() < 1 or T_n.max() > T:
        raise ValueError(f"input lengths must lie in [1, {T}], got {T_n.min()}..{T_n.max()}")
    if S_n.min() < 0:
        raise ValueError("target lengths must be >= 0")
    labels = _as_padded_targets(targets, S_n, N)  # (N, S)
    real = np.arange(labels.shape[1])[None] < S_n[:, None]
    if real.any() and (labels[real].min() < 0 or labels[real].max() >= C):
        raise ValueError(f"target labels must lie in [0, {C}), the blank excepted")
    if (labels[real] == blank).any():
        raise ValueError(f"a target holds the blank ({blank}); targets are labels only")

    S_ext = 2 * labels.shape[1] + 1
    ext = np.full((N, S_ext), blank, dtype=np.int64)  # l' = (-, l1, -, l2, ..., lS, -)
    ext[:, 1::2] = np.where(real, labels, blank)
    valid = np.arange(S_ext)[None] < (2 * S_n + 1)[:, None]  # (N, S')
    skip = (ext != blank) & (ext != _shift(ext, 2, -1))  # l'_s ≠ l'_{s-2}
    skip[:, :2] = False

    logp = log_softmax(logits.astype(np.float64))  # (T, N, C)
    lp = np.take_along_axis(logp, np.broadcast_to(ext[None], (T, N, S_ext)), axis=2)
    alpha, beta = _forward_backward(lp, skip, valid, T_n)
    rows = np.arange(N)
    end = alpha[T_n - 1, rows]  # (N, S')
    log_p = np.logaddexp(end[rows, 2 * S_n], np.where(S_n > 0, end[rows, 2 * S_n - 1], NEG_INF))
    feasible = np.isfinite(log_p)
    losses = np.where(feasible, -log_p, 0.0 if zero_infinity else np.inf)  # (N,)

    # dL/dz<t>[k] = ŷ<t>[k] - sum_{s: l'_s = k} exp(log α + log β - log ŷ - log P)
    occupancy = np.zeros_like(logp)  # (T, N, C)
    with np.errstate(invalid="ignore"):  # -inf - -inf for the infeasible ones, zeroed below
        share = np.exp(alpha + beta - lp - log_p[None, :, None])  # (T, N, S')
    for s in range(S_ext):
        occupancy[:, rows, ext[:, s]] += np.nan_to_num(share[:, :, s])
    inside = (np.arange(T)[:, None] < T_n[None]) & feasible[None]  # (T, N)
    dlogits = np.where(inside[..., None], np.exp(logp) - occupancy, 0.0)

    if reduction == "mean":
        scale = 1.0 / (np.maximum(S_n, 1) * N)  # (N,)
        dlogits *= scale[None, :, None]
        loss: float | np.ndarray = float(np.sum(losses * scale))
    elif reduction == "sum":
        loss = float(losses.sum())
    else:
        loss = losses
    return loss, dlogits.astype(logits.dtype, copy=False)


# ---------------------------------------------------------------- decoding


def collapse(path: Sequence[int], blank: int = 0) -> list[int]:
    """B(π): merge repeated labels, then drop blanks (``a a - b - b`` -> ``a b b``)."""
    out, prev = [], None
    for k in path:
        if k != blank and k != prev:
            out.append(int(k))
        prev = k
    return out


def ctc_greedy_decode(
    logits: np.ndarray, lengths: Sequence[int] | None = None, blank: int = 0
) -> list[list[int]]:
    """Best path decoding: the most likely class at every step, collapsed. ``logits`` is
    ``(T, N, C)``; returns one label list per sequence."""
    best = np.asarray(logits).argmax(axis=-1)  # (T, N)
    T, N = best.shape
    lengths = [T] * N if lengths is None else [int(n) for n in lengths]
    return [collapse(best[: lengths[n], n], blank) for n in range(N)]


def _lse(a: float, b: float) -> float:
    """log(e^a + e^b) for Python floats."""
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    m = max(a, b)
    return m + math.log1p(math.exp(-abs(a - b)))


def _add(beams: dict, prefix: tuple, blank_part: float, label_part: float) -> None:
    """Add path probabilities (log) ending in a blank and in a label to ``beams[prefix]``."""
    pb, pl = beams.get(prefix, (-math.inf, -math.inf))
    beams[prefix] = (_lse(pb, blank_part), _lse(pl, label_part))


def prefix_beam_search(
    log_probs: np.ndarray, beam_width: int = 8, blank: int = 0
) -> tuple[list[int], float]:
    """The most likely label sequence of one input by prefix beam search (Graves 2012,
    Hannun et al. 2014): each prefix keeps the log probability of its paths ending in a blank
    and of those ending in its last label, so every path that collapses to it is counted once.

    Args:
        log_probs: ``(T, C)`` log ŷ<t> of one input (its real steps only).
        beam_width: prefixes kept after each step.

    Returns:
        ``(labels, log P(labels | x))`` of the best prefix in the final beam.
    """
    if beam_width < 1:
        raise ValueError(f"beam_width must be >= 1, got {beam_width}")
    lp = np.asarray(log_probs, dtype=np.float64)
    beams: dict[tuple, tuple[float, float]] = {(): (0.0, -math.inf)}  # (p_blank, p_label)
    for row in lp.tolist():
        nxt: dict[tuple, tuple[float, float]] = {}
        for prefix, (pb, pl) in beams.items():
            _add(nxt, prefix, _lse(pb, pl) + row[blank], -math.inf)  # a blank: same prefix
            last = prefix[-1] if prefix else None
            for k, p in enumerate(row):
                if k == blank:
                    continue
                if k == last:
                    _add(nxt, prefix, -math.inf, pl + p)  # the last label repeated: merged
                    _add(nxt, (*prefix, k), -math.inf, pb + p)  # after a blank: a new label
                else:
                    _add(nxt, (*prefix, k), -math.inf, _lse(pb, pl) + p)
        ranked = sorted(nxt.items(), key=lambda item: -_lse(*item[1]))
        beams = {prefix: (pb, pl) for prefix, (pb, pl) in ranked[:beam_width]}
    prefix, (pb, pl) = max(beams.items(), key=lambda item: _lse(*item[1]))
    return list(prefix), _lse(pb, pl)


def ctc_beam_decode(
    logits: np.ndarray,
    lengths: Sequence[int] | None = None,
    beam_width: int = 8,
    blank: int = 0,
) -> list[list[int]]:
    """:func:`prefix_beam_search` for each sequence of ``logits (T, N, C)``."""
    logp = log_softmax(np.asarray(logits, dtype=np.float64))
    T, N, _ = logp.shape
    lengths = [T] * N if lengths is None else [int(n) for n in lengths]
    return [prefix_beam_search(logp[: lengths[n], n], beam_width, blank)[0] for n in range(N)]
