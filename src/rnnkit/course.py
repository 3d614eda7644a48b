"""The Sequence Models course's own function API (week 1), on top of :mod:`rnnkit.cells`.

Shapes are the course's, with examples as columns: a sequence ``x`` is ``(n_x, m, T_x)``, one
step ``xt`` is ``(n_x, m)``, states ``a``, ``c`` are ``(n_a, m)``, biases ``(n_a, 1)``.
``parameters`` is the course's dict:

- RNN: ``Wax (n_a, n_x)``, ``Waa (n_a, n_a)``, ``ba (n_a, 1)``, output ``Wya (n_y, n_a)``, ``by``;
- LSTM: ``Wf, Wi, Wc, Wo (n_a, n_a + n_x)`` acting on ``[a_prev; xt]``, ``bf, bi, bc, bo``,
  output ``Wy (n_y, n_a)``, ``by``;
- GRU: ``Wu, Wr, Wc (n_a, n_a + n_x)``, ``bu, br, bc``, output ``Wy``, ``by``; without ``Wr``
  the course's simplified GRU (update gate only).

Nothing here re-derives the math. Each step converts the dict with
:func:`rnnkit.gates.course_to_pytorch` (``b_ih`` is the course's bias, no ``b_hh``), transposes
to the cells' batch rows ``(m, .)``, calls the cell, and maps the gradients back with
:func:`rnnkit.gates.pytorch_to_course`. That mapping is linear and, on the weights, a signed
permutation, so the same function maps gradients: ``dWu = -dW_z``, and ``dW`` of a matrix acting
on ``[a_prev; xt]`` is ``concat([dW_hh, dW_ih], axis=1)`` of its gate block.

A step's cache is a :class:`StepCache` whose first four fields are the course's
``(a_next, a_prev, xt, parameters)``; a sequence's ``caches`` is ``(list of step caches, x)``,
as in the course.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import numpy as np

from .cells import CellParams

# The cells share the course's function names, so they come in under a _cells_ prefix.
from .cells import gru_cell_backward as _cells_gru_cell_backward
from .cells import gru_cell_forward as _cells_gru_cell_forward
from .cells import lstm_cell_backward as _cells_lstm_cell_backward
from .cells import lstm_cell_forward as _cells_lstm_cell_forward
from .cells import rnn_cell_backward as _cells_rnn_cell_backward
from .cells import rnn_cell_forward as _cells_rnn_cell_forward
from .cells import simple_gru_cell_backward as _cells_simple_gru_cell_backward
from .cells import simple_gru_cell_forward as _cells_simple_gru_cell_forward
from .functional import softmax
from .gates import course_to_pytorch, pytorch_to_course

Parameters = dict[str, np.ndarray]
Grads = dict[str, np.ndarray]

# Whole-cell forward and backward of rnnkit.cells for the one-state cells, by mapping name.
_ONE_STATE_CELLS = {
    "rnn": (_cells_rnn_cell_forward, _cells_rnn_cell_backward),
    "gru": (partial(_cells_gru_cell_forward, reset_after=False), _cells_gru_cell_backward),
    "gru_simple": (_cells_simple_gru_cell_forward, _cells_simple_gru_cell_backward),
}
# Name of the output layer's weight: the course writes Wya for the RNN and Wy for the others.
_OUTPUT_WEIGHT = {"rnn": "Wya", "lstm": "Wy", "gru": "Wy", "gru_simple": "Wy"}


class StepCache(NamedTuple):
    """What a ``*_cell_backward`` needs; the first four fields are the course's RNN cache."""

    a_next: np.ndarray  # (n_a, m)
    a_prev: np.ndarray  # (n_a, m)
    xt: np.ndarray  # (n_x, m)
    parameters: Parameters
    cell: str  # "rnn", "lstm", "gru" or "gru_simple", as in rnnkit.gates
    p: CellParams  # the same weights as the cells take them
    cell_cache: tuple  # the cell's own cache, in batch rows


# ---------------------------------------------------------------- helpers


