"""Sampling novel sequences: each sampled token is fed back as the next input (one-to-many).

``sample_next`` turns logits into token ids (greedy, temperature, top-k, top-p), drawing from an
explicit generator; ``generate`` runs a language model forward from a prime or a state.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .functional import softmax
from .module import predicting


def check_sampling_options(
    temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> None:
    """Raise ValueError, saying what to do instead, for options that cannot be sampled with."""
    if not temperature > 0:
        raise ValueError(
            f"temperature must be > 0, got {temperature}; for the most likely "
            f"token at every step use greedy decoding (--greedy)"
        )
    if top_k is not None and (isinstance(top_k, bool) or int(top_k) != top_k or top_k < 1):
        raise ValueError(f"top_k must be a whole number >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must lie in (0, 1], got {top_p}")


def sample_next(
    logits: np.ndarray,
    rng: np.random.Generator,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    greedy: bool = False,
) -> np.ndarray:
    """Draw one token per row of ``logits (N, V)``; returns ``(N,)`` ids.

    ``greedy`` takes the most likely token. Otherwise the distribution is
    softmax(logits / temperature), cut to the ``top_k`` most likely tokens and/or to the
    smallest set whose probability reaches ``top_p`` (nucleus), renormalised. Ties break
    toward the lower id, so ``top_k=1`` equals ``greedy``.
    """
    logits = np.asarray(logits, dtype=np.float64)
    if greedy:
        return logits.argmax(axis=-1)
    check_sampling_options(temperature, top_k, top_p)
    order = np.argsort(-logits, axis=-1, kind="stable")  # (N, V) most likely first
    probs = np.take_along_axis(softmax(logits / temperature), order, axis=-1)
    keep = np.ones_like(probs, dtype=bool)
    if top_k is not None:
        keep[:, int(top_k) :] = False
    if top_p is not None:
        before = np.cumsum(probs, axis=-1) - probs  # mass of the more likely tokens
        keep &= before < top_p  # the first token is always kept
    probs = np.where(keep, probs, 0.0)
    cum = np.cumsum(probs, axis=-1)  # (N, V)
    u = rng.random(len(probs)) * cum[:, -1]
    pick = np.minimum((cum <= u[:, None]).sum(axis=-1), probs.shape[1] - 1)
    return order[np.arange(len(order)), pick]


def generate(
    model,
    length: int,
    rng: np.random.Generator,
    prime: Sequence[int] | None = None,
    start_id: int | None = None,
    num: int = 1,
    state=None,
    stop_id: int | None = None,
    **sampling,
) -> list[list[int]]:
    """Sample ``num`` sequences of up to ``length`` new tokens from a language model.

    Args:
        model: has ``forward(ids (T, N), state) -> (logits, state, cache)`` (a LanguageModel).
        prime: tokens read first (their last one predicts the first new token); or
        start_id: the single token read first (for example ``<eos>`` to start a new line).
        state: an initial recurrent state instead of (or before) the prime.
        stop_id: a sequence ends when it samples this token (not included in the result).
        sampling: ``temperature``, ``top_k``, ``top_p``, ``greedy`` for :func:`sample_next`.

    Returns:
        One list of new token ids per sequence.
    """
    first = list(prime) if prime else ([start_id] if start_id is not None else [])
    if not first:
        raise ValueError("give a prime or a start_id to read before sampling")
    with predicting(model):
        ids = np.tile(np.asarray(first, dtype=np.int64)[:, None], (1, num))  # (T, num)
        logits, state, _ = model.forward(ids, state)
        logits = logits[-1]
        out: list[list[int]] = [[] for _ in range(num)]
        alive = np.ones(num, dtype=bool)
        for _ in range(length):
            nxt = sample_next(logits, rng, **sampling)
            for n in np.flatnonzero(alive):
                if stop_id is not None and nxt[n] == stop_id:
                    alive[n] = False
                else:
                    out[n].append(int(nxt[n]))
            if not alive.any():
                break
            logits, state, _ = model.forward(nxt[None], state)
            logits = logits[0]
        return out
