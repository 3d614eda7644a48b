"""One time step of every recurrent cell, forward and backward: pure functions, the math lives here.

Notation. Batches are rows: ``x_t`` is ``(N, D)``, states ``a_prev``, ``c_prev`` are ``(N, H)``.
Weights are PyTorch's: ``w_ih (G*H, D)``, ``w_hh (G*H, H)``, ``b_ih``, ``b_hh (G*H,)``, gate blocks
in the orders of :mod:`rnnkit.gates`. The course writes ``Wax x<t>`` where we write
``x_t @ w_ih.T``; its single bias ``b_a`` is ``b_ih + b_hh``.

Each cell comes in two layers:

- ``*_step_forward(xw_t, state, p)`` is the recurrent part. It takes the input projection
  ``xw_t = x_t @ w_ih.T + b_ih`` already computed, so a sequence layer can project every time
  step in one matrix product. ``*_step_backward`` returns the gradient of that projection
  (``dxw_t``), the gradient of the previous state and the gradients of the recurrent weights.
- ``*_cell_forward(x_t, state, p)`` and ``*_cell_backward`` are the whole cell: projection plus
  step, with every gradient. They are the reference a layer is tested against.

Backward functions return new arrays and never write into their arguments, so a caller can
accumulate (``+=``) them wherever it keeps gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .functional import sigmoid
from .gates import GRU_GATES, LSTM_GATES, RNN_GATES, SIMPLE_GRU_GATES, gate_slices

Grads = dict[str, np.ndarray]


class CellParams(NamedTuple):
    """Weights of one cell (one layer, one direction), PyTorch shapes and gate order."""

    w_ih: np.ndarray  # (G*H, D)
    w_hh: np.ndarray  # (G*H, H)
    b_ih: np.ndarray | None = None  # (G*H,)
    b_hh: np.ndarray | None = None  # (G*H,)
    w_peep: np.ndarray | None = None  # (3, H) LSTM peepholes for gates i, f, o
    w_hr: np.ndarray | None = None  # (P, H) LSTM projection of the output (PyTorch's proj_size)


# ---------------------------------------------------------------- input projection


def input_projection(x_t: np.ndarray, p: CellParams) -> np.ndarray:
    """``x_t @ w_ih.T + b_ih``: the part of every gate that does not depend on time order.

    Works on one step ``(N, D)`` or a whole sequence ``(T, N, D)`` at once.
    """
    # One product over all steps: (T, N, D) @ (D, G*H) would be T products, slow for small N.
    xw = (x_t.reshape(-1, x_t.shape[-1]) @ p.w_ih.T).reshape(*x_t.shape[:-1], -1)  # (..., G*H)
    if p.b_ih is not None:
        xw += p.b_ih
    return xw


def input_projection_backward(
    dxw: np.ndarray, x: np.ndarray, p: CellParams, bias_grad: np.ndarray | None = None
) -> tuple[np.ndarray, Grads]:
    """Gradients of :func:`input_projection` for a step ``(N, .)`` or a sequence ``(T, N, .)``;
    ``bias_grad`` is b_ih's, Σ dxw, where the caller has it already."""
    dxw2 = dxw.reshape(-1, dxw.shape[-1])  # (T*N, G*H)
    grads = {"w_ih": dxw2.T @ x.reshape(-1, x.shape[-1])}  # dW_ax = dz x^T summed over t and N
    if p.b_ih is not None and bias_grad is None:  # Σ over steps and sequences: BLAS, 2-4x .sum
        bias_grad = np.ones(len(dxw2), dtype=dxw2.dtype) @ dxw2
    if p.b_ih is not None:
        grads["b_ih"] = bias_grad
    dx = (dxw2 @ p.w_ih).reshape(*dxw.shape[:-1], -1)  # dx<t> = W_ax^T dz
    return dx, grads