def _cell_params(parameters: Parameters, cell: str) -> CellParams:
    """The course's dict as the cells take it: b_ih is the course's single bias, no b_hh."""
    state = course_to_pytorch(parameters, cell)
    return CellParams(state["weight_ih_l0"], state["weight_hh_l0"], state["bias_ih_l0"])


def _course_grads(grads: Grads, cell: str) -> Grads:
    """The cells' gradients (PyTorch layout) as the course's ``dW..``, ``db..``."""
    state = {
        "weight_ih_l0": grads["w_ih"],
        "weight_hh_l0": grads["w_hh"],
        "bias_ih_l0": grads["b_ih"],
    }
    return {"d" + name: g for name, g in pytorch_to_course(state, cell).items()}


def _check_shapes(p: CellParams, x_name: str, x: np.ndarray, **states: np.ndarray) -> None:
    """Raise a ValueError unless ``xt`` is ``(n_x, m)`` (``x``: ``(n_x, m, T_x)``) and every
    state is ``(n_a, m)``, with ``n_a``, ``n_x`` read from the parameters."""
    n_a, n_x = p.w_hh.shape[1], p.w_ih.shape[1]
    dims, ndim = ("(n_x, m)", 2) if x_name == "xt" else ("(n_x, m, T_x)", 3)
    if x.ndim != ndim or x.shape[0] != n_x:
        raise ValueError(f"{x_name} must have shape {dims} with n_x = {n_x}, got {x.shape}")
    m = x.shape[1]
    for name, state in states.items():
        if state.shape != (n_a, m):
            raise ValueError(f"{name} must have shape (n_a, m) = {(n_a, m)}, got {state.shape}")


def _predict(a_next: np.ndarray, parameters: Parameters, cell: str) -> np.ndarray:
    """yt_pred = softmax(Wy a<t> + by) over the n_y classes (axis 0)."""
    return softmax(parameters[_OUTPUT_WEIGHT[cell]] @ a_next + parameters["by"], axis=0)


def _step(
    xt: np.ndarray, a_prev: np.ndarray, parameters: Parameters, cell: str, p: CellParams
) -> tuple[np.ndarray, np.ndarray, StepCache]:
    """One step of a one-state cell (RNN or GRU) in the course's shapes."""
    cell_forward = _ONE_STATE_CELLS[cell][0]
    a_next, cell_cache = cell_forward(xt.T, a_prev.T, p)  # (m, n_a)
    a_next = a_next.T  # (n_a, m)
    cache = StepCache(a_next, a_prev, xt, parameters, cell, p, cell_cache)
    return a_next, _predict(a_next, parameters, cell), cache


def _forward(
    x: np.ndarray, a0: np.ndarray, parameters: Parameters, cell: str
) -> tuple[np.ndarray, np.ndarray, tuple[list[StepCache], np.ndarray]]:
    """A one-state cell over the whole sequence: ``(a, y_pred, caches)``."""
    p = _cell_params(parameters, cell)
    _check_shapes(p, "x", x, a0=a0)
    a_next, steps = a0, []
    for t in range(x.shape[2]):
        a_next, yt_pred, cache = _step(x[:, :, t], a_next, parameters, cell, p)
        steps.append((a_next, yt_pred, cache))
    a, y_pred, caches = zip(*steps)
    return np.stack(a, axis=2), np.stack(y_pred, axis=2), (list(caches), x)


def _cell_backward(da_next: np.ndarray, cache: StepCache) -> Grads:
    """Backward through one step of a one-state cell, in the course's shapes and names."""
    cell_backward = _ONE_STATE_CELLS[cache.cell][1]
    dxt, da_prev, grads = cell_backward(da_next.T, cache.cell_cache, cache.p)
    return {"dxt": dxt.T, "da_prev": da_prev.T, **_course_grads(grads, cache.cell)}


def _add(total: Grads, grads: Grads) -> Grads:
    return grads if not total else {name: total[name] + g for name, g in grads.items()}


