"""The time loop of one layer and direction: the readable reference, and a fast loop per cell.

Both take the input projection of every step, ``xw = x @ w_ih.T + b_ih`` of shape
``(T, N, G*H)``, already computed in one product (the fast loops use it as their gate buffer,
so it is theirs to overwrite), and return the same things:

- ``forward(xw, state0, p, mask) -> (out (T, N, H), final state, cache)``
- ``backward(dout, dfinal, cache, p, mask) -> (dxw (T, N, G*H), dstate0, grads)``; ``grads``
  holds ``w_hh``, ``b_hh`` (and ``w_peep``), the input-side gradients being left to one product
  over all steps in the layer.

The fast loops are called through ``forward_x(x, state0, p, mask)`` and ``backward_x(x, dout,
dfinal, cache, p, mask) -> (dx, dstate0, grads)`` instead, which do the products over all steps
themselves, into buffers kept from call to call, and may add the biases where it costs least
(``input_bias``: the RNN's ``xw`` includes b_hh too, the compiled steps' neither).

The reference loop calls the step functions of :mod:`rnnkit.cells` once per step. The fast
loops compute the same equations with what the notes leave out: every buffer allocated once,
``out=`` everywhere, one ``tanh`` over a whole block of gates (σ(x) = (1 + tanh(x/2)) / 2, with
the sigmoid gates' weights halved once per call, an exact scaling), the pre-activation
gradients of all steps kept so that the recurrent weight gradient is one product after the
loop, and the forward buffers reused for the backward pass. They are tested equal to the
reference for every variant.

With Numba installed (``rnnkit[fast]``), the elementwise work of a step (everything but its
product) is one call to a compiled kernel of :mod:`rnnkit.kernels` instead of a dozen NumPy
calls: the RNN, the LSTM and the GRU with the reset after W_hn (the default). With NumPy's own
BLAS found (:mod:`rnnkit.blas`), or with one sequence and small weights, the whole loop over
the steps, products included, is one compiled call. The simplified and reset-before GRUs keep
their NumPy steps.
"""

from __future__ import annotations

import weakref

import numpy as np

from . import kernels
from .cells import CellKind, CellParams, input_projection_backward
from .gates import GRU_GATES, LSTM_GATES, SIMPLE_GRU_GATES, gate_slices

# ---------------------------------------------------------------- the reference loop


def reference_forward(
    kind: CellKind, xw: np.ndarray, state: tuple, p: CellParams, mask: np.ndarray | None
) -> tuple[np.ndarray, tuple, list]:
    """A loop over the cell: one ``kind.forward`` per step."""
    T, N, _ = xw.shape
    out = np.empty((T, N, state[0].shape[1]), dtype=xw.dtype)
    caches = []
    for t in range(T):
        new, step_cache = kind.forward(xw[t], state, p)
        caches.append(step_cache)
        if mask is None:
            state = new
            out[t] = new[0]
        else:  # finished sequences keep their state and output zeros
            m = mask[t]
            state = tuple(np.where(m > 0, s_new, s_old) for s_new, s_old in zip(new, state))
            out[t] = new[0] * m
    return out, state, caches


def reference_backward(
    kind: CellKind,
    dout: np.ndarray,
    dstate: tuple,
    caches: list,
    p: CellParams,
    mask: np.ndarray | None,
) -> tuple[np.ndarray, tuple, dict]:
    """Backpropagation through time with one ``kind.backward`` per step."""
    T, N, H = dout.shape
    dxw = np.empty((T, N, len(kind.gates) * H), dtype=dout.dtype)
    grads: dict[str, np.ndarray] = {}
    for t in reversed(range(T)):
        if mask is None:
            dnew = (dstate[0] + dout[t],) + dstate[1:]
            dxw[t], dstate, g = kind.backward(dnew, caches[t], p)
        else:  # a finished sequence passes its state (and gradient) straight through
            m = mask[t]
            dnew = ((dstate[0] + dout[t]) * m,) + tuple(d * m for d in dstate[1:])
            dxw[t], dprev, g = kind.backward(dnew, caches[t], p)
            dstate = tuple(dp + d * (1 - m) for dp, d in zip(dprev, dstate))
        for key, value in g.items():
            if key in grads:
                grads[key] += value
            else:
                grads[key] = value
    return dxw, dstate, grads


# ---------------------------------------------------------------- helpers of the fast loops


def _halved(w: np.ndarray | None, cols: list[slice], copy: bool = True) -> np.ndarray | None:
    """``w`` with the given gate blocks of its last axis multiplied by 0.5 (exact in binary
    floating point); a copy unless ``copy=False``."""
    if w is None:
        return None
    w = w.copy() if copy else w
    for c in cols:
        w[..., c] *= 0.5
    return w


def _transposed(w: np.ndarray, view: bool) -> np.ndarray:
    """``w.T``: the view itself, or a contiguous copy, by which OpenBLAS multiplies up to 7x
    faster once a product has a few states. The copy goes by blocks of rows: 3x to 7x faster
    than ``np.ascontiguousarray(w.T)`` here (that one takes 3 ms for a 2048 x 512 matrix, the
    time of 100 products with one state)."""
    if view:
        return w.T
    out = np.empty(w.shape[::-1], dtype=w.dtype)
    for i in range(0, w.shape[0], 16):
        out[:, i : i + 16] = w[i : i + 16].T
    return out


def _right_operand(w_hh: np.ndarray, halved_rows: list[slice], n: int) -> np.ndarray:
    """``W_hh.T`` (H, G*H) for ``a<t-1> @ W_hh.T`` with ``n`` rows, the given gate blocks halved."""
    w = w_hh.copy().T if n == 1 else _transposed(w_hh, view=False)  # one copy either way
    for rows in halved_rows:
        w[:, rows] *= 0.5
    return w


def _sigmoid_from_halved(block: np.ndarray) -> None:
    """In place: ``block`` holds tanh(x/2); make it σ(x) = (1 + tanh(x/2)) / 2."""
    block *= 0.5
    block += 0.5