def _hidden_projection(a_prev: np.ndarray, w_hh: np.ndarray, b_hh: np.ndarray | None) -> np.ndarray:
    hw = a_prev @ w_hh.T
    if b_hh is not None:
        hw += b_hh
    return hw


def _hidden_grads(dhw: np.ndarray, a_prev: np.ndarray, p: CellParams) -> Grads:
    grads = {"w_hh": dhw.T @ a_prev}  # dW_aa = dz a<t-1>^T
    if p.b_hh is not None:
        grads["b_hh"] = dhw.sum(axis=0)
    return grads


# ---------------------------------------------------------------- vanilla RNN


def rnn_step_forward(
    xw_t: np.ndarray, a_prev: np.ndarray, p: CellParams, nonlinearity: str = "tanh"
) -> tuple[np.ndarray, tuple]:
    """a<t> = g(W_aa a<t-1> + W_ax x<t> + b_a), with g = tanh or relu."""
    z = xw_t + _hidden_projection(a_prev, p.w_hh, p.b_hh)  # (N, H)
    a_t = np.tanh(z) if nonlinearity == "tanh" else np.maximum(z, 0)
    return a_t, (a_prev, a_t)


def rnn_step_backward(
    da_t: np.ndarray, cache: tuple, p: CellParams, nonlinearity: str = "tanh"
) -> tuple[np.ndarray, np.ndarray, Grads]:
    """Returns ``(dxw_t, da_prev, grads)`` for :func:`rnn_step_forward`."""
    a_prev, a_t = cache
    if nonlinearity == "tanh":
        dz = da_t * (1 - a_t * a_t)  # tanh'(z) = 1 - a<t>^2
    else:
        dz = da_t * (a_t > 0)
    da_prev = dz @ p.w_hh  # da<t-1> = W_aa^T dz
    return dz, da_prev, _hidden_grads(dz, a_prev, p)


# ---------------------------------------------------------------- LSTM


def lstm_step_forward(
    xw_t: np.ndarray, a_prev: np.ndarray, c_prev: np.ndarray, p: CellParams, gers: bool = False
) -> tuple[np.ndarray, np.ndarray, tuple]:
    """One LSTM step. With ``p.w_peep`` the gates also see the cell state (peepholes): all
    three see c<t-1>, as in the notes, or with ``gers`` the output gate sees the new c<t>, as
    in Gers et al. (2002) and ONNX. With ``p.w_hr`` the output is projected (PyTorch's
    ``proj_size``): a<t> = W_hr (Γo*tanh(c<t>)), and a<t-1> has the projection's size."""
    s = gate_slices(LSTM_GATES, c_prev.shape[1])
    z = xw_t + _hidden_projection(a_prev, p.w_hh, p.b_hh)  # (N, 4H), gates i, f, g, o
    peep = p.w_peep
    if peep is not None:
        z[:, s["i"]] += c_prev * peep[0]  # Γu also sees c<t-1>
        z[:, s["f"]] += c_prev * peep[1]
    gamma_u = sigmoid(z[:, s["i"]])  # Γu = σ(W_u [a<t-1>, x<t>] + b_u)
    gamma_f = sigmoid(z[:, s["f"]])  # Γf = σ(W_f [a<t-1>, x<t>] + b_f)
    c_tilde = np.tanh(z[:, s["g"]])  # c̃<t> = tanh(W_c [a<t-1>, x<t>] + b_c)
    c_t = gamma_f * c_prev + gamma_u * c_tilde  # c<t> = Γf*c<t-1> + Γu*c̃<t>
    if peep is not None:
        z[:, s["o"]] += (c_t if gers else c_prev) * peep[2]
    gamma_o = sigmoid(z[:, s["o"]])  # Γo = σ(W_o [a<t-1>, x<t>] + b_o)
    tanh_c = np.tanh(c_t)
    m_t = gamma_o * tanh_c  # a<t> = Γo*tanh(c<t>)
    a_t = m_t if p.w_hr is None else m_t @ p.w_hr.T  # a<t> = W_hr m<t> with a projection
    return a_t, c_t, (a_prev, c_prev, gamma_u, gamma_f, c_tilde, gamma_o, tanh_c, c_t, m_t, gers)