def _backward(da: np.ndarray, caches: tuple[list[StepCache], np.ndarray]) -> Grads:
    """Backpropagation through time of a one-state cell; the carried da_prev adds to da<t>."""
    steps, x = caches
    dx = np.zeros(x.shape, dtype=da.dtype)  # (n_x, m, T_x)
    da_prevt = np.zeros_like(da[:, :, 0])  # (n_a, m)
    total: Grads = {}
    for t in reversed(range(da.shape[2])):
        grads = _cell_backward(da[:, :, t] + da_prevt, steps[t])
        dx[:, :, t] = grads.pop("dxt")
        da_prevt = grads.pop("da_prev")
        total = _add(total, grads)
    return {"dx": dx, "da0": da_prevt, **total}


def _gru_kind(parameters: Parameters) -> str:
    return "gru" if "Wr" in parameters else "gru_simple"


# ---------------------------------------------------------------- vanilla RNN


def rnn_cell_forward(
    xt: np.ndarray, a_prev: np.ndarray, parameters: Parameters
) -> tuple[np.ndarray, np.ndarray, StepCache]:
    """One step of the basic RNN::

        a<t> = tanh(Waa a<t-1> + Wax x<t> + ba)
        ŷ<t> = softmax(Wya a<t> + by)

    Args:
        xt: ``(n_x, m)``. a_prev: ``(n_a, m)``. parameters: ``Wax, Waa, ba, Wya, by``.

    Returns:
        ``(a_next (n_a, m), yt_pred (n_y, m), cache)``.
    """
    p = _cell_params(parameters, "rnn")
    _check_shapes(p, "xt", xt, a_prev=a_prev)
    return _step(xt, a_prev, parameters, "rnn", p)


def rnn_forward(
    x: np.ndarray, a0: np.ndarray, parameters: Parameters
) -> tuple[np.ndarray, np.ndarray, tuple[list[StepCache], np.ndarray]]:
    """The basic RNN over a sequence, a<0> = a0.

    Args:
        x: ``(n_x, m, T_x)``. a0: ``(n_a, m)``. parameters: as :func:`rnn_cell_forward`.

    Returns:
        ``(a (n_a, m, T_x), y_pred (n_y, m, T_x), caches)``; ``caches = (list of step caches, x)``.
    """
    return _forward(x, a0, parameters, "rnn")


def rnn_cell_backward(da_next: np.ndarray, cache: StepCache) -> Grads:
    """Backward through one RNN step, with dz = da_next * (1 - a<t>^2)::

        dxt = Wax^T dz    da_prev = Waa^T dz    dWax = dz xt^T    dWaa = dz a_prev^T
        dba = sum of dz over the m examples

    Args:
        da_next: ``(n_a, m)``, the gradient of the loss with respect to a<t>.
        cache: from :func:`rnn_cell_forward`.

    Returns:
        ``dxt (n_x, m), da_prev (n_a, m), dWax, dWaa, dba (n_a, 1)``.
    """
    return _cell_backward(da_next, cache)


def rnn_backward(da: np.ndarray, caches: tuple[list[StepCache], np.ndarray]) -> Grads:
    """Backpropagation through time of the basic RNN.

    Args:
        da: ``(n_a, m, T_x)``, the gradient of the loss with respect to every a<t> (from the
            output layer, which is not included here).
        caches: from :func:`rnn_forward`.

    Returns:
        ``dx (n_x, m, T_x), da0 (n_a, m), dWax, dWaa, dba``, summed over time.
    """
    return _backward(da, caches)


# ---------------------------------------------------------------- LSTM


def _lstm_step(
    xt: np.ndarray, a_prev: np.ndarray, c_prev: np.ndarray, parameters: Parameters, p: CellParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray, StepCache]:
    a_next, c_next, cell_cache = _cells_lstm_cell_forward(xt.T, a_prev.T, c_prev.T, p)
    a_next, c_next = a_next.T, c_next.T  # (n_a, m)
    cache = StepCache(a_next, a_prev, xt, parameters, "lstm", p, cell_cache)
    return a_next, c_next, _predict(a_next, parameters, "lstm"), cache


