"""Scores for the applications: F1 of BIO tags per entity type, exact match, edit distance and
error rate, unigram NLL.

Pure functions of plain Python sequences; nothing here trains or reads a file.

Entity F1 follows CoNLL's ``conlleval``: an entity counts as found only when both its type and
its span (first and last token) match a true entity. A chunk starts at ``B-X``, at ``I-X`` after
``O`` (an ``I-`` with no ``B-`` before it), or at ``I-X`` after a tag of another type; it ends
before the next ``O``, ``B-`` or change of type.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

MICRO = "micro"  # the key of the score over every type in the dicts returned below


@dataclass(frozen=True)
class PRF:
    """Counts behind precision, recall and F1 (each 0 when its denominator is 0)."""

    tp: int  # predictions that match a true item
    n_pred: int  # predicted items
    n_gold: int  # true items (the support)

    @property
    def precision(self) -> float:
        """``tp / n_pred``: the share of predicted items that are right."""
        return self.tp / self.n_pred if self.n_pred else 0.0

    @property
    def recall(self) -> float:
        """``tp / n_gold``: the share of true items that were found."""
        return self.tp / self.n_gold if self.n_gold else 0.0

    @property
    def f1(self) -> float:
        """The harmonic mean of precision and recall, ``2 p r / (p + r)``."""
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def _split_tag(tag: str) -> tuple[str, str]:
    """``"B-PER"`` -> ``("B", "PER")``; ``"O"`` -> ``("O", "")``; anything else raises."""
    if tag == "O":
        return "O", ""
    prefix, sep, kind = tag.partition("-")
    if prefix not in ("B", "I") or not sep or not kind:
        raise ValueError(f"not a BIO tag: {tag!r} (expected O, B-TYPE or I-TYPE)")
    return prefix, kind


def bio_spans(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """Entities of one tagged sentence as ``(type, start, end)``, ``end`` exclusive.

    >>> bio_spans(["B-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG"])
    [('PER', 0, 2), ('LOC', 3, 4), ('LOC', 4, 5), ('ORG', 5, 6)]
    """
    spans: list[tuple[str, int, int]] = []
    kind, start = None, 0
    for i, tag in enumerate([*tags, "O"]):  # the extra O closes a final entity
        prefix, this = _split_tag(tag)
        begins = prefix == "B" or (prefix == "I" and this != kind)
        if kind is not None and (prefix == "O" or begins):
            spans.append((kind, start, i))
            kind = None
        if prefix != "O" and begins:
            kind, start = this, i
    return spans


def _check_pairs(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> None:
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} true sentences but {len(pred)} predicted")
    for k, (g, p) in enumerate(zip(gold, pred)):
        if len(g) != len(p):
            raise ValueError(f"sentence {k}: {len(g)} true tags but {len(p)} predicted")


def _scores(counts: dict[str, list[int]]) -> dict[str, PRF]:
    out = {kind: PRF(*c) for kind, c in sorted(counts.items())}
    out[MICRO] = PRF(*(sum(c[i] for c in counts.values()) for i in range(3)))
    return out


def entity_f1(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, PRF]:
    """Entity-level scores per type and over all types (key :data:`MICRO`), conlleval style.

    Args:
        gold, pred: one list of BIO tags per sentence, the same lengths.

    Returns:
        ``{type: PRF, ..., "micro": PRF}`` with every type seen in ``gold`` or ``pred``.
    """
    _check_pairs(gold, pred)
    counts: dict[str, list[int]] = {}
    for g, p in zip(gold, pred):
        true, found = set(bio_spans(g)), set(bio_spans(p))
        for kind, *_ in true | found:
            counts.setdefault(kind, [0, 0, 0])
        for kind, *_ in true & found:
            counts[kind][0] += 1
        for kind, *_ in found:
            counts[kind][1] += 1
        for kind, *_ in true:
            counts[kind][2] += 1
    return _scores(counts)


def token_f1(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, PRF]:
    """Token-level scores per type: a token counts when its type (B-/I- dropped) is right.

    Kinder than :func:`entity_f1`: half of a two-word name still earns one token. ``O`` tokens
    are not scored as a type.
    """
    _check_pairs(gold, pred)
    counts: dict[str, list[int]] = {}
    for g, p in zip(gold, pred):
        for tg, tp in zip(g, p):
            kg, kp = _split_tag(tg)[1], _split_tag(tp)[1]
            for kind in {kg, kp} - {""}:
                counts.setdefault(kind, [0, 0, 0])
            if kp:
                counts[kp][1] += 1
            if kg:
                counts[kg][2] += 1
                if kg == kp:
                    counts[kg][0] += 1
    return _scores(counts)


def tag_accuracy(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> float:
    """Fraction of tokens whose full tag (``O`` included) is right."""
    _check_pairs(gold, pred)
    total = sum(len(g) for g in gold)
    right = sum(a == b for g, p in zip(gold, pred) for a, b in zip(g, p))
    return right / total if total else 0.0


def edit_distance(ref: Sequence, hyp: Sequence) -> int:
    """Levenshtein distance: the fewest substitutions, deletions and insertions that turn
    ``hyp`` into ``ref``."""
    prev = list(range(len(hyp) + 1))  # distances from ref[:0]
    for i, r in enumerate(ref, 1):
        row = [i]
        for j, h in enumerate(hyp, 1):
            row.append(min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (r != h)))
        prev = row
    return prev[-1]


def error_rate(refs: Sequence[Sequence], hyps: Sequence[Sequence]) -> float:
    """The word (here: digit) error rate, ``sum edit_distance / sum len(ref)`` over a set;
    above 1 when the hypotheses insert more than the references hold."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    total = sum(len(r) for r in refs)
    if total == 0:
        raise ValueError("error_rate needs at least one reference token")
    return sum(edit_distance(r, h) for r, h in zip(refs, hyps)) / total


def exact_match(preds: Sequence, targets: Sequence) -> float:
    """Fraction of predictions equal to their target (strings, token lists, ...)."""
    if len(preds) != len(targets):
        raise ValueError(f"{len(preds)} predictions but {len(targets)} targets")
    if not targets:
        raise ValueError("exact_match needs at least one target")
    return sum(p == t for p, t in zip(preds, targets)) / len(targets)


def unigram_nll(
    train: Iterable[Hashable],
    test: Iterable[Hashable],
    vocab_size: int | None = None,
    alpha: float = 1.0,
) -> float:
    """Mean negative log-likelihood (nats per token) of ``test`` under a unigram model of
    ``train``: P(w) = (count(w) + alpha) / (N + alpha V), add-alpha (Laplace) smoothing.

    Args:
        vocab_size: V, the number of distinct tokens the model spreads mass over; by default
            those of train and test together. Give the language model's V to compare with it.
        alpha: pseudo-count per token (> 0, so an unseen test token has a finite cost).
    """
    counts = Counter(train)
    test = list(test)
    if not test:
        raise ValueError("unigram_nll needs at least one test token")
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    V = len(set(counts) | set(test)) if vocab_size is None else vocab_size
    if V < len(set(counts) | set(test)):
        raise ValueError(f"vocab_size={V} is smaller than the number of distinct tokens")
    denom = sum(counts.values()) + alpha * V
    return -sum(math.log((counts[w] + alpha) / denom) for w in test) / len(test)