def _output_buffer(h_all: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Where the outputs go: without lengths they are the states themselves, ``h_all[1:]``,
    shared with the cache and so handed out read-only (writing into them would corrupt the
    gradients); with lengths, an array of their own (zero past each end)."""
    if mask is None:
        out = h_all[1:]
        out.flags.writeable = False
        return out
    return np.empty((h_all.shape[0] - 1, *h_all.shape[1:]), dtype=h_all.dtype)


def _carry(new: np.ndarray, old: np.ndarray, keep_new: np.ndarray) -> np.ndarray:
    """``where(keep_new, new, old)``, exact (no arithmetic on the states)."""
    out = old.copy()
    np.copyto(out, new, where=keep_new)
    return out


def _compiled_loop(N: int, G: int, H: int) -> bool:
    """Whether the compiled loop over all steps runs (``*_sequence_*`` in :mod:`rnnkit.kernels`):
    with NumPy's BLAS for its products, always; without, for one sequence with recurrent weights
    of up to 1 MiB in float32, for which the kernels' own product is as fast (beyond, BLAS's
    two threads are faster)."""
    return kernels.AVAILABLE and (kernels.BLAS or (N == 1 and G * H * H <= 2**18))


def _loop_product(
    w_hh: np.ndarray, backward: bool, N: int, columns: bool = False
) -> tuple[np.ndarray, bool]:
    """The compiled loop's product: ``W_hh`` as it takes it, and whether it is NumPy's BLAS.

    BLAS for several sequences, and for one past 1 MiB of weights; up to that the kernels' own
    product is as fast, and needs no transposed copy backward (1.07x for a training step of
    the RNN at H = 512). The matrix is P (W_hh forward, W_hh^T backward) or P^T, whichever
    is the faster operand (see :mod:`rnnkit.kernels`).
    """
    blas = kernels.BLAS and (N > 1 or w_hh.size > 2**18)
    p_transposed = not blas or (N > 1 and not columns)
    if backward != p_transposed:
        return _transposed(w_hh, view=False), blas
    return np.ascontiguousarray(w_hh), blas


def _sequence_mask(mask: np.ndarray | None, T: int, dt: np.dtype) -> np.ndarray:
    """The mask as the compiled loops take it: ``(T, N)``, or ``(T, 0)`` for none."""
    return np.empty((T, 0), dtype=dt) if mask is None else np.ascontiguousarray(mask[:, :, 0])


def _bias_sum(p: CellParams) -> np.ndarray | None:
    """``b_ih + b_hh``, or None for a layer without biases."""
    return None if p.b_ih is None else p.b_ih + p.b_hh


def _recurrent_weight_grads(dhw: np.ndarray, h_in: np.ndarray, has_bias: bool) -> dict:
    """dW_hh and the biases' gradients over all steps, one product each. For the cells whose
    two biases enter one sum (the RNN, the LSTM, the simplified GRU) db_ih = db_hh = Σ dz: one
    pass over the gradients serves both."""
    G = dhw.shape[-1]
    dhw2 = dhw.reshape(-1, G)
    grads = {"w_hh": dhw2.T @ h_in.reshape(-1, h_in.shape[-1])}
    if has_bias:
        grads["b_hh"] = np.ones(len(dhw2), dtype=dhw2.dtype) @ dhw2  # BLAS, 2-4x .sum
        grads["b_ih"] = grads["b_hh"].copy()
    return grads


class _Spares:
    """Internal buffers of one shape kept from one call for the next.

    A fresh large array costs a page fault per 4 KiB the first time it is written (the system
    hands out zeroed pages, and glibc returns large freed ones): 5% to 15% of an LSTM training
    step. So the buffers that never leave the loop (gates, states) go back here at the end of
    a backward pass, for the next call of the same shape (the last shape asked for only).
    Keeping the states to the end of the backward pass, past their last use, raises the peak
    of a training step by about a tenth; it stays well below PyTorch's at every benchmark point.

    A forward pass in evaluation mode (``layer.eval()``, where it is mostly not followed by a
    backward pass) gets its buffers back when its cache is dropped unused, by a finalizer: a
    fresh gate buffer made an LSTM forward pass 2x slower (N = 32, H = 128: 7.5 against 3.6
    ms). Not in training mode: there the finalizers made the allocator trim and regrow its heap
    every step of a whole training loop (3,500 to 6,400 page faults a step of the language
    model, 10% to 15% of its time), for nothing, as the backward pass gives the buffers back.
    """

    def __init__(self):
        self.key: tuple | None = None
        self.free: dict[tuple, list[np.ndarray]] = {}

    def start(self, key: tuple) -> None:
        """A call for ``key`` begins: spares of any other shape are dropped."""
        if key != self.key:
            self.key, self.free = key, {}

    def take(self, shape: tuple, dtype: np.dtype) -> np.ndarray:
        stack = self.free.get((shape, np.dtype(dtype)))
        return stack.pop() if stack else np.empty(shape, dtype=dtype)

    def give(self, *arrays: np.ndarray) -> None:
        for a in arrays:
            self.free.setdefault((a.shape, a.dtype), []).append(a)

    def give_when_dropped(self, cache: dict, *arrays: np.ndarray) -> dict:
        """``cache``, made one that gives ``arrays`` (which it alone holds) back when it is
        dropped; a backward pass that uses it calls :func:`_keep_cache` first."""
        cache = _LoopCache(cache)
        back = weakref.finalize(cache, self._give_if_current, self.key, arrays)
        back.atexit = False
        cache["unused"] = back
        return cache

    def _give_if_current(self, key: tuple, arrays: tuple) -> None:
        if key == self.key:
            self.give(*arrays)


class _LoopCache(dict):
    """A loop's cache: a dict that can be weakly referenced (a plain one cannot)."""


def _keep_cache(cache: dict) -> None:
    """The backward pass is using ``cache``: it gives the buffers back itself."""
    back = cache.pop("unused", None)
    if back is not None:
        back.detach()


class _ProjectingLoop:
    """``forward_x`` / ``backward_x`` for a row loop: the input projection of all steps, one
    product, goes into a kept buffer (see :class:`_Spares`), which the loop then uses as its
    gate buffer, and the cache's ``kept`` buffers return to the pool after the backward
    pass."""

    kept: tuple[str, ...] = ()  # the cache entries that never leave the loop

    def __init__(self):
        self.spares = _Spares()

    def input_bias(self, p: CellParams) -> np.ndarray | None:
        """What ``forward`` expects added to the projection: ``b_ih``."""
        return p.b_ih

    def forward_x(
        self,
        x: np.ndarray,
        state: tuple,
        p: CellParams,
        mask: np.ndarray | None,
        recycle: bool = False,
    ) -> tuple[np.ndarray, tuple, dict]:
        """The whole sequence forward from the layer input ``x (T, N, D)``; with ``recycle``
        (evaluation mode) the buffers come back when the cache is dropped unused."""
        T, N, D = x.shape
        G, dt = p.w_ih.shape[0], x.dtype
        self.spares.start((T, N, G, dt))
        xw = self.spares.take((T, N, G), dt)
        np.matmul(x.reshape(T * N, D), p.w_ih.T, out=xw.reshape(T * N, G))  # W_ax x<t>, all t
        bias = self.input_bias(p)
        if bias is not None:
            xw += bias
        out, final, cache = self.forward(xw, state, p, mask)
        if recycle:
            cache = self.spares.give_when_dropped(cache, *(cache[name] for name in self.kept))
        return out, final, cache

    def backward_x(
        self,
        x: np.ndarray,
        dout: np.ndarray,
        dstate: tuple,
        cache: dict,
        p: CellParams,
        mask: np.ndarray | None,
    ) -> tuple[np.ndarray, tuple, dict]:
        """Backpropagation through the sequence; returns ``(dx, dstate0, grads)``, the grads of
        every parameter (input side included)."""
        _keep_cache(cache)
        kept = [cache[name] for name in self.kept]
        dxw, dstate, grads = self.backward(dout, dstate, cache, p, mask)
        dx, input_grads = input_projection_backward(dxw, x, p, grads.pop("b_ih", None))
        self.spares.give(*kept)
        return dx, dstate, {**grads, **input_grads}