def lstm_step_backward(
    da_t: np.ndarray, dc_t: np.ndarray, cache: tuple, p: CellParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray, Grads]:
    """Returns ``(dxw_t, da_prev, dc_prev, grads)`` for :func:`lstm_step_forward`."""
    a_prev, c_prev, gamma_u, gamma_f, c_tilde, gamma_o, tanh_c, c_t, m_t, gers = cache
    s = gate_slices(LSTM_GATES, c_prev.shape[1])
    grads = {}
    if p.w_hr is not None:
        grads["w_hr"] = da_t.T @ m_t  # dW_hr = da<t> m<t>^T
        da_t = da_t @ p.w_hr  # the gradient of m<t>
    peep = p.w_peep
    dz = np.empty((a_prev.shape[0], 4 * c_prev.shape[1]), dtype=a_prev.dtype)  # (N, 4H)
    dz[:, s["o"]] = da_t * tanh_c * gamma_o * (1 - gamma_o)  # σ' = σ(1 - σ)
    dc = dc_t + da_t * gamma_o * (1 - tanh_c * tanh_c)  # a<t> = Γo*tanh(c<t>) feeds c<t> too
    if peep is not None and gers:
        dc += dz[:, s["o"]] * peep[2]  # Γo saw c<t>
    dz[:, s["i"]] = dc * c_tilde * gamma_u * (1 - gamma_u)
    dz[:, s["f"]] = dc * c_prev * gamma_f * (1 - gamma_f)
    dz[:, s["g"]] = dc * gamma_u * (1 - c_tilde * c_tilde)  # tanh' = 1 - tanh^2
    dc_prev = dc * gamma_f  # dc<t-1> = dc<t> * Γf
    da_prev = dz @ p.w_hh
    grads.update(_hidden_grads(dz, a_prev, p))
    if peep is not None:
        dz_i, dz_f, dz_o = dz[:, s["i"]], dz[:, s["f"]], dz[:, s["o"]]
        dc_prev += dz_i * peep[0] + dz_f * peep[1]
        if not gers:
            dc_prev += dz_o * peep[2]
        c_o = c_t if gers else c_prev
        grads["w_peep"] = np.stack(
            [(dz_i * c_prev).sum(0), (dz_f * c_prev).sum(0), (dz_o * c_o).sum(0)]
        )
    return dz, da_prev, dc_prev, grads


# ---------------------------------------------------------------- GRU


def gru_step_forward(
    xw_t: np.ndarray, a_prev: np.ndarray, p: CellParams, reset_after: bool = True
) -> tuple[np.ndarray, tuple]:
    """One full GRU step. We compute the course's Γu = 1 - z directly, so the last line reads
    as in the notes; the stored weights are PyTorch's (gate z), see :mod:`rnnkit.gates`.

    ``reset_after=True`` (PyTorch, cuDNN): c̃ = tanh(W_in x + b_in + Γr*(W_hn a<t-1> + b_hn)).
    ``reset_after=False`` (the course, Cho et al. 2014): c̃ = tanh(W_c [Γr*a<t-1>, x<t>] + b_c).
    """
    H = a_prev.shape[1]
    s = gate_slices(GRU_GATES, H)
    rz = slice(0, 2 * H)
    if reset_after:
        hw = _hidden_projection(a_prev, p.w_hh, p.b_hh)  # (N, 3H), gates r, z, n
    else:
        hw = _hidden_projection(a_prev, p.w_hh[rz], None if p.b_hh is None else p.b_hh[rz])
    gamma_r = sigmoid(xw_t[:, s["r"]] + hw[:, s["r"]])  # Γr = σ(W_r [a<t-1>, x<t>] + b_r)
    gamma_u = sigmoid(-(xw_t[:, s["z"]] + hw[:, s["z"]]))  # Γu = 1 - z = σ(W_u [..] + b_u)
    if reset_after:
        reset_in = hw[:, s["n"]]  # W_hn a<t-1> + b_hn, reset after the product
        c_tilde = np.tanh(xw_t[:, s["n"]] + gamma_r * reset_in)
    else:
        reset_in = gamma_r * a_prev  # Γr*a<t-1>, reset before the product
        hn = _hidden_projection(
            reset_in, p.w_hh[s["n"]], None if p.b_hh is None else p.b_hh[s["n"]]
        )
        c_tilde = np.tanh(xw_t[:, s["n"]] + hn)  # c̃ = tanh(W_c [Γr*a<t-1>, x<t>] + b_c)
    a_t = gamma_u * c_tilde + (1 - gamma_u) * a_prev  # a<t> = Γu*c̃<t> + (1-Γu)*a<t-1>
    return a_t, (a_prev, gamma_r, gamma_u, c_tilde, reset_in, reset_after)


