"""The baselines an RNN has to beat: the majority class, and logistic regression on counts
(bag of words for sentences, k-mers for DNA), in NumPy.

Logistic regression here is the multinomial one (softmax regression),
``P(y = k | x) = softmax(x W^T + b)_k``, fitted by full-batch Adam on the mean cross-entropy
plus ``l2 / 2 * |W|^2``. It is convex, so from zero weights the result does not depend on any
random draw.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..losses import cross_entropy
from ..module import Module
from ..optim import Adam


def accuracy(predicted: np.ndarray, targets: np.ndarray) -> float:
    """Fraction of predictions equal to their target."""
    predicted, targets = np.asarray(predicted), np.asarray(targets)
    if predicted.shape != targets.shape:
        raise ValueError(f"predictions {predicted.shape} and targets {targets.shape} differ")
    if predicted.size == 0:
        raise ValueError("accuracy of nothing: no examples")
    return float(np.mean(predicted == targets))


def majority_class(targets: np.ndarray) -> int:
    """The most frequent class id (the smallest one on a tie)."""
    targets = np.asarray(targets)
    if targets.size == 0:
        raise ValueError("no targets to count")
    values, counts = np.unique(targets, return_counts=True)
    return int(values[np.argmax(counts)])


def stratified_split(
    labels: np.ndarray, test_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(rest, test)``, each sorted: a random ``test_fraction`` of each class (rounded
    to the nearest whole example) is held out, so both parts keep the class balance."""
    rest, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(test_fraction * len(idx)))
        test.append(idx[:k])
        rest.append(idx[k:])
    return np.sort(np.concatenate(rest)), np.sort(np.concatenate(test))