def lstm_cell_forward(
    xt: np.ndarray, a_prev: np.ndarray, c_prev: np.ndarray, parameters: Parameters
) -> tuple[np.ndarray, np.ndarray, np.ndarray, StepCache]:
    """One LSTM step, every gate acting on concat = [a<t-1>; x<t>]::

        Γf = σ(Wf concat + bf)    Γi = σ(Wi concat + bi)    Γo = σ(Wo concat + bo)
        c̃<t> = tanh(Wc concat + bc)
        c<t> = Γf*c<t-1> + Γi*c̃<t>    a<t> = Γo*tanh(c<t>)    ŷ<t> = softmax(Wy a<t> + by)

    Γi is the lectures' update gate Γu.

    Args:
        xt: ``(n_x, m)``. a_prev, c_prev: ``(n_a, m)``.
        parameters: ``Wf, Wi, Wc, Wo (n_a, n_a + n_x)``, ``bf, bi, bc, bo (n_a, 1)``, ``Wy, by``.

    Returns:
        ``(a_next (n_a, m), c_next (n_a, m), yt_pred (n_y, m), cache)``.
    """
    p = _cell_params(parameters, "lstm")
    _check_shapes(p, "xt", xt, a_prev=a_prev, c_prev=c_prev)
    return _lstm_step(xt, a_prev, c_prev, parameters, p)


def lstm_forward(
    x: np.ndarray, a0: np.ndarray, parameters: Parameters
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[list[StepCache], np.ndarray]]:
    """The LSTM over a sequence, a<0> = a0 and c<0> = 0 as in the course.

    Args:
        x: ``(n_x, m, T_x)``. a0: ``(n_a, m)``. parameters: as :func:`lstm_cell_forward`.

    Returns:
        ``(a, y, c, caches)``: ``a``, ``c`` ``(n_a, m, T_x)``, ``y`` ``(n_y, m, T_x)``.
    """
    p = _cell_params(parameters, "lstm")
    _check_shapes(p, "x", x, a0=a0)
    a_next, c_next, steps = a0, np.zeros_like(a0), []
    for t in range(x.shape[2]):
        a_next, c_next, yt_pred, cache = _lstm_step(x[:, :, t], a_next, c_next, parameters, p)
        steps.append((a_next, yt_pred, c_next, cache))
    a, y, c, caches = zip(*steps)
    return np.stack(a, axis=2), np.stack(y, axis=2), np.stack(c, axis=2), (list(caches), x)


def lstm_cell_backward(da_next: np.ndarray, dc_next: np.ndarray, cache: StepCache) -> Grads:
    """Backward through one LSTM step; a<t> = Γo*tanh(c<t>) feeds c<t> too::

        dc = dc_next + da_next * Γo * (1 - tanh(c<t>)^2)    dc_prev = dc * Γf

    Args:
        da_next, dc_next: ``(n_a, m)``, the gradients with respect to a<t> and c<t>.
        cache: from :func:`lstm_cell_forward`.

    Returns:
        ``dxt, da_prev, dc_prev, dWf, dWi, dWc, dWo (n_a, n_a + n_x), dbf, dbi, dbc, dbo``.
    """
    dxt, da_prev, dc_prev, grads = _cells_lstm_cell_backward(
        da_next.T, dc_next.T, cache.cell_cache, cache.p
    )
    return {
        "dxt": dxt.T,  # (n_x, m)
        "da_prev": da_prev.T,  # (n_a, m)
        "dc_prev": dc_prev.T,  # (n_a, m)
        **_course_grads(grads, "lstm"),
    }