# ---------------------------------------------------------------- vanilla RNN


class RNNLoop(_ProjectingLoop):
    """a<t> = g(W_aa a<t-1> + xw<t> + b_hh), g = tanh or relu."""

    kept = ("a",)

    def __init__(self, nonlinearity: str):
        super().__init__()
        self.relu = nonlinearity == "relu"

    def input_bias(self, p: CellParams) -> np.ndarray | None:
        """Both biases: they enter the same sum, so one pass adds them (``xw`` includes b_hh);
        none for the compiled step, which adds them itself (``xw`` is then ``W_ax x`` alone)."""
        return None if kernels.AVAILABLE else _bias_sum(p)

    def forward(
        self, xw: np.ndarray, state: tuple, p: CellParams, mask: np.ndarray | None
    ) -> tuple[np.ndarray, tuple, dict]:
        """The whole sequence forward; see the module docstring."""
        T, N, H = xw.shape
        h_all = np.empty((T + 1, N, H), dtype=xw.dtype)  # h_all[t] is a<t-1>, the step's input
        h_all[0] = state[0]
        z = xw  # (T, N, H) pre-activations, then activations
        out = _output_buffer(h_all, mask)
        if kernels.AVAILABLE:
            bias = _bias_sum(p)
            bias = np.zeros(H, dtype=xw.dtype) if bias is None else bias
        if _compiled_loop(N, 1, H):
            out_ = np.empty((T, 0, 0), dtype=xw.dtype) if mask is None else out
            keep = _sequence_mask(mask, T, xw.dtype)
            w, blas = _loop_product(p.w_hh, False, N)
            steps = (z, w, bias, h_all, out_, keep, self.relu, blas)
            kernels.rnn_sequence_forward(*steps)
            return out, (h_all[T].copy(),), {"a": z, "h_all": h_all}
        w_hh_t = _right_operand(p.w_hh, [], N)
        hw = np.empty((N, H), dtype=xw.dtype)
        if kernels.AVAILABLE:
            empty = np.empty((0, 0), dtype=xw.dtype)
            for t in range(T):
                np.matmul(h_all[t], w_hh_t, out=hw)
                kernels.rnn_forward_step(
                    z[t],
                    hw,
                    bias,
                    h_all[t],
                    h_all[t + 1],
                    empty if mask is None else out[t],
                    empty.reshape(0) if mask is None else mask[t, :, 0],
                    self.relu,
                )
            return out, (h_all[T].copy(),), {"a": z, "h_all": h_all}
        for t in range(T):
            np.matmul(h_all[t], w_hh_t, out=hw)
            z[t] += hw
            if self.relu:
                np.maximum(z[t], 0, out=z[t])
            else:
                np.tanh(z[t], out=z[t])
            if mask is None:
                h_all[t + 1] = z[t]
            else:
                np.multiply(z[t], mask[t], out=out[t])
                h_all[t + 1] = _carry(z[t], h_all[t], mask[t] > 0)
        return out, (h_all[T].copy(),), {"a": z, "h_all": h_all}

    def backward(
        self, dout: np.ndarray, dstate: tuple, cache: dict, p: CellParams, mask: np.ndarray | None
    ) -> tuple[np.ndarray, tuple, dict]:
        """Backpropagation through the whole sequence; see the module docstring."""
        a, h_all = cache["a"], cache["h_all"]
        T, N, H = dout.shape
        dz = a  # the activations are overwritten by the gradients, step by step
        dh = dstate[0].copy()
        if _compiled_loop(N, 1, H):
            keep = _sequence_mask(mask, T, dh.dtype)
            dout = np.ascontiguousarray(dout)
            w, blas = _loop_product(p.w_hh, True, N)
            kernels.rnn_sequence_backward(dz, dout, w, dh, keep, self.relu, blas)
            return dz, (dh,), _recurrent_weight_grads(dz, h_all[:T], p.b_hh is not None)
        if kernels.AVAILABLE:
            dout, carry = np.ascontiguousarray(dout), np.empty_like(dh)
            no_mask = np.empty(0, dtype=dh.dtype)
            for t in reversed(range(T)):
                keep = no_mask if mask is None else mask[t, :, 0]
                kernels.rnn_backward_step(dz[t], dout[t], dh, carry, keep, self.relu)
                np.matmul(dz[t], p.w_hh, out=dh)
                if mask is not None:
                    dh += carry
            return dz, (dh,), _recurrent_weight_grads(dz, h_all[:T], p.b_hh is not None)
        for t in reversed(range(T)):
            dnew = dh + dout[t]
            if mask is not None:
                dnew *= mask[t]
            if self.relu:
                dnew *= a[t] > 0
            else:
                deriv = np.multiply(a[t], a[t])
                np.subtract(1, deriv, out=deriv)
                dnew *= deriv  # tanh' = 1 - a<t>^2
            dz[t] = dnew
            carry = None if mask is None else dh * (1 - mask[t])
            np.matmul(dz[t], p.w_hh, out=dh)
            if carry is not None:
                dh += carry
        return dz, (dh,), _recurrent_weight_grads(dz, h_all[:T], p.b_hh is not None)


# ---------------------------------------------------------------- LSTM