def three_way_split(
    labels: np.ndarray, test_fraction: float, val_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices ``(train, validation, test)``: :func:`stratified_split` holds out the test part,
    then ``val_fraction`` of the rest for validation."""
    rest, test = stratified_split(labels, test_fraction, rng)
    train, val = (rest[i] for i in stratified_split(labels[rest], val_fraction, rng))
    return train, val, test


def count_features(
    docs: Sequence[Sequence[str]], vocab: Mapping[str, int], binary: bool = False
) -> np.ndarray:
    """Bag of words: ``(N, V)`` counts of each vocabulary token in each document (presence 0/1
    with ``binary``); tokens outside ``vocab`` are ignored."""
    X = np.zeros((len(docs), len(vocab)), dtype=np.float64)
    for n, doc in enumerate(docs):
        for tok in doc:
            j = vocab.get(tok)
            if j is not None:
                X[n, j] = 1.0 if binary else X[n, j] + 1.0
    return X


def kmer_names(k: int, alphabet: str = "ACGT") -> list[str]:
    """Every k-mer over ``alphabet`` in the column order of :func:`kmer_counts`."""
    names = [""]
    for _ in range(k):
        names = [n + a for n in names for a in alphabet]
    return names


def kmer_counts(seqs: Sequence[str], k: int, alphabet: str = "ACGT") -> np.ndarray:
    """``(N, len(alphabet) ** k)``: how often each k-mer occurs in each sequence (overlapping
    windows); a window holding a letter outside ``alphabet`` is not counted."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    A = len(alphabet)
    code = {a: i for i, a in enumerate(alphabet)}
    X = np.zeros((len(seqs), A**k), dtype=np.float64)
    powers = A ** np.arange(k - 1, -1, -1)  # the first letter is the most significant digit
    for n, seq in enumerate(seqs):
        ids = np.array([code.get(ch, -1) for ch in seq], dtype=np.int64)
        if len(ids) < k:
            continue
        windows = np.lib.stride_tricks.sliding_window_view(ids, k)  # (L-k+1, k)
        ok = (windows >= 0).all(axis=1)
        np.add.at(X[n], windows[ok] @ powers, 1.0)
    return X


class _Features:
    """``X (N, D)``, multiplied as a dense matrix or, when at most a tenth of it is non-zero
    (a bag of words), through its non-zero entries only."""

    def __init__(self, X: np.ndarray):
        self.N, self.D = X.shape
        self.sparse = np.count_nonzero(X) <= 0.1 * X.size
        if self.sparse:
            self.rows, self.cols = np.nonzero(X)
            self.vals = X[self.rows, self.cols]
        else:
            self.X = X

    def times_t(self, W: np.ndarray) -> np.ndarray:
        """``X @ W.T`` for ``W (C, D)``: ``(N, C)``."""
        if not self.sparse:
            return self.X @ W.T
        contrib = W[:, self.cols] * self.vals  # (C, nnz)
        return np.stack([np.bincount(self.rows, c, self.N) for c in contrib], axis=1)

    def t_times(self, G: np.ndarray) -> np.ndarray:
        """``G.T @ X`` for ``G (N, C)``: ``(C, D)``."""
        if not self.sparse:
            return G.T @ self.X
        weights = G[self.rows].T * self.vals  # (C, nnz)
        return np.stack([np.bincount(self.cols, w, self.D) for w in weights])


class _Linear(Module):
    """The parameters of a linear map ``x W^T + b``, zeros to start, for the optimiser."""

    def __init__(self, D: int, C: int):
        super().__init__()
        self.add_param("weight", np.zeros((C, D)))
        self.add_param("bias", np.zeros(C))


class LogisticRegression:
    """Multinomial logistic regression with an L2 penalty on the weights.

    Args:
        l2: weight of ``1/2 |W|^2`` added to the mean cross-entropy (the bias is not penalised).
        steps: full-batch Adam steps.
        lr: Adam's learning rate.
    """

    def __init__(self, l2: float = 1e-3, steps: int = 300, lr: float = 0.05):
        if steps < 1 or not lr > 0 or l2 < 0:
            raise ValueError(f"need steps >= 1, lr > 0 and l2 >= 0, got {steps}, {lr}, {l2}")
        self.l2, self.steps, self.lr = float(l2), int(steps), float(lr)
        self.weight: np.ndarray | None = None  # (C, D)
        self.bias: np.ndarray | None = None  # (C,)
        self.loss: float = float("nan")  # training objective at the end

    def fit(
        self, X: np.ndarray, y: np.ndarray, num_classes: int | None = None
    ) -> LogisticRegression:
        """Fit on ``X (N, D)``, ``y (N,)`` class ids in ``[0, C)``; returns self."""
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y, dtype=np.int64)
        if X.ndim != 2 or y.shape != (X.shape[0],) or X.shape[0] == 0:
            raise ValueError(f"need X (N, D) and y (N,), got {X.shape} and {y.shape}")
        C = int(num_classes or y.max() + 1)
        F = _Features(X)
        params = _Linear(X.shape[1], C)
        opt = Adam(params, lr=self.lr)
        W, b = params.params["weight"], params.params["bias"]
        for _ in range(self.steps):
            loss, dlogits = cross_entropy(F.times_t(W) + b, y)  # mean over examples
            params.grads["weight"][...] = F.t_times(dlogits) + self.l2 * W
            params.grads["bias"][...] = dlogits.sum(axis=0)
            opt.step()
        self.weight, self.bias = W, b
        self.loss = float(loss + 0.5 * self.l2 * np.vdot(W, W))
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Scores ``(N, C)`` (logits)."""
        if self.weight is None:
            raise ValueError("fit the model first")
        return np.asarray(X, dtype=np.float64) @ self.weight.T + self.bias

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The most likely class of each row, ``(N,)``."""
        return self.decision_function(X).argmax(axis=1)


def fit_best_logistic_regression(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    l2_grid: Sequence[float] = (1e-4, 1e-3, 1e-2, 1e-1),
    num_classes: int | None = None,
    **kwargs: float,
) -> tuple[LogisticRegression, float]:
    """Fit one model per ``l2`` and keep the best on the validation set (the first on a tie).

    ``kwargs`` (``steps``, ``lr``) go to :class:`LogisticRegression`. Returns ``(model, its
    validation accuracy)``; pass the union of training and validation
    data to refit if wanted.
    """
    best, best_acc = None, -1.0
    for l2 in l2_grid:
        model = LogisticRegression(l2=l2, **kwargs).fit(X_train, y_train, num_classes)
        acc = accuracy(model.predict(X_val), y_val)
        if acc > best_acc:
            best, best_acc = model, acc
    return best, best_acc