def lstm_backward(da: np.ndarray, caches: tuple[list[StepCache], np.ndarray]) -> Grads:
    """Backpropagation through time of the LSTM (c<T_x> is not part of the loss).

    Args:
        da: ``(n_a, m, T_x)``, the gradient of the loss with respect to every a<t>.
        caches: from :func:`lstm_forward`.

    Returns:
        ``dx (n_x, m, T_x), da0 (n_a, m), dWf, dWi, dWc, dWo, dbf, dbi, dbc, dbo``.
    """
    steps, x = caches
    dx = np.zeros(x.shape, dtype=da.dtype)  # (n_x, m, T_x)
    da_prevt = np.zeros_like(da[:, :, 0])  # (n_a, m)
    dc_prevt = np.zeros_like(da_prevt)  # (n_a, m)
    total: Grads = {}
    for t in reversed(range(da.shape[2])):
        grads = lstm_cell_backward(da[:, :, t] + da_prevt, dc_prevt, steps[t])
        dx[:, :, t] = grads.pop("dxt")
        da_prevt, dc_prevt = grads.pop("da_prev"), grads.pop("dc_prev")
        total = _add(total, grads)
    return {"dx": dx, "da0": da_prevt, **total}


# ---------------------------------------------------------------- GRU


def gru_cell_forward(
    xt: np.ndarray, a_prev: np.ndarray, parameters: Parameters
) -> tuple[np.ndarray, np.ndarray, StepCache]:
    """One GRU step in the course's form (Cho et al. 2014, reset before the product)::

        Γu = σ(Wu [a<t-1>; x<t>] + bu)       Γr = σ(Wr [a<t-1>; x<t>] + br)
        c̃<t> = tanh(Wc [Γr*a<t-1>; x<t>] + bc)
        a<t> = Γu*c̃<t> + (1-Γu)*a<t-1>       ŷ<t> = softmax(Wy a<t> + by)

    Without ``Wr`` in ``parameters`` this is the simplified GRU (update gate only):
    c̃<t> = tanh(Wc [a<t-1>; x<t>] + bc).

    Args:
        xt: ``(n_x, m)``. a_prev: ``(n_a, m)``.
        parameters: ``Wu, Wr, Wc (n_a, n_a + n_x)``, ``bu, br, bc (n_a, 1)``, ``Wy, by``.

    Returns:
        ``(a_next (n_a, m), yt_pred (n_y, m), cache)``.
    """
    cell = _gru_kind(parameters)
    p = _cell_params(parameters, cell)
    _check_shapes(p, "xt", xt, a_prev=a_prev)
    return _step(xt, a_prev, parameters, cell, p)


def gru_forward(
    x: np.ndarray, a0: np.ndarray, parameters: Parameters
) -> tuple[np.ndarray, np.ndarray, tuple[list[StepCache], np.ndarray]]:
    """The GRU (full, or simplified without ``Wr``) over a sequence, a<0> = a0.

    Args:
        x: ``(n_x, m, T_x)``. a0: ``(n_a, m)``. parameters: as :func:`gru_cell_forward`.

    Returns:
        ``(a (n_a, m, T_x), y (n_y, m, T_x), caches)``.
    """
    return _forward(x, a0, parameters, _gru_kind(parameters))


def gru_cell_backward(da_next: np.ndarray, cache: StepCache) -> Grads:
    """Backward through one GRU step.

    Args:
        da_next: ``(n_a, m)``. cache: from :func:`gru_cell_forward`.

    Returns:
        ``dxt, da_prev, dWu, dbu, dWr, dbr, dWc, dbc`` (no ``dWr``, ``dbr`` when simplified).
    """
    return _cell_backward(da_next, cache)


def gru_backward(da: np.ndarray, caches: tuple[list[StepCache], np.ndarray]) -> Grads:
    """Backpropagation through time of the GRU.

    Args:
        da: ``(n_a, m, T_x)``, the gradient of the loss with respect to every a<t>.
        caches: from :func:`gru_forward`.

    Returns:
        ``dx, da0, dWu, dbu, dWr, dbr, dWc, dbc`` (no ``dWr``, ``dbr`` when simplified).
    """
    return _backward(da, caches)


# ---------------------------------------------------------------- Dinosaurus Island
#
# The graded assignment of the sampling and clipping sections: a character-level RNN trained one
# name per step with plain gradient descent. Parameters are the assignment's dict ``Wax (n_a,
# n_x)``, ``Waa (n_a, n_a)``, ``Wya (n_y, n_a)``, ``b (n_a, 1)``, ``by (n_y, 1)``; a name is a
# list of character indices, read one-hot. The notebook reseeds NumPy's global generator; here
# every draw comes from a local ``np.random.RandomState`` seeded the same way, so the numbers
# are the notebook's and no one else's random state is touched.