class LSTMLoop:
    """The LSTM of :func:`rnnkit.cells.lstm_step_forward`, optional peepholes included."""

    def forward(
        self, xw: np.ndarray, state: tuple, p: CellParams, mask: np.ndarray | None
    ) -> tuple[np.ndarray, tuple, dict]:
        """The whole sequence forward; see the module docstring."""
        T, N, G = xw.shape
        H = G // 4
        s = gate_slices(LSTM_GATES, H)
        sig = [s["i"], s["f"], s["o"]]
        dt = xw.dtype
        z = _halved(xw, sig, copy=False)  # (T, N, 4H) halved sigmoid columns; becomes the gates
        if p.b_hh is not None:
            z += _halved(p.b_hh, sig)
        w_hh_t = _right_operand(p.w_hh, sig, N)  # (H, 4H)
        peep = None if p.w_peep is None else 0.5 * p.w_peep  # every peephole feeds a sigmoid
        h_all = np.empty((T + 1, N, H), dtype=dt)
        c_all = np.empty((T + 1, N, H), dtype=dt)  # c_all[t] is c<t-1>, carried
        h_all[0], c_all[0] = state
        tanh_c = np.empty((T, N, H), dtype=dt)
        out = _output_buffer(h_all, mask)
        hw = np.empty((N, G), dtype=dt)
        c_new, tmp = np.empty((N, H), dtype=dt), np.empty((N, H), dtype=dt)
        for t in range(T):
            zt, c_prev = z[t], c_all[t]
            np.matmul(h_all[t], w_hh_t, out=hw)
            zt += hw
            if peep is not None:
                for k, g in enumerate(("i", "f", "o")):
                    np.multiply(c_prev, peep[k], out=tmp)
                    zt[:, s[g]] += tmp
            np.tanh(zt, out=zt)  # tanh(x/2) on the sigmoid gates, tanh(x) on g
            _sigmoid_from_halved(zt[:, s["i"].start : s["f"].stop])  # Γu, Γf
            _sigmoid_from_halved(zt[:, s["o"]])  # Γo
            np.multiply(zt[:, s["f"]], c_prev, out=c_new)  # c<t> = Γf*c<t-1> + Γu*c̃<t>
            np.multiply(zt[:, s["i"]], zt[:, s["g"]], out=tmp)
            c_new += tmp
            np.tanh(c_new, out=tanh_c[t])
            if mask is None:
                c_all[t + 1] = c_new
                np.multiply(zt[:, s["o"]], tanh_c[t], out=h_all[t + 1])  # a<t> = Γo*tanh(c<t>)
            else:
                np.multiply(zt[:, s["o"]], tanh_c[t], out=tmp)
                keep = mask[t] > 0
                c_all[t + 1] = _carry(c_new, c_prev, keep)
                h_all[t + 1] = _carry(tmp, h_all[t], keep)
                np.multiply(tmp, mask[t], out=out[t])
        final = (h_all[T].copy(), c_all[T].copy())
        return (
            out,
            final,
            {"gates": z, "h_all": h_all, "c_all": c_all, "tanh_c": tanh_c},
        )

    def backward(
        self, dout: np.ndarray, dstate: tuple, cache: dict, p: CellParams, mask: np.ndarray | None
    ) -> tuple[np.ndarray, tuple, dict]:
        """Backpropagation through the whole sequence; see the module docstring."""
        gates, h_all, c_all, tanh_c = (
            cache["gates"],
            cache["h_all"],
            cache["c_all"],
            cache["tanh_c"],
        )
        T, N, H = dout.shape
        s = gate_slices(LSTM_GATES, H)
        dt = dout.dtype
        dz = gates  # each step's gates are overwritten by its pre-activation gradients
        dh, dc = dstate[0].copy(), dstate[1].copy()
        dnew, tmp = np.empty((N, H), dtype=dt), np.empty((N, H), dtype=dt)
        deriv = np.empty((N, 4 * H), dtype=dt)
        for t in reversed(range(T)):
            zt, c_prev = gates[t], c_all[t]
            gamma_u, gamma_f = zt[:, s["i"]], zt[:, s["f"]]
            c_tilde, gamma_o = zt[:, s["g"]], zt[:, s["o"]]
            np.add(dh, dout[t], out=dnew)
            if mask is not None:
                dnew *= mask[t]
                carry_h, carry_c = dh * (1 - mask[t]), dc * (1 - mask[t])
                dc *= mask[t]
            np.multiply(tanh_c[t], tanh_c[t], out=tmp)  # dc += da * Γo * (1 - tanh²(c<t>))
            np.subtract(1, tmp, out=tmp)
            tmp *= gamma_o
            tmp *= dnew
            dc += tmp
            np.subtract(1, zt, out=deriv)  # σ' = σ(1 - σ) on the sigmoid gates
            deriv *= zt
            np.multiply(c_tilde, c_tilde, out=deriv[:, s["g"]])  # tanh' = 1 - c̃² on g
            np.subtract(1, deriv[:, s["g"]], out=deriv[:, s["g"]])
            np.multiply(dnew, tanh_c[t], out=tmp)  # dΓo, before zt is overwritten
            np.multiply(dc, c_tilde, out=dnew)  # dΓu (dnew is free now)
            np.multiply(dc, gamma_u, out=zt[:, s["g"]])  # dc̃
            zt[:, s["i"]] = dnew
            zt[:, s["o"]] = tmp
            np.multiply(dc, gamma_f, out=tmp)  # dc<t-1> = dc<t> * Γf
            np.multiply(dc, c_prev, out=zt[:, s["f"]])  # dΓf
            zt *= deriv  # pre-activation gradients of i, f, g, o
            dc[...] = tmp
            if p.w_peep is not None:
                for k, g in enumerate(("i", "f", "o")):
                    np.multiply(zt[:, s[g]], p.w_peep[k], out=tmp)
                    dc += tmp
            np.matmul(zt, p.w_hh, out=dh)
            if mask is not None:
                dh += carry_h
                dc += carry_c
        grads = _recurrent_weight_grads(dz, h_all[:T], p.b_hh is not None)
        if p.w_peep is not None:
            c_prev_all = c_all[:T]
            grads["w_peep"] = np.stack(
                [np.einsum("tnh,tnh->h", dz[..., s[g]], c_prev_all) for g in ("i", "f", "o")]
            )
        return dz, (dh, dc), grads


