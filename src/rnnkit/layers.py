"""Embedding, a Linear layer applied at every time step, and Dropout.

Same contract as the recurrent layers: ``forward`` returns ``(output, cache)``, and
``backward(doutput, cache)`` adds into ``grads`` and returns the input's gradient.
"""

from __future__ import annotations

import math

import numpy as np

from . import kernels, parallel
from .init import as_generator, normal, uniform
from .loops import TableRows
from .module import Module


class Linear(Module):
    """y = x W^T + b over the last axis, so one call covers every time step of ``(T, N, D)``.

    The course's output layer ``ŷ<t> = softmax(W_ya a<t> + b_y)`` is a Linear then a softmax.
    Weights are ``weight (out, in)`` and ``bias (out,)``, initialised as PyTorch does.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        rng: np.random.Generator | int | None = None,
        dtype: object = np.float32,
    ):
        super().__init__()
        rng = as_generator(rng)
        bound = 1.0 / math.sqrt(in_features)
        self.in_features, self.out_features = in_features, out_features
        self.add_param("weight", uniform(rng, (out_features, in_features), bound, dtype))
        if bias:
            self.add_param("bias", uniform(rng, (out_features,), bound, dtype))

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``x (..., in)`` -> ``(y (..., out), cache)``."""
        if x.shape[-1] != self.in_features:
            raise ValueError(f"Linear expects last axis {self.in_features}, got shape {x.shape}")
        y = parallel.matmul(x.reshape(-1, self.in_features), self.params["weight"].T)
        if "bias" in self.params:
            y += self.params["bias"]
        return y.reshape(*x.shape[:-1], self.out_features), x

    def backward(self, dy: np.ndarray, cache: np.ndarray) -> np.ndarray:
        """Adds dW = dy^T x and db = sum(dy) over every leading axis; returns dx = dy W."""
        x = cache
        dy2 = dy.reshape(-1, self.out_features)  # (T*N, out)
        self.grads["weight"] += parallel.matmul(dy2.T, x.reshape(-1, self.in_features))
        if "bias" in self.params:
            self.grads["bias"] += dy2.sum(axis=0)
        dx = parallel.matmul(dy2, self.params["weight"])  # (T*N, in)
        return dx.reshape(*dy.shape[:-1], self.in_features)


class Embedding(Module):
    """A lookup table: token ids ``(...)`` -> vectors ``(..., E)``; weights drawn from N(0, 1).

    Multiplying a one-hot vector by a matrix, as the notes draw x<t>, selects one column of
    it; the table does that selection directly. ``padding_idx`` names a row kept at zero that
    receives no gradient.
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        *,
        rng: np.random.Generator | int | None = None,
        dtype: object = np.float32,
    ):
        super().__init__()
        rng = as_generator(rng)
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        if padding_idx is not None:
            if not -num_embeddings <= padding_idx < num_embeddings:
                raise ValueError(
                    f"padding_idx must lie in [-{num_embeddings}, {num_embeddings}), "
                    f"got {padding_idx}"
                )
            padding_idx %= num_embeddings  # as torch: -1 names the last row
        self.padding_idx = padding_idx
        weight = normal(rng, (num_embeddings, embedding_dim), dtype)
        if padding_idx is not None:
            weight[padding_idx] = 0
        self.add_param("weight", weight)

    def forward(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``ids`` integer array -> ``(vectors (..., E), cache)``."""
        ids = self._check_ids(ids)
        return self.params["weight"][ids], ids

    def rows(self, ids: np.ndarray) -> TableRows:
        """As :meth:`forward`, the vectors left as rows of the table for a recurrent layer to
        read (:class:`rnnkit.loops.TableRows`); :meth:`backward_table` takes the table's
        gradient the layer returns."""
        return TableRows(self.params["weight"], np.ascontiguousarray(self._check_ids(ids)))

    def backward_table(self, dtable: np.ndarray) -> None:
        """Adds the gradient of the whole table (``(V, E)``, from a layer that read
        :meth:`rows`); the padding row gets none."""
        if self.padding_idx is not None:
            dtable[self.padding_idx] = 0
        self.grads["weight"] += dtable

    def _check_ids(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids)
        if not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"Embedding expects integer token ids, got dtype {ids.dtype}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.num_embeddings):
            raise ValueError(
                f"token ids must lie in [0, {self.num_embeddings}), got "
                f"min {ids.min()} and max {ids.max()}"
            )
        return ids

    def backward(self, dy: np.ndarray, cache: np.ndarray) -> None:
        """Adds each vector's gradient into its row (rows used twice get both)."""
        ids = cache
        dy2 = dy.reshape(-1, self.embedding_dim)
        flat = ids.reshape(-1)
        if self.padding_idx is not None:
            keep = flat != self.padding_idx
            flat, dy2 = flat[keep], dy2[keep]
        if kernels.AVAILABLE:
            kernels.add_rows(self.grads["weight"], flat, np.ascontiguousarray(dy2))
        else:
            np.add.at(self.grads["weight"], flat, dy2)


class Dropout(Module):
    """Inverted dropout: in training, zero each entry with probability p and scale the rest by
    1 / (1 - p); in evaluation, the identity."""

    def __init__(self, p: float = 0.5, *, rng: np.random.Generator | int | None = None):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability must be in [0, 1), got {p!r}")
        self.p = float(p)
        self.rng = as_generator(rng)

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Returns ``(y, mask)``; the mask is None when nothing is dropped."""
        if not self.training or self.p == 0:
            return x, None
        mask = (self.rng.random(x.shape) >= self.p).astype(x.dtype) / (1 - self.p)
        return x * mask, mask

    def backward(self, dy: np.ndarray, cache: np.ndarray | None) -> np.ndarray:
        """dx = dy * mask."""
        return dy if cache is None else dy * cache