DINO_GRADIENTS = ("dWax", "dWaa", "dWya", "db", "dby")


def _rnn_parameters(parameters: Parameters) -> Parameters:
    """The assignment's dict under the names of :func:`rnn_forward` (``b`` is ``ba``)."""
    names = {"Wax": "Wax", "Waa": "Waa", "ba": "b", "Wya": "Wya", "by": "by"}
    return {ours: parameters[theirs] for ours, theirs in names.items()}


def _one_hot(X: list, vocab_size: int) -> np.ndarray:
    """``(vocab_size, 1, T_x)``; a ``None`` index (the first input) is the zero vector."""
    x = np.zeros((vocab_size, 1, len(X)))
    for t, ix in enumerate(X):
        if ix is not None:
            x[ix, 0, t] = 1.0
    return x


def clip(gradients: Grads, maxValue: float) -> Grads:
    """Clip every gradient element-wise into ``[-maxValue, maxValue]`` (the course's clipping).

    Args:
        gradients: ``dWaa, dWax, dWya, db, dby``.
        maxValue: the bound.

    Returns:
        A new dict of clipped copies of those five; ``gradients`` is left as it was.
    """
    return {name: np.clip(gradients[name], -maxValue, maxValue) for name in DINO_GRADIENTS}


def sample(parameters: Parameters, char_to_ix: dict[str, int], seed: int) -> list[int]:
    """Sample one name, a character at a time, each fed back as the next input::

        a<t+1> = tanh(Wax x<t+1> + Waa a<t> + b)     ŷ<t+1> = softmax(Wya a<t+1> + by)

    starting from x<1> = 0 and a<0> = 0, until the newline is drawn or 50 characters have been
    (then a newline is appended). Draw ``counter`` uses ``RandomState(counter + seed)`` with
    ``seed`` going up by one each draw, as the notebook's ``np.random.seed(counter + seed)``.

    Returns:
        The sampled indices, the last one the newline's.
    """
    vocab_size, n_a = parameters["by"].shape[0], parameters["Waa"].shape[1]
    p = _rnn_parameters(parameters)
    x, a_prev = np.zeros((vocab_size, 1)), np.zeros((n_a, 1))
    newline = char_to_ix["\n"]
    indices: list[int] = []
    idx, counter = -1, 0
    while idx != newline and counter != 50:
        a, y, _ = rnn_cell_forward(x, a_prev, p)
        rng = np.random.RandomState(counter + seed)
        idx = int(rng.choice(list(range(vocab_size)), p=y.ravel()))
        indices.append(idx)
        x = np.zeros((vocab_size, 1))
        x[idx] = 1
        a_prev = a
        seed += 1
        counter += 1
    if counter == 50:
        indices.append(newline)
    return indices