def gru_step_backward(
    da_t: np.ndarray, cache: tuple, p: CellParams
) -> tuple[np.ndarray, np.ndarray, Grads]:
    """Returns ``(dxw_t, da_prev, grads)`` for :func:`gru_step_forward`."""
    a_prev, gamma_r, gamma_u, c_tilde, reset_in, reset_after = cache
    H = a_prev.shape[1]
    s = gate_slices(GRU_GATES, H)
    dn = da_t * gamma_u * (1 - c_tilde * c_tilde)  # through c̃ = tanh(.)
    dz = -da_t * (c_tilde - a_prev) * gamma_u * (1 - gamma_u)  # z = 1 - Γu flips the sign
    da_prev = da_t * (1 - gamma_u)
    dxw = np.empty((a_prev.shape[0], 3 * H), dtype=a_prev.dtype)  # (N, 3H)
    dxw[:, s["z"]] = dz
    dxw[:, s["n"]] = dn
    if reset_after:
        dxw[:, s["r"]] = dn * reset_in * gamma_r * (1 - gamma_r)
        dhw = dxw.copy()
        dhw[:, s["n"]] *= gamma_r  # n saw Γr*(W_hn a<t-1> + b_hn)
        da_prev += dhw @ p.w_hh
        return dxw, da_prev, _hidden_grads(dhw, a_prev, p)
    d_reset_in = dn @ p.w_hh[s["n"]]  # gradient of Γr*a<t-1>
    dxw[:, s["r"]] = d_reset_in * a_prev * gamma_r * (1 - gamma_r)
    rz = slice(0, 2 * H)
    da_prev += d_reset_in * gamma_r + dxw[:, rz] @ p.w_hh[rz]
    grads = {"w_hh": np.concatenate([dxw[:, rz].T @ a_prev, dn.T @ reset_in])}
    if p.b_hh is not None:
        grads["b_hh"] = dxw.sum(axis=0)
    return dxw, da_prev, grads


def simple_gru_step_forward(
    xw_t: np.ndarray, a_prev: np.ndarray, p: CellParams
) -> tuple[np.ndarray, tuple]:
    """The course's simplified GRU: an update gate and no reset gate (gates z, n).

    c̃<t> = tanh(W_c [c<t-1>, x<t>] + b_c), Γu = σ(W_u [c<t-1>, x<t>] + b_u),
    c<t> = Γu*c̃<t> + (1-Γu)*c<t-1>; the stored gate is z = 1 - Γu as in the full GRU.
    """
    s = gate_slices(SIMPLE_GRU_GATES, a_prev.shape[1])
    z = xw_t + _hidden_projection(a_prev, p.w_hh, p.b_hh)  # (N, 2H), gates z, n
    gamma_u = sigmoid(-z[:, s["z"]])  # Γu = 1 - σ(z)
    c_tilde = np.tanh(z[:, s["n"]])  # c̃<t>
    a_t = gamma_u * c_tilde + (1 - gamma_u) * a_prev  # c<t> = Γu*c̃<t> + (1-Γu)*c<t-1>
    return a_t, (a_prev, gamma_u, c_tilde)


