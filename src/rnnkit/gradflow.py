"""Inside a recurrent stack: every step's cache, and the gradient that reaches every state.

A layer's fast loop keeps its arithmetic to itself; this module runs the readable cells of
:mod:`rnnkit.cells` over time instead, with the layer's own weights
(``rnn.cell_params(layer, direction)``), so that what happens at each step can be looked at:
the gates of each step (from the caches of :func:`stack_forward`) and ``dL/da<t>`` for every
``t`` (from :func:`stack_state_gradients`)::

    dL/da<t-1> = (da<t>/da<t-1>)^T dL/da<t> + (the loss's own share at step t-1)

For the vanilla RNN each factor is ``W_aa^T diag(1 - a<t>^2)``, so the gradient shrinks or
grows geometrically with the distance; the gated cells add a path whose factor is a gate.
Dropout is not applied: this is the model as it runs in evaluation mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .cells import CellKind, CellParams, input_projection, input_projection_backward
from .losses import cross_entropy


@dataclass
class LayerSteps:
    """One layer run over a sequence: what went in, what came out, and each step's cache."""

    kind: CellKind
    p: CellParams
    inputs: np.ndarray  # (T, N, D)
    outputs: np.ndarray  # (T, N, H): a<1> .. a<T>
    caches: list  # T caches of kind.forward, in time order


def layer_forward(kind: CellKind, p: CellParams, x: np.ndarray) -> LayerSteps:
    """``a<t> = cell(x<t>, a<t-1>)`` for t = 1..T from a zero state, keeping every cache."""
    T, N = x.shape[:2]
    H = p.w_hh.shape[1]
    xw = input_projection(x, p)  # (T, N, G*H)
    state = tuple(np.zeros((N, H), dtype=xw.dtype) for _ in range(kind.num_states))
    outputs, caches = np.empty((T, N, H), dtype=xw.dtype), []
    for t in range(T):
        state, cache = kind.forward(xw[t], state, p)
        outputs[t] = state[0]
        caches.append(cache)
    return LayerSteps(kind, p, x, outputs, caches)


def layer_state_gradients(steps: LayerSteps, dout: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Backpropagation through time over one layer's steps, recording the gradient at each state.

    Args:
        steps: from :func:`layer_forward`.
        dout: ``(T, N, H)``, the gradient of the loss with respect to each output a<t> from
            outside the layer (the layer above, or the head).

    Returns:
        ``(da, dx)``: ``da (T+1, N, H)`` with ``da[t] = dL/da<t>`` in total (``da[0]`` is the
        initial state's), and ``dx (T, N, D)``, the gradient of the layer's inputs.
    """
    kind, p = steps.kind, steps.p
    T, N, H = steps.outputs.shape
    da = np.zeros((T + 1, N, H), dtype=dout.dtype)
    dxw = np.zeros((T, N, len(kind.gates) * H), dtype=dout.dtype)  # (T, N, G*H)
    da[T] = dout[T - 1]
    zeros = tuple(np.zeros((N, H), dtype=dout.dtype) for _ in range(kind.num_states - 1))
    dstate = (da[T],) + zeros  # dL/da<T> (, dL/dc<T> = 0: no loss reads the last cell state)
    for t in reversed(range(T)):  # caches[t] made a<t+1> from a<t>
        dxw[t], dstate, _ = kind.backward(dstate, steps.caches[t], p)
        if t > 0:
            dstate = (dstate[0] + dout[t - 1],) + tuple(dstate[1:])
        da[t] = dstate[0]
    dx, _ = input_projection_backward(dxw, steps.inputs, p)
    return da, dx


def stack_forward(rnn, x: np.ndarray) -> list[LayerSteps]:
    """Every layer of a one-direction recurrent stack over ``x (T, N, D)``, from zero states,
    each layer reading the outputs of the one below (no dropout)."""
    if rnn.num_directions != 1:
        raise ValueError("stack_forward reads one-direction stacks only")
    layers = []
    for layer in range(rnn.num_layers):
        steps = layer_forward(rnn.kind, rnn.cell_params(layer, 0), x)
        layers.append(steps)
        x = steps.outputs
    return layers


def stack_state_gradients(layers: list[LayerSteps], dout: np.ndarray) -> list[np.ndarray]:
    """``dL/da<t>`` of every layer for a loss whose gradient at the top outputs is
    ``dout (T, N, H)``: one ``(T+1, N, H)`` array per layer, bottom layer first; entry 0 is
    the gradient of the layer's initial state."""
    grads = []
    for steps in reversed(layers):
        da, dout = layer_state_gradients(steps, dout)
        grads.append(da)
    return grads[::-1]


def loss_at_last_step(model, ids: np.ndarray, targets: np.ndarray) -> list[np.ndarray]:
    """How a language model's loss at its last step reaches back through time.

    The model reads ``ids (T, N)``; the loss is the cross-entropy of ``targets (N,)`` at step
    T alone, summed over the N sequences (so each row is its own sequence's gradient).

    Returns:
        One ``(T+1, N, H)`` array per layer: ``dL/da<t>`` for t = 0..T.
    """
    emb, _ = model.embedding.forward(ids)  # (T, N, E)
    layers = stack_forward(model.rnn, emb)
    top = layers[-1].outputs  # (T, N, H)
    w, b = model.head.params["weight"], model.head.params["bias"]
    _, dlogits = cross_entropy(top[-1] @ w.T + b, targets, reduction="sum")  # (N, V)
    dout = np.zeros_like(top)
    dout[-1] = dlogits @ w  # dL/da<T> = W_y^T (ŷ<T> - y<T>)
    return stack_state_gradients(layers, dout)