def _step_block(z: np.ndarray, rows: int, start: int, HN: int):
    """The pre-activations of one step in the flat gate buffer ``z`` (see LSTMColumnLoop):
    ``4*rows`` rows of ``HN // rows`` values, row ``i`` at ``z[start + i*stride]``. Returns the
    block (a view) and, when its rows are apart (``rows > 1``, ``z`` a ``(4H, T*N)`` matrix),
    a contiguous ``(4, HN)`` copy to work on, else None."""
    if rows == 1:  # one row a gate, the four adjacent
        return z[start : start + 4 * HN].reshape(4, HN), None
    block = z.reshape(4 * rows, -1)[:, start : start + HN // rows]
    return block, block.reshape(4, HN)  # reshape copies a strided block


def lstm_forward_step(
    zt: np.ndarray,
    z: np.ndarray,
    rows: int,
    start: int,
    stride: int,
    c: np.ndarray,
    h: np.ndarray,
    tanh_c: np.ndarray,
    out: np.ndarray,
    peep: np.ndarray,
    bias: np.ndarray,
    keep: np.ndarray,
    t: int,
) -> None:
    """LSTM step ``t`` in the column layout: ``c, h (T+1, HN)`` and ``tanh_c (T, HN)`` hold each
    step's ``(H, N)`` block raveled; the step's pre-activations are ``4*rows`` rows of the flat
    gate buffer ``z``, row ``i`` beginning at ``z[start + i*stride]`` (see LSTMColumnLoop).

    ``block + zt + bias`` (the step's input projection, W_aa a<t-1> and the biases, ``(4HN,)``)
    are the pre-activations, or ``block + bias`` where ``zt`` is empty, the product already
    added to the block; the block becomes the gates Γu, Γf, c̃, Γo. Reads c<t-1>, a<t-1>
    from ``c[t], h[t]``, writes c<t>, a<t>, tanh(c<t>) to ``c[t+1], h[t+1], tanh_c[t]``.
    ``peep`` (3HN) and the rows of ``keep`` (the mask) have length 0 when absent; with a mask,
    ``out[t]`` takes the masked output.
    """
    c_prev, h_prev, c_new, h_new = c[t], h[t], c[t + 1], h[t + 1]
    HN = c_prev.size
    block, work = _step_block(z, rows, start, HN)
    gates = block if work is None else work  # rows: Γu, Γf, c̃, Γo
    if zt.size:
        gates += zt.reshape(4, HN)
    gates += bias.reshape(4, HN)
    if peep.size:
        peep3 = peep.reshape(3, HN)
        gates[:2] += peep3[:2] * c_prev
        gates[3] += peep3[2] * c_prev
    gates[:2] *= 0.5  # σ(x) = (1 + tanh(x/2)) / 2: one tanh for all four gates
    gates[3] *= 0.5
    np.tanh(gates, out=gates)
    _sigmoid_from_halved(gates[:2])  # Γu, Γf
    _sigmoid_from_halved(gates[3])  # Γo
    np.multiply(gates[1], c_prev, out=c_new)  # c<t> = Γf*c<t-1> + Γu*c̃<t>
    np.multiply(gates[0], gates[2], out=tanh_c[t])
    c_new += tanh_c[t]
    np.tanh(c_new, out=tanh_c[t])
    np.multiply(gates[3], tanh_c[t], out=h_new)  # a<t> = Γo*tanh(c<t>)
    if work is not None:
        block[...] = work.reshape(block.shape)
    if keep[t].size:
        np.multiply(h_new, keep[t], out=out[t])
        finished = keep[t] == 0  # a finished sequence keeps its state
        np.copyto(c_new, c_prev, where=finished)
        np.copyto(h_new, h_prev, where=finished)


def lstm_backward_step(
    z: np.ndarray,
    rows: int,
    start: int,
    stride: int,
    c: np.ndarray,
    tanh_c: np.ndarray,
    dh: np.ndarray,
    dc: np.ndarray,
    carry: np.ndarray,
    peep: np.ndarray,
    keep: np.ndarray,
    t: int,
) -> None:
    """LSTM step ``t`` backward in the layout of :func:`lstm_forward_step`, before the product
    W_aa^T dz.

    The step's block of ``z`` holds its gates and takes their pre-activation gradients; ``dh``
    (HN) holds da<t> (output gradient included); ``dc`` holds dc<t> and takes dc<t-1>. With a
    mask (``keep``), what a finished sequence carries straight to a<t-1> and c<t-1> goes to
    ``carry (2, HN)``: ``carry[0]`` is for the caller to add to da<t-1>. ``peep`` (3HN) is the
    peephole weight.
    """
    c_prev, m = c[t], keep[t]
    HN = c_prev.size
    block, work = _step_block(z, rows, start, HN)
    gates = block if work is None else work
    gamma_u, gamma_f, c_tilde, gamma_o = (g.copy() for g in gates)
    if m.size:  # a finished sequence passes its gradients straight through
        np.multiply(dh, 1 - m, out=carry[0])
        np.multiply(dc, 1 - m, out=carry[1])
        dh *= m
        dc *= m
    da = dh.copy()
    dc += da * gamma_o * (1 - tanh_c[t] * tanh_c[t])  # through a<t> = Γo*tanh(c<t>)
    np.multiply(dc * c_tilde, gamma_u * (1 - gamma_u), out=gates[0])  # σ' = σ(1 - σ)
    np.multiply(dc * c_prev, gamma_f * (1 - gamma_f), out=gates[1])
    np.multiply(dc * gamma_u, 1 - c_tilde * c_tilde, out=gates[2])  # tanh' = 1 - tanh²
    np.multiply(da * tanh_c[t], gamma_o * (1 - gamma_o), out=gates[3])
    dc *= gamma_f  # dc<t-1> = dc<t> * Γf
    if peep.size:
        peep3 = peep.reshape(3, HN)
        dc += gates[0] * peep3[0] + gates[1] * peep3[1] + gates[3] * peep3[2]
    if m.size:
        dc += carry[1]
    if work is not None:
        block[...] = work.reshape(block.shape)


def _mask_columns(mask: np.ndarray, H: int) -> np.ndarray:
    """The mask ``(T, N, 1)`` over each step's column block, raveled: ``(T, H*N)``."""
    return np.repeat(mask.transpose(0, 2, 1), H, axis=1).reshape(len(mask), -1)


def _spread(peep: np.ndarray, n: int) -> np.ndarray:
    """Peephole weights ``(3, H)`` repeated over ``n`` columns, raveled: ``(3*H*n,)``."""
    return np.repeat(peep[:, :, None], n, axis=2).reshape(-1)


class LSTMColumnLoop:
    """The same LSTM with states as columns, ``a<t>`` of shape ``(H, N)`` as the notes write it.

    OpenBLAS computes the recurrent product ``W_hh @ a<t-1>`` 1.4x to 2x faster in this layout
    than ``a<t-1> @ W_hh.T`` once N is a few dozen. The states ``(T+1, H, N)`` keep each step's
    block contiguous. The gates of all steps are one ``(4H, T*N)`` matrix, step t in columns
    ``t*N`` to ``t*N + N``: the input projection of all steps is one product into it, the
    backward pass turns the gates into dz in place, and the weight gradients are products
    over it, with no copy; a step's gates are then 4H rows of N apart, which the compiled
    step reads where they are. With one sequence the matrix is stored transposed, ``(T, 4H)``,
    so that each step's gates are adjacent. The step's elementwise work is
    :func:`lstm_forward_step`, or its compiled twin in :mod:`rnnkit.kernels` when Numba is
    installed. It takes the layer input ``x`` itself (``forward_x`` / ``backward_x``) and does
    the products over all steps too.
    """

    def __init__(self):
        self.spares = _Spares()

    @staticmethod
    def _gate_layout(T: int, N: int, H: int) -> tuple[tuple, int, int, int]:
        """The gate buffer's shape, and the step functions' ``rows, stride`` and the distance
        between two steps' ``start``."""
        if N == 1:
            return (T, 4 * H), 1, H, 4 * H
        return (4 * H, T * N), H, T * N, N

    def forward_x(
        self,
        x: np.ndarray,
        state: tuple,
        p: CellParams,
        mask: np.ndarray | None,
        recycle: bool = False,
    ) -> tuple[np.ndarray, tuple, dict]:
        """The whole sequence forward from the layer input ``x (T, N, D)``; with ``recycle``
        (evaluation mode) the buffers come back when the cache is dropped unused."""
        T, N, D = x.shape
        H = p.w_hh.shape[1]
        dt = x.dtype
        spares = self.spares
        spares.start((T, N, H, dt))
        shape, rows, stride, step = self._gate_layout(T, N, H)
        z = spares.take(shape, dt)
        if N == 1:  # W_ax x<t> for every step, one product
            np.matmul(x.reshape(T, D), p.w_ih.T, out=z)
        else:
            np.matmul(p.w_ih, x.reshape(T * N, D).T, out=z)
        bias = np.zeros(4 * H, dtype=dt)
        for b in (p.b_ih, p.b_hh):
            if b is not None:
                bias += b
        bias = np.repeat(bias, N)  # over each step's columns, (4HN,): the step adds it
        h_all = spares.take((T + 1, H, N), dt)  # h_all[t] is a<t-1>, carried
        c_all = spares.take((T + 1, H, N), dt)
        h_all[0], c_all[0] = state[0].T, state[1].T
        tanh_c = spares.take((T, H, N), dt)
        out = None if mask is None else np.empty((T, H, N), dtype=dt)
        # Each step's blocks as flat rows for the step function; rows of length 0 when absent.
        none = np.empty((T, 0), dtype=dt)
        h_, c_, tanh_c_ = (a.reshape(len(a), -1) for a in (h_all, c_all, tanh_c))
        out_ = none if mask is None else out.reshape(T, -1)
        keep_ = none if mask is None else _mask_columns(mask, H)
        peep = none[0] if p.w_peep is None else _spread(p.w_peep, N)
        run_step = kernels.lstm_forward_step if kernels.AVAILABLE else lstm_forward_step
        z_ = z.reshape(-1)
        states = (c_, h_, tanh_c_, out_, peep, bias, keep_)
        if _compiled_loop(N, 4, H):
            w, blas = _loop_product(p.w_hh, False, N, columns=True)
            output = np.empty((T, N, H), dtype=dt)  # written by the loop, step by step
            kernels.lstm_sequence_forward(w, N, z_, rows, stride, step, *states, output, blas)
        else:
            zt = np.empty((4 * H, N), dtype=dt)
            zt_ = zt.reshape(-1)
            for t in range(T):
                np.matmul(p.w_hh, h_all[t], out=zt)  # W_aa a<t-1> for the four gates
                run_step(zt_, z_, rows, t * step, stride, *states, t)
            cols = h_all[1:] if mask is None else out
            output = cols.transpose(0, 2, 1).copy()  # (T, N, H), never a view of a kept buffer
        output.flags.writeable = False  # the backward pass reads a<t> from it
        final = (h_all[T].T.copy(), c_all[T].T.copy())
        cache = {"gates": z, "c_all": c_all, "tanh_c": tanh_c, "output": output}
        cache["h0"] = np.array(state[0])  # (N, H), a copy
        cache["h_all"] = h_all  # unread, given back with the rest after the backward pass
        if recycle:
            cache = spares.give_when_dropped(cache, z, h_all, c_all, tanh_c)
        return output, final, cache

    def backward_x(
        self,
        x: np.ndarray,
        dout: np.ndarray,
        dstate: tuple,
        cache: dict,
        p: CellParams,
        mask: np.ndarray | None,
    ) -> tuple[np.ndarray, tuple, dict]:
        """Backpropagation through the sequence; returns ``(dx, dstate0, grads)``, the grads of
        every parameter (input side included)."""
        # Taken out of the (single-use) cache; all kept for the next call once used.
        _keep_cache(cache)
        h_all = cache.pop("h_all")
        z, c_all, tanh_c = cache.pop("gates"), cache.pop("c_all"), cache.pop("tanh_c")
        T, N, H = dout.shape
        D = x.shape[2]
        _, rows, stride, step = self._gate_layout(T, N, H)
        dt = dout.dtype
        if mask is not None:
            dout = dout * mask  # a padded position's output is a constant zero
        dh, dc = dstate[0].T.copy(), dstate[1].T.copy()  # (H, N)
        none = np.empty((T, 0), dtype=dt)
        c_, tanh_c_ = (a.reshape(len(a), -1) for a in (c_all, tanh_c))
        keep_ = none if mask is None else _mask_columns(mask, H)
        peep = none[0] if p.w_peep is None else _spread(p.w_peep, N)
        carry = np.empty((2, 0 if mask is None else H * N), dtype=dt)  # see lstm_backward_step
        dh_, dc_ = dh.reshape(-1), dc.reshape(-1)
        dz = z.T if N == 1 else z  # (4H, T*N), dz<t> in columns t*N to t*N + N
        run_step = kernels.lstm_backward_step if kernels.AVAILABLE else lstm_backward_step
        z_ = z.reshape(-1)
        if _compiled_loop(N, 4, H):
            layout = (N, z_, rows, stride, step)
            grads_in = (c_, tanh_c_, np.ascontiguousarray(dout), dh_, dc_, carry, peep, keep_)
            w, blas = _loop_product(p.w_hh, True, N, columns=True)
            kernels.lstm_sequence_backward(w, *layout, *grads_in, blas)
        else:
            # (H, 4H). With one state the view is as fast at H = 128, but at H = 512 a copy
            # makes W_aa^T dz 1.4x faster (24 against 33 us), which repays it within 50 steps.
            w_hh_t = _transposed(p.w_hh, view=N == 1 and H < 256)
            for t in reversed(range(T)):
                dh += dout[t].T  # da<t>
                run_step(z_, rows, t * step, stride, c_, tanh_c_, dh_, dc_, carry, peep, keep_, t)
                np.matmul(w_hh_t, dz[:, t * N : (t + 1) * N], out=dh)  # da<t-1> = W_aa^T dz
                if mask is not None:
                    dh += carry[0].reshape(H, N)
        grads = {}
        if p.w_peep is not None:  # Σ over steps and sequences of dz<t> * c<t-1>, for Γu, Γf, Γo
            dz4 = dz.reshape(4, H, T, N)
            c_prev = c_all[:T].transpose(1, 0, 2)  # (H, T, N)
            grads["w_peep"] = np.stack([(dz4[g] * c_prev).sum(axis=(1, 2)) for g in (0, 1, 3)])
        # dW_hh = Σ_t dz<t> a<t-1>^T, with a<t-1> read from the outputs (where they differ,
        # past a sequence's end, dz is zero) and from h_0, skipped when zero, as it mostly is
        # (with one state that term is an outer product, 2x the time of all the others).
        out_rows = cache["output"][:-1].reshape((T - 1) * N, H)
        grads["w_hh"] = dz[:, N:] @ out_rows
        if cache["h0"].any():
            grads["w_hh"] += dz[:, :N] @ cache["h0"]
        grads["w_ih"] = dz @ x.reshape(T * N, D)
        if p.b_ih is not None:
            grads["b_ih"] = dz @ np.ones(T * N, dtype=dt)  # Σ over steps: BLAS, 2-4x .sum
            grads["b_hh"] = grads["b_ih"].copy()
        dx = (dz.T @ p.w_ih).reshape(T, N, D)
        self.spares.give(z, h_all, c_all, tanh_c)  # for next time
        return dx, (dh.T.copy(), dc.T.copy()), grads


# ---------------------------------------------------------------- GRU


class GRULoop(_ProjectingLoop):
    """The full GRU of :func:`rnnkit.cells.gru_step_forward`, reset after or before W_hn."""

    kept = ("gates", "reset_in")

    def __init__(self, reset_after: bool):
        super().__init__()
        self.reset_after = reset_after

    def compiled(self) -> bool:
        """Whether the step's gate arithmetic runs in :mod:`rnnkit.kernels` (reset after)."""
        return kernels.AVAILABLE and self.reset_after

    def input_bias(self, p: CellParams) -> np.ndarray | None:
        """``b_ih``, but for the compiled step, which adds all biases itself (``xw`` is then
        ``W_x x`` alone)."""
        return None if self.compiled() else p.b_ih

    def forward(
        self, xw: np.ndarray, state: tuple, p: CellParams, mask: np.ndarray | None
    ) -> tuple[np.ndarray, tuple, dict]:
        """The whole sequence forward; see the module docstring."""
        T, N, G = xw.shape
        H = G // 3
        s = gate_slices(GRU_GATES, H)
        rz, n = slice(0, 2 * H), s["n"]
        dt = xw.dtype
        # With the NumPy step the Γr and z blocks are halved here (once, in the projection and
        # the weights); the compiled step halves its own sums.
        halve = [] if self.compiled() else [rz]
        gates = _halved(xw, halve, copy=False)  # (T, N, 3H): Γr, z (= 1 - Γu), c̃
        whole_loop = self.compiled() and _compiled_loop(N, 3, H)
        if whole_loop:
            w_hh_t, blas = _loop_product(p.w_hh, False, N)
        else:
            w_hh_t = _right_operand(p.w_hh, halve, N)  # (H, 3H)
        if not self.reset_after:
            w_rz_t = np.ascontiguousarray(w_hh_t[:, rz])
            w_n_t = np.ascontiguousarray(w_hh_t[:, n])
        b_hh = _halved(p.b_hh, halve)
        h_all = np.empty((T + 1, N, H), dtype=dt)
        h_all[0] = state[0]
        reset_in = self.spares.take((T, N, H), dt)  # W_hn a + b_hn (after), or Γr*a (before)
        out = _output_buffer(h_all, mask)
        cache = {"gates": gates, "h_all": h_all, "reset_in": reset_in}
        if self.compiled():
            hw, empty = np.empty((N, G), dtype=dt), np.empty((0, 0), dtype=dt)
            b_x, b_hn = np.zeros(G, dtype=dt), np.zeros(H, dtype=dt)  # added by the kernel
            if p.b_ih is not None:
                b_x += p.b_ih
                b_x[rz] += p.b_hh[rz]
                b_hn += p.b_hh[n]
            if whole_loop:
                out_ = np.empty((T, 0, 0), dtype=dt) if mask is None else out
                keep = _sequence_mask(mask, T, dt)
                args = (b_x, b_hn, h_all, reset_in, out_, keep)
                kernels.gru_sequence_forward(gates, w_hh_t, *args, blas)
                return out, (h_all[T].copy(),), cache
            for t in range(T):
                np.matmul(h_all[t], w_hh_t, out=hw)
                kernels.gru_forward_step(
                    gates[t],
                    hw,
                    b_x,
                    b_hn,
                    h_all[t],
                    h_all[t + 1],
                    reset_in[t],
                    empty if mask is None else out[t],
                    empty.reshape(0) if mask is None else mask[t, :, 0],
                )
            return out, (h_all[T].copy(),), cache
        hw = np.empty((N, 3 * H if self.reset_after else 2 * H), dtype=dt)
        hn, h_new = np.empty((N, H), dtype=dt), np.empty((N, H), dtype=dt)
        for t in range(T):
            gt, h_prev = gates[t], h_all[t]
            if self.reset_after:
                np.matmul(h_prev, w_hh_t, out=hw)
                if b_hh is not None:
                    hw += b_hh
            else:
                np.matmul(h_prev, w_rz_t, out=hw)
                if b_hh is not None:
                    hw += b_hh[rz]
            gt[:, rz] += hw[:, rz]
            np.tanh(gt[:, rz], out=gt[:, rz])
            _sigmoid_from_halved(gt[:, rz])  # Γr and z
            r = gt[:, s["r"]]
            if self.reset_after:
                reset_in[t] = hw[:, n]
                np.multiply(r, hw[:, n], out=hn)  # Γr*(W_hn a<t-1> + b_hn)
            else:
                np.multiply(r, h_prev, out=reset_in[t])  # Γr*a<t-1>
                np.matmul(reset_in[t], w_n_t, out=hn)
                if b_hh is not None:
                    hn += b_hh[n]
            gt[:, n] += hn
            np.tanh(gt[:, n], out=gt[:, n])  # c̃
            np.subtract(h_prev, gt[:, n], out=h_new)  # a<t> = c̃ + z*(a<t-1> - c̃)
            h_new *= gt[:, s["z"]]
            h_new += gt[:, n]
            if mask is None:
                h_all[t + 1] = h_new
            else:
                h_all[t + 1] = _carry(h_new, h_prev, mask[t] > 0)
                np.multiply(h_new, mask[t], out=out[t])
        return out, (h_all[T].copy(),), cache

    def backward(
        self, dout: np.ndarray, dstate: tuple, cache: dict, p: CellParams, mask: np.ndarray | None
    ) -> tuple[np.ndarray, tuple, dict]:
        """Backpropagation through the whole sequence; see the module docstring."""
        gates, h_all, reset_in = cache["gates"], cache["h_all"], cache["reset_in"]
        T, N, H = dout.shape
        s = gate_slices(GRU_GATES, H)
        rz, n = slice(0, 2 * H), s["n"]
        dt = dout.dtype
        dxw = gates  # overwritten step by step
        dhn_all = self.spares.take((T, N, H), dt)  # gradient of the n block's hidden product
        if self.compiled():
            dout = np.ascontiguousarray(dout)
            d_hidden = np.empty((N, 3 * H), dtype=dt)  # of W_hh a<t-1> + b_hh, one step
            dh, dh_direct = dstate[0].copy(), np.empty((N, H), dtype=dt)
            if _compiled_loop(N, 3, H):
                keep = _sequence_mask(mask, T, dt)
                w, blas = _loop_product(p.w_hh, True, N)
                steps = (gates, h_all, reset_in, dout, dh, dhn_all, w, keep, blas)
                kernels.gru_sequence_backward(*steps)
            else:
                no_mask = np.empty(0, dtype=dt)
                for t in reversed(range(T)):
                    keep = no_mask if mask is None else mask[t, :, 0]
                    steps = (gates[t], h_all[t], reset_in[t], dout[t])
                    kernels.gru_backward_step(*steps, dh, d_hidden, dhn_all[t], dh_direct, keep)
                    np.matmul(d_hidden, p.w_hh, out=dh)  # da<t-1> through the hidden side
                    dh += dh_direct
            return dxw, (dh,), self._hidden_grads(dxw, dhn_all, h_all, reset_in, p)
        dh = dstate[0].copy()
        dnew, tmp = np.empty((N, H), dtype=dt), np.empty((N, H), dtype=dt)
        deriv = np.empty((N, 2 * H), dtype=dt)
        d_reset = np.empty((N, H), dtype=dt)
        for t in reversed(range(T)):
            gt, h_prev = gates[t], h_all[t]
            r, z, c_tilde = gt[:, s["r"]], gt[:, s["z"]], gt[:, n]
            np.add(dh, dout[t], out=dnew)
            if mask is not None:
                dnew *= mask[t]
                carry = dh * (1 - mask[t])
            np.subtract(1, gt[:, rz], out=deriv)  # σ(1 - σ) for Γr and z
            deriv *= gt[:, rz]
            np.multiply(dnew, z, out=dh)  # da<t-1> through z*a<t-1>
            np.subtract(h_prev, c_tilde, out=tmp)  # dz = da * (a<t-1> - c̃)
            tmp *= dnew
            np.subtract(1, z, out=z)  # z is free after dz: 1 - z = Γu
            dnew *= z  # dc̃ = da * Γu
            np.multiply(c_tilde, c_tilde, out=c_tilde)  # dn = dc̃ * (1 - c̃²)
            np.subtract(1, c_tilde, out=c_tilde)
            c_tilde *= dnew
            gt[:, s["z"]] = tmp
            if self.reset_after:
                np.multiply(c_tilde, r, out=dhn_all[t])  # the hidden side saw Γr*(...)
                np.multiply(c_tilde, reset_in[t], out=d_reset)  # dΓr
            else:
                dhn_all[t] = c_tilde
                np.matmul(c_tilde, p.w_hh[n], out=d_reset)  # gradient of Γr*a<t-1>
                np.multiply(d_reset, r, out=tmp)
                dh += tmp
                d_reset *= h_prev  # dΓr
            gt[:, s["r"]] = d_reset
            gt[:, rz] *= deriv
            np.matmul(gt[:, rz], p.w_hh[rz], out=tmp)
            dh += tmp
            if self.reset_after:
                np.matmul(dhn_all[t], p.w_hh[n], out=tmp)
                dh += tmp
            if mask is not None:
                dh += carry
        return dxw, (dh,), self._hidden_grads(dxw, dhn_all, h_all, reset_in, p)

    def _hidden_grads(self, dxw, dhn_all, h_all, reset_in, p: CellParams) -> dict:
        """dW_hh and db_hh over all steps: the Γr and z blocks' gradients are the input side's
        (``dxw``), the n block's ``dhn_all``, which goes back to the kept buffers after."""
        T, N, H = dhn_all.shape
        rz = slice(0, 2 * H)
        d_rz, d_n = dxw.reshape(-1, 3 * H)[:, rz], dhn_all.reshape(-1, H)
        h_prev_all = h_all[:T].reshape(-1, H)
        n_input = h_prev_all if self.reset_after else reset_in.reshape(-1, H)
        grads = {"w_hh": np.concatenate([d_rz.T @ h_prev_all, d_n.T @ n_input])}
        if p.b_hh is not None:  # db_ih, and db_hh's Γr and z blocks: Σ dxw
            ones = np.ones(T * N, dtype=dhn_all.dtype)  # Σ over steps: BLAS, 2-4x .sum
            grads["b_ih"] = ones @ dxw.reshape(-1, 3 * H)
            grads["b_hh"] = np.concatenate([grads["b_ih"][rz], ones @ d_n])
        self.spares.give(dhn_all)
        return grads


class SimpleGRULoop(_ProjectingLoop):
    """The course's simplified GRU of :func:`rnnkit.cells.simple_gru_step_forward`."""

    kept = ("gates",)

    def input_bias(self, p: CellParams) -> np.ndarray | None:
        """Both biases, as for :class:`RNNLoop` (``xw`` includes b_hh)."""
        return _bias_sum(p)

    def forward(
        self, xw: np.ndarray, state: tuple, p: CellParams, mask: np.ndarray | None
    ) -> tuple[np.ndarray, tuple, dict]:
        """The whole sequence forward; see the module docstring."""
        T, N, G = xw.shape
        H = G // 2
        s = gate_slices(SIMPLE_GRU_GATES, H)
        dt = xw.dtype
        gates = _halved(xw, [s["z"]], copy=False)  # (T, N, 2H): z (= 1 - Γu), c̃
        w_hh_t = _right_operand(p.w_hh, [s["z"]], N)
        h_all = np.empty((T + 1, N, H), dtype=dt)
        h_all[0] = state[0]
        out = _output_buffer(h_all, mask)
        hw, h_new = np.empty((N, G), dtype=dt), np.empty((N, H), dtype=dt)
        for t in range(T):
            gt, h_prev = gates[t], h_all[t]
            np.matmul(h_prev, w_hh_t, out=hw)
            gt += hw
            np.tanh(gt, out=gt)
            _sigmoid_from_halved(gt[:, s["z"]])
            np.subtract(h_prev, gt[:, s["n"]], out=h_new)  # c<t> = c̃ + z*(c<t-1> - c̃)
            h_new *= gt[:, s["z"]]
            h_new += gt[:, s["n"]]
            if mask is None:
                h_all[t + 1] = h_new
            else:
                h_all[t + 1] = _carry(h_new, h_prev, mask[t] > 0)
                np.multiply(h_new, mask[t], out=out[t])
        return out, (h_all[T].copy(),), {"gates": gates, "h_all": h_all}

    def backward(
        self, dout: np.ndarray, dstate: tuple, cache: dict, p: CellParams, mask: np.ndarray | None
    ) -> tuple[np.ndarray, tuple, dict]:
        """Backpropagation through the whole sequence; see the module docstring."""
        gates, h_all = cache["gates"], cache["h_all"]
        T, N, H = dout.shape
        s = gate_slices(SIMPLE_GRU_GATES, H)
        dt = dout.dtype
        dh = dstate[0].copy()
        dnew, tmp = np.empty((N, H), dtype=dt), np.empty((N, H), dtype=dt)
        for t in reversed(range(T)):
            gt, h_prev = gates[t], h_all[t]
            z, c_tilde = gt[:, s["z"]], gt[:, s["n"]]
            np.add(dh, dout[t], out=dnew)
            if mask is not None:
                dnew *= mask[t]
                carry = dh * (1 - mask[t])
            np.multiply(dnew, z, out=dh)
            np.subtract(h_prev, c_tilde, out=tmp)  # dz = da * (c<t-1> - c̃) * σ'
            tmp *= dnew
            tmp *= z * (1 - z)
            np.subtract(1, z, out=z)  # Γu
            z *= dnew  # dc̃ = da * Γu
            np.multiply(c_tilde, c_tilde, out=c_tilde)
            np.subtract(1, c_tilde, out=c_tilde)
            c_tilde *= z
            gt[:, s["z"]] = tmp
            np.matmul(gt, p.w_hh, out=tmp)
            dh += tmp
            if mask is not None:
                dh += carry
        return gates, (dh,), _recurrent_weight_grads(gates, h_all[:T], p.b_hh is not None)


LSTM_COLUMNS = LSTMColumnLoop()


def lstm_uses_columns(batch_size: int, hidden_size: int) -> bool:
    """Whether the LSTM runs in the column layout: always with the compiled kernels. With NumPy
    alone, rows win for tiny steps (N <= 2 with H = 128, by 10% to 20%) and columns from N = 4
    or H = 256 on (up to 2.5x)."""
    return kernels.AVAILABLE or batch_size >= 4 or hidden_size >= 256


FAST_LOOPS = {
    "rnn_tanh": RNNLoop("tanh"),
    "rnn_relu": RNNLoop("relu"),
    "lstm": LSTMLoop(),
    "gru": GRULoop(reset_after=True),
    "gru_reset_before": GRULoop(reset_after=False),
    "gru_simple": SimpleGRULoop(),
}