def simple_gru_step_backward(
    da_t: np.ndarray, cache: tuple, p: CellParams
) -> tuple[np.ndarray, np.ndarray, Grads]:
    """Returns ``(dxw_t, da_prev, grads)`` for :func:`simple_gru_step_forward`."""
    a_prev, gamma_u, c_tilde = cache
    s = gate_slices(SIMPLE_GRU_GATES, a_prev.shape[1])
    dz = np.empty((a_prev.shape[0], 2 * a_prev.shape[1]), dtype=a_prev.dtype)  # (N, 2H)
    dz[:, s["z"]] = -da_t * (c_tilde - a_prev) * gamma_u * (1 - gamma_u)
    dz[:, s["n"]] = da_t * gamma_u * (1 - c_tilde * c_tilde)
    da_prev = da_t * (1 - gamma_u) + dz @ p.w_hh
    return dz, da_prev, _hidden_grads(dz, a_prev, p)


# ---------------------------------------------------------------- whole cells


def _merge(a: Grads, b: Grads) -> Grads:
    return {**a, **b}


def rnn_cell_forward(
    x_t: np.ndarray, a_prev: np.ndarray, p: CellParams, nonlinearity: str = "tanh"
) -> tuple[np.ndarray, tuple]:
    """Vanilla RNN cell: returns ``(a_t, cache)``, ``a_t`` is ``(N, H)``."""
    a_t, cache = rnn_step_forward(input_projection(x_t, p), a_prev, p, nonlinearity)
    return a_t, (x_t, cache)


def rnn_cell_backward(
    da_t: np.ndarray, cache: tuple, p: CellParams, nonlinearity: str = "tanh"
) -> tuple[np.ndarray, np.ndarray, Grads]:
    """Returns ``(dx_t, da_prev, grads)``; grads keyed ``w_ih, w_hh, b_ih, b_hh``."""
    x_t, step_cache = cache
    dxw, da_prev, grads = rnn_step_backward(da_t, step_cache, p, nonlinearity)
    dx_t, in_grads = input_projection_backward(dxw, x_t, p)
    return dx_t, da_prev, _merge(grads, in_grads)


def lstm_cell_forward(
    x_t: np.ndarray, a_prev: np.ndarray, c_prev: np.ndarray, p: CellParams, gers: bool = False
) -> tuple[np.ndarray, np.ndarray, tuple]:
    """LSTM cell: returns ``(a_t, c_t, cache)``."""
    a_t, c_t, cache = lstm_step_forward(input_projection(x_t, p), a_prev, c_prev, p, gers)
    return a_t, c_t, (x_t, cache)


def lstm_cell_backward(
    da_t: np.ndarray, dc_t: np.ndarray, cache: tuple, p: CellParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray, Grads]:
    """Returns ``(dx_t, da_prev, dc_prev, grads)``; grads also hold ``w_peep`` with peepholes."""
    x_t, step_cache = cache
    dxw, da_prev, dc_prev, grads = lstm_step_backward(da_t, dc_t, step_cache, p)
    dx_t, in_grads = input_projection_backward(dxw, x_t, p)
    return dx_t, da_prev, dc_prev, _merge(grads, in_grads)


def gru_cell_forward(
    x_t: np.ndarray, a_prev: np.ndarray, p: CellParams, reset_after: bool = True
) -> tuple[np.ndarray, tuple]:
    """Full GRU cell: returns ``(a_t, cache)``."""
    a_t, cache = gru_step_forward(input_projection(x_t, p), a_prev, p, reset_after)
    return a_t, (x_t, cache)