def optimize(
    X: list, Y: list[int], a_prev: np.ndarray, parameters: Parameters, learning_rate: float = 0.01
) -> tuple[float, Grads, np.ndarray]:
    """One step of training on one name: forward, backpropagation through time, clipping to
    [-5, 5], and a gradient-descent update of ``parameters`` in place (the notebook's
    ``update_parameters``)::

        L = -Σ_t log ŷ<t>[Y<t>]     dz<t> = ŷ<t> - y<t>     da<t> = Wya^T dz<t> (+ from a<t+1>)

    Args:
        X: input indices, ``None`` first (the zero vector). Y: the targets, X shifted by one.
        a_prev: ``(n_a, 1)``, the state the name starts from.
        parameters: ``Wax, Waa, Wya, b, by``; updated in place.

    Returns:
        ``(loss, gradients, a_last)``: the loss summed over the name, the clipped gradients
        ``dWaa, dWax, dWya, db, dby``, and the last hidden state ``(n_a, 1)``.
    """
    vocab_size = parameters["by"].shape[0]
    p = _rnn_parameters(parameters)
    a, y_hat, caches = rnn_forward(_one_hot(X, vocab_size), a_prev, p)  # (n_a|n_y, 1, T_x)
    T_x = len(X)
    loss = -float(sum(np.log(y_hat[Y[t], 0, t]) for t in range(T_x)))
    dz = y_hat.copy()
    dz[Y, 0, range(T_x)] -= 1  # softmax + cross-entropy: dz<t> = ŷ<t> - y<t>
    da = np.einsum("ya,ymt->amt", parameters["Wya"], dz)  # da<t> = Wya^T dz<t>
    grads = rnn_backward(da, caches)
    gradients = {
        "dWax": grads["dWax"],
        "dWaa": grads["dWaa"],
        "dWya": np.einsum("ymt,amt->ya", dz, a),  # Σ_t dz<t> a<t>^T
        "db": grads["dba"],
        "dby": dz.sum(axis=2),
    }
    gradients = clip(gradients, 5)
    for name in ("Wax", "Waa", "Wya", "b", "by"):
        parameters[name] -= learning_rate * gradients["d" + name]
    return loss, gradients, a[:, :, -1]


def model(
    data_x: list[str],
    ix_to_char: dict[int, str],
    char_to_ix: dict[str, int],
    num_iterations: int = 35000,
    n_a: int = 50,
    dino_names: int = 7,
    vocab_size: int = 27,
    verbose: bool = False,
) -> tuple[Parameters, str]:
    """Train the assignment's character-level RNN on names, one name per iteration.

    As the notebook: weights drawn with ``RandomState(1)`` times 0.01, zero biases; the names
    shuffled with ``RandomState(0)``; iteration j trains on name ``j % len``, read as
    ``X = [None] + indices`` and ``Y = indices + [newline]``, carrying ``a_prev`` from name to
    name; the loss smoothed as ``0.999 * loss + 0.001 * current`` from ``dino_names * ln
    vocab_size``. Every 2000 iterations it prints ``Iteration: j, Loss: L`` and ``dino_names``
    sampled names (:func:`sample` with seeds 0, 1, ...).

    Returns:
        ``(parameters, last_dino_name)``: the trained dict and the last name sampled.
    """
    rng = np.random.RandomState(1)
    parameters = {
        "Wax": rng.randn(n_a, vocab_size) * 0.01,
        "Waa": rng.randn(n_a, n_a) * 0.01,
        "Wya": rng.randn(vocab_size, n_a) * 0.01,
        "b": np.zeros((n_a, 1)),
        "by": np.zeros((vocab_size, 1)),
    }
    loss = -np.log(1.0 / vocab_size) * dino_names
    examples = [x.strip() for x in data_x]
    np.random.RandomState(0).shuffle(examples)
    a_prev = np.zeros((n_a, 1))
    last_dino_name = "abc"
    newline = char_to_ix["\n"]
    for j in range(num_iterations):
        idx = j % len(examples)
        single_example_ix = [char_to_ix[c] for c in examples[idx]]
        X = [None] + single_example_ix
        Y = X[1:] + [newline]
        curr_loss, gradients, a_prev = optimize(X, Y, a_prev, parameters, learning_rate=0.01)
        if verbose and j in (0, len(examples) - 1, len(examples)):
            print("j = ", j, "idx = ", idx)
        if verbose and j == 0:
            print("single_example =", examples[idx])
            print("single_example_ix", single_example_ix)
            print(" X = ", X, "\n", "Y =       ", Y, "\n")
        loss = loss * 0.999 + curr_loss * 0.001
        if j % 2000 == 0:
            print(f"Iteration: {j}, Loss: {loss:f}\n")
            for seed in range(dino_names):
                text = "".join(ix_to_char[ix] for ix in sample(parameters, char_to_ix, seed))
                last_dino_name = text[0].upper() + text[1:]
                print(last_dino_name.replace("\n", ""))
            print("\n")
    return parameters, last_dino_name