def gru_cell_backward(
    da_t: np.ndarray, cache: tuple, p: CellParams
) -> tuple[np.ndarray, np.ndarray, Grads]:
    """Returns ``(dx_t, da_prev, grads)``."""
    x_t, step_cache = cache
    dxw, da_prev, grads = gru_step_backward(da_t, step_cache, p)
    dx_t, in_grads = input_projection_backward(dxw, x_t, p)
    return dx_t, da_prev, _merge(grads, in_grads)


def simple_gru_cell_forward(
    x_t: np.ndarray, a_prev: np.ndarray, p: CellParams
) -> tuple[np.ndarray, tuple]:
    """Simplified GRU cell: returns ``(a_t, cache)``."""
    a_t, cache = simple_gru_step_forward(input_projection(x_t, p), a_prev, p)
    return a_t, (x_t, cache)


def simple_gru_cell_backward(
    da_t: np.ndarray, cache: tuple, p: CellParams
) -> tuple[np.ndarray, np.ndarray, Grads]:
    """Returns ``(dx_t, da_prev, grads)``."""
    x_t, step_cache = cache
    dxw, da_prev, grads = simple_gru_step_backward(da_t, step_cache, p)
    dx_t, in_grads = input_projection_backward(dxw, x_t, p)
    return dx_t, da_prev, _merge(grads, in_grads)


# ---------------------------------------------------------------- one interface for the layers


@dataclass(frozen=True)
class CellKind:
    """A cell seen through one interface: states are tuples, ``(a,)`` or ``(a, c)``.

    ``forward(xw_t, state, p) -> (state, cache)`` and
    ``backward(dstate, cache, p) -> (dxw_t, dstate_prev, grads)``.
    """

    name: str
    gates: tuple[str, ...]
    num_states: int
    forward: Callable
    backward: Callable


def _one_state(step_forward: Callable, step_backward: Callable, **kw) -> tuple:
    def forward(xw_t, state, p):
        a_t, cache = step_forward(xw_t, state[0], p, **kw)
        return (a_t,), cache

    bkw = {"nonlinearity": kw["nonlinearity"]} if "nonlinearity" in kw else {}

    def backward(dstate, cache, p):
        dxw, da_prev, grads = step_backward(dstate[0], cache, p, **bkw)
        return dxw, (da_prev,), grads

    return forward, backward


def _lstm(gers: bool) -> tuple:
    def forward(xw_t, state, p):
        a_t, c_t, cache = lstm_step_forward(xw_t, state[0], state[1], p, gers)
        return (a_t, c_t), cache

    return forward, _lstm_backward


def _lstm_backward(dstate, cache, p):
    dxw, da_prev, dc_prev, grads = lstm_step_backward(dstate[0], dstate[1], cache, p)
    return dxw, (da_prev, dc_prev), grads


CELL_KINDS: dict[str, CellKind] = {
    "rnn_tanh": CellKind(
        "rnn_tanh",
        RNN_GATES,
        1,
        *_one_state(rnn_step_forward, rnn_step_backward, nonlinearity="tanh"),
    ),
    "rnn_relu": CellKind(
        "rnn_relu",
        RNN_GATES,
        1,
        *_one_state(rnn_step_forward, rnn_step_backward, nonlinearity="relu"),
    ),
    "lstm": CellKind("lstm", LSTM_GATES, 2, *_lstm(gers=False)),
    "lstm_gers": CellKind("lstm_gers", LSTM_GATES, 2, *_lstm(gers=True)),
    "gru": CellKind(
        "gru", GRU_GATES, 1, *_one_state(gru_step_forward, gru_step_backward, reset_after=True)
    ),
    "gru_reset_before": CellKind(
        "gru_reset_before",
        GRU_GATES,
        1,
        *_one_state(gru_step_forward, gru_step_backward, reset_after=False),
    ),
    "gru_simple": CellKind(
        "gru_simple",
        SIMPLE_GRU_GATES,
        1,
        *_one_state(simple_gru_step_forward, simple_gru_step_backward),
    ),
}
