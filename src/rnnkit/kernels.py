"""The compiled definition of every cell: its step forward and backward, and the loop over the
steps of a chunk of sequences, products included (Numba, calling NumPy's BLAS, :mod:`.blas`).

:mod:`rnnkit.cells` is the same arithmetic to read; the tests hold the two equal. A layer runs a
chunk of its batch through all T steps in one call of ``*_forward`` (and ``*_backward``), so
that two chunks run on two threads with nothing to wait for between them (:mod:`.parallel`).

Layout (PyTorch's rows, the notes' columns transposed: ``a<t>`` is ``(m, n_a)``). The gates of
all steps are one matrix ``Z (T*N, G*H)``, step t in rows ``t*N .. t*N + N``, so the input
projection of all steps is one product into it, the weight gradients one product out of it,
and a chunk's gates of one step are adjacent in memory. States are ``(T+1, N, H)`` (``s[t]`` is
a<t-1>, ``s[1:]`` the output). The element loops run over ``a`` (outer, the chunk's sequences)
and ``b`` (inner, the units, adjacent in memory). Where every array sits for a chunk is a tuple
``L`` (see :func:`layout`); values per unit (biases, peepholes) come spread over the states'
layout, so that one index reads them all.

In float32, tanh is a rational approximation (max error 3e-7 against NumPy's) that the compiler
vectorises (Numba's ``math.tanh`` is a scalar call). Fast-math flags exclude "no NaNs / no
infinities": a NaN must still reach the loss. ``error_model="numpy"`` and unsigned offsets keep
the loops vectorised (a division check or a guard against negative indices stop it), and masks
run in loops of their own (a branch on the element stops it too).
"""

from __future__ import annotations

import math
import os

import numpy as np

from . import blas, packed

try:
    import numba
    from numba import types
    from numba.extending import overload
except ImportError:  # the reference loop stays whole
    numba = None

AVAILABLE = numba is not None and blas.FOUND and os.environ.get("RNNKIT_COMPILED", "1") != "0"

ONE, HALF = np.float32(1.0), np.float32(0.5)  # exact in both widths: no float64 promotion


def _tanh(x):
    """tanh of a scalar, inside the kernels (dispatches on the width below)."""
    return math.tanh(x)


if numba is not None:
    _FLAGS = {"contract", "arcp", "reassoc", "nsz", "afn"}  # no "nnan", "ninf"
    _u = numba.uint64

    def _jit(function):
        return blas.compiled(function, fastmath=_FLAGS, error_model="numpy")

    # Numerator and denominator of a [13/6] rational fit of tanh on [-7.9, 7.9] (the clamp
    # beyond which float32 tanh is ±1), odd powers above, even below.
    _P = [np.float32(c) for c in (4.89352455891786e-03, 6.37261928875436e-04,
                                  1.48572235717979e-05, 5.12229709037114e-08,
                                  -8.60467152213735e-11, 2.00018790482477e-13,
                                  -2.76076847742355e-16)]  # fmt: skip
    _Q = [np.float32(c) for c in (4.89352518554385e-03, 2.26843463243900e-03,
                                  1.18534705686654e-04, 1.19825839466702e-06)]  # fmt: skip
    _LIMIT = np.float32(7.90531110763549805)
    _p1, _p3, _p5, _p7, _p9, _p11, _p13 = _P
    _q0, _q2, _q4, _q6 = _Q

    def _tanh32(x):
        v = _LIMIT if x > _LIMIT else x  # comparisons that leave a NaN as it is
        v = -_LIMIT if v < -_LIMIT else v
        v2 = v * v
        num = (((((_p13 * v2 + _p11) * v2 + _p9) * v2 + _p7) * v2 + _p5) * v2 + _p3) * v2 + _p1
        den = ((_q6 * v2 + _q4) * v2 + _q2) * v2 + _q0
        return num * v / den

    def _tanh64(x):
        return math.tanh(x)

    @overload(_tanh, jit_options={"fastmath": _FLAGS})
    def _tanh_by_width(x):
        if isinstance(x, types.Float) and x.bitwidth == 32:
            return _tanh32
        return _tanh64

else:
    _u = int

    def _jit(function):
        return function


@_jit
def _sigmoid(x):
    return HALF + HALF * _tanh(HALF * x)  # σ(x) = (1 + tanh(x/2)) / 2


def layout(T: int, N: int, n0: int, n1: int, G: int, H: int, one_step: bool = False) -> tuple:
    """Where a chunk's elements sit: ``L = (A, B, cs, st, sa, zt, zg, za, cz, kt, kc, zrow)``
    for the chunk of sequences ``n0 .. n1`` of a batch of N, G gates of H units; with
    ``one_step`` the gates are one step's rows, ``(N, G*H)``, which every step reuses (``zt``
    is 0; inference: nothing is kept for a backward pass).

    Element (a, b) of step t (sequence n0 + a, unit b) is at ``t*st + cs + a*sa + b`` in the
    states (and in values spread over them), gate g at ``t*zt + cz + g*zg + zrow[a] + b`` in
    the gates (``zrow[a] = a*za``), its mask at ``t*kt + kc + a``.

    The rows' offsets come from an array, not from ``a*za``: given the product, the compiler
    checks that the gates a loop writes and reads do not overlap over all rows at once, finds
    that they do (the rows interleave the gates) and runs the loop unvectorised, 6x slower.
    """
    zrow = np.arange(n1 - n0, dtype=np.uint64) * np.uint64(G * H)
    zt = 0 if one_step else N * G * H
    return (n1 - n0, H, n0 * H, N * H, H, zt, H, G * H, n0 * G * H, N, n0, zrow)


@_jit
def product(w, a, c, beta):
    """``c = a @ W^T + beta * c`` (beta 0 or 1) for 2-D views; ``w`` is ``(W, its packed
    panels)`` (:mod:`rnnkit.packed`; empty panels: BLAS alone). Every view is passed on as
    one of any layout, so that one compiled product serves them all (each layout of each
    argument made a version of its own: seconds of compiling each)."""
    packed.product(w[1], _any(w[0]), _any(a), _any(c), beta)


@_jit
def _any(a):
    return a[:, : a.shape[1]]


@_jit
def _block(X, N, t, n0, n1, r0, r1):
    """Columns ``r0 .. r1`` of a gate matrix ``(T*N, G)`` in step t's rows of the chunk, as a
    ``(n1 - n0, r1 - r0)`` view; a matrix of one step's rows ``(N, G)`` serves every step."""
    t0 = t * N if X.shape[0] > N else 0
    return X[t0 + n0 : t0 + n1, r0:r1]


# The element loops read and write through views that begin at their step and chunk: the
# compiler then checks once that two of them do not overlap and vectorises; given whole arrays
# and offsets, it could not tell c<t-1> from c<t> and left the loops scalar (8x slower).


@_jit
def _hold(L, t, new, prev, keep, out):
    """With a mask, after step t: ``out`` takes the output (zero where a sequence has ended;
    ``out`` may be empty) and a finished sequence keeps its state, ``prev``, in ``new`` (one
    step's arrays, in the states' layout)."""
    A, B, cs, sa = _u(L[0]), _u(L[1]), _u(L[2]), _u(L[4])
    new, prev, out, keep = new[cs:], prev[cs:], out[cs:], keep[_u(t) * _u(L[9]) + _u(L[10]) :]
    has_out = out.size > 0
    for a in range(A):
        s0, m = a * sa, keep[a]
        if has_out:
            for b in range(B):
                out[s0 + b] = new[s0 + b] * m
        if not m > 0:
            for b in range(B):
                new[s0 + b] = prev[s0 + b]


@_jit
def _split_carry(L, t, d, keep, carry):
    """With a mask, backward through step t: what a finished sequence carries straight to its
    previous state goes to ``carry``; ``d`` keeps what enters the step (one step's arrays)."""
    A, B, cs, sa = _u(L[0]), _u(L[1]), _u(L[2]), _u(L[4])
    d, carry, keep = d[cs:], carry[cs:], keep[_u(t) * _u(L[9]) + _u(L[10]) :]
    for a in range(A):
        s0, m = a * sa, keep[a]
        for b in range(B):
            carry[s0 + b] = d[s0 + b] * (ONE - m)
            d[s0 + b] = d[s0 + b] * m


@_jit
def _add(L, d, carry):
    """``d += carry`` over a chunk (one step's arrays)."""
    A, B, cs, sa = _u(L[0]), _u(L[1]), _u(L[2]), _u(L[4])
    d, carry = d[cs:], carry[cs:]
    for a in range(A):
        s0 = a * sa
        for b in range(B):
            d[s0 + b] += carry[s0 + b]


@_jit
def _project_step(inputs, Z, N, t, n0, n1):
    """Where the loop projects its inputs step by step (``inputs = (w_ih, x)``, ``w_ih`` not
    empty): the gates of step t = x<t> W_ih^T. The weights stay in cache from step to step."""
    w_ih, x = inputs
    if w_ih[0].size > 0:
        product(w_ih, x[t, n0:n1], _block(Z, N, t, n0, n1, 0, w_ih[0].shape[0]), 0.0)


# ---------------------------------------------------------------- LSTM


# Options that change what an element computes (peepholes and their form, the GRU's reset)
# come as arrays or None: Numba compiles a version for each and drops the code of an absent
# one. Tested at run time inside the loop, they kept it scalar (a GRU step 20x slower).


@_jit
def lstm_step_forward(L, t, z, bias, peep_if, peep_o, gers, c, tanh_c, m, mt, ma):
    """One step of the LSTM (:func:`rnnkit.cells.lstm_step_forward`) on a chunk, after its
    products: the gates (``z``, pre-activations without biases) become Γu, Γf, c̃, Γo; writes
    c<t>, tanh(c<t>) to ``c``, ``tanh_c`` and Γo*tanh(c<t>) to ``m`` at ``t*mt + a*ma + cs + b``.
    Peepholes (None without, spread as the biases): ``peep_if`` for Γu, Γf, which see c<t-1>,
    and ``peep_o`` for Γo, which sees c<t-1> as in the notes or, with ``gers`` (an array or
    None, like it), the new c<t> as in Gers et al. and ONNX."""
    A, B, cs, st, sa = _u(L[0]), _u(L[1]), _u(L[2]), _u(L[3]), _u(L[4])
    zg, ma, t = _u(L[6]), _u(ma), _u(t)
    zg2, zg3, st2, st3 = zg + zg, zg + zg + zg, st + st, st + st + st  # unsigned
    z, m = z[t * _u(L[5]) + _u(L[8]) :], m[t * _u(mt) + cs :]
    c_prev, c_new, tanh_c = c[t * st + cs :], c[(t + 1) * st + cs :], tanh_c[(t + 1) * st + cs :]
    bias = bias[cs:]
    if peep_if is not None:
        p_if, p_o = peep_if[cs:], peep_o[cs:]
    for a in range(A):
        za_, sa_, ma_ = L[11][a], a * sa, a * ma
        for b in range(B):
            k, u = za_ + b, sa_ + b
            z_i, z_f = z[k] + bias[u], z[k + zg] + bias[u + st]
            z_g, z_o = z[k + zg2] + bias[u + st2], z[k + zg3] + bias[u + st3]
            if peep_if is not None:
                z_i += p_if[u] * c_prev[u]
                z_f += p_if[u + st] * c_prev[u]
            gamma_u, gamma_f, c_tilde = _sigmoid(z_i), _sigmoid(z_f), _tanh(z_g)
            c_t = gamma_f * c_prev[u] + gamma_u * c_tilde  # c<t> = Γf*c<t-1> + Γu*c̃<t>
            if peep_if is not None and gers is None:
                z_o += p_o[u] * c_prev[u]
            if peep_if is not None and gers is not None:
                z_o += p_o[u] * c_t
            gamma_o, tanh_ct = _sigmoid(z_o), _tanh(c_t)
            c_new[u], tanh_c[u] = c_t, tanh_ct
            m[ma_ + b] = gamma_o * tanh_ct  # a<t> = Γo*tanh(c<t>)
            z[k], z[k + zg], z[k + zg2], z[k + zg3] = gamma_u, gamma_f, c_tilde, gamma_o


@_jit
def lstm_step_backward(L, t, z, peep_if, peep_o, gers, c, tanh_c, dm, dc, dpeep_if, dpeep_o):
    """One step backward of :func:`lstm_step_forward`, before the product W_hh^T dz: ``dm``
    and ``dc`` (one step, the states' layout) hold the gradients of Γo*tanh(c<t>) and c<t>,
    and ``dc`` takes dc<t-1>; the gates become their pre-activation gradients and the
    peepholes' gradients are added into ``dpeep_if``, ``dpeep_o`` (spread like them)."""
    A, B, cs, st, sa = _u(L[0]), _u(L[1]), _u(L[2]), _u(L[3]), _u(L[4])
    zg, t = _u(L[6]), _u(t)
    zg2, zg3 = zg + zg, zg + zg + zg  # unsigned
    z, dm, dc = z[t * _u(L[5]) + _u(L[8]) :], dm[cs:], dc[cs:]
    c_prev, c_new, tanh_c = c[t * st + cs :], c[(t + 1) * st + cs :], tanh_c[(t + 1) * st + cs :]
    if peep_if is not None:
        p_if, p_o, dp_if, dp_o = peep_if[cs:], peep_o[cs:], dpeep_if[cs:], dpeep_o[cs:]
    for a in range(A):
        za_, sa_ = L[11][a], a * sa
        for b in range(B):
            k, u = za_ + b, sa_ + b
            gamma_u, gamma_f, c_tilde, gamma_o = z[k], z[k + zg], z[k + zg2], z[k + zg3]
            da, tanh_ct = dm[u], tanh_c[u]
            dz_o = da * tanh_ct * gamma_o * (ONE - gamma_o)  # σ' = σ(1 - σ)
            dc_t = dc[u] + da * gamma_o * (ONE - tanh_ct * tanh_ct)  # a<t> sees c<t>
            if peep_if is not None and gers is not None:
                dc_t += dz_o * p_o[u]  # Γo saw c<t>
                dp_o[u] += dz_o * c_new[u]
            dz_i = dc_t * c_tilde * gamma_u * (ONE - gamma_u)
            dz_f = dc_t * c_prev[u] * gamma_f * (ONE - gamma_f)
            dz_g = dc_t * gamma_u * (ONE - c_tilde * c_tilde)  # tanh' = 1 - tanh²
            dc_prev = dc_t * gamma_f  # dc<t-1> = dc<t> * Γf
            if peep_if is not None:
                dc_prev += dz_i * p_if[u] + dz_f * p_if[u + st]
                dp_if[u] += dz_i * c_prev[u]
                dp_if[u + st] += dz_f * c_prev[u]
            if peep_if is not None and gers is None:
                dc_prev += dz_o * p_o[u]
                dp_o[u] += dz_o * c_prev[u]
            dc[u] = dc_prev
            z[k], z[k + zg], z[k + zg2], z[k + zg3] = dz_i, dz_f, dz_g, dz_o


@_jit
def lstm_forward(L, Lp, n1, Z, inputs, w_hh, w_hr, bias, peepholes, states, outputs):
    """All steps of the LSTM for the chunk of sequences ``n0 .. n1`` (``n0 = L[10]``): ``Z``
    (the gates, ``(T*N, 4H)``) holds the input projection, or takes it step by step
    (:func:`_project_step`). ``peepholes`` as :func:`lstm_step_forward` takes them.
    ``states``: ``S (T+1, N, P)`` holds a<t-1> (P = H, or the projection's size), ``c``,
    ``tanh_c`` the cell states (flat, ``L``); ``m`` takes Γo*tanh(c<t>) at ``t*ml[0] + L[2] +
    a*ml[1] + b``: the states themselves, or ``M (T*N, H)`` before the projection ``w_hr``
    (empty without one). ``outputs``: with a mask (``keep``, else empty), ``out (T, N, P)``
    takes the outputs (without, they are ``S[1:]``)."""
    (peep_if, peep_o, gers), (S, c, tanh_c, M, m, ml), (keep, out) = peepholes, states, outputs
    T, N, n0, H = S.shape[0] - 1, S.shape[1], L[10], L[1]
    s, z, st, stp = S.reshape(-1), Z.reshape(-1), L[3], Lp[3]
    for t in range(T):
        _project_step(inputs, Z, N, t, n0, n1)
        product(w_hh, S[t][n0:n1], _block(Z, N, t, n0, n1, 0, 4 * H), 1.0)  # += a<t-1> W_hh^T
        lstm_step_forward(L, t, z, bias, peep_if, peep_o, gers, c, tanh_c, m, ml[0], ml[1])
        if w_hr[0].size > 0:  # a<t> = (Γo*tanh(c<t>)) W_hr^T
            product(w_hr, _block(M, N, t, n0, n1, 0, H), S[t + 1][n0:n1], 0.0)
        if keep.size > 0:
            new, prev = s[(t + 1) * stp : (t + 2) * stp], s[t * stp : (t + 1) * stp]
            _hold(Lp, t, new, prev, keep, out[t].reshape(-1))
            _hold(L, t, c[(t + 1) * st : (t + 2) * st], c[t * st : (t + 1) * st], keep, c[:0])


@_jit
def lstm_backward(L, Lp, n1, Z, w_hh_t, w_hr_t, peepholes, states, grads):
    """All steps backward of :func:`lstm_forward` for its chunk (``w_hh_t``, ``w_hr_t``: the
    transposed weights; ``states``: ``c``, ``tanh_c`` as there, and ``keep``). The gates
    become dz; ``grads``: ``dout (T, N, P)`` the outputs' gradients, ``dh (N, P)`` and ``dc
    (N, H)`` hold the final states' and take da<0>, dc<0>; with a projection ``dM (T*N, P)``
    takes each step's da<t>, for dW_hr, and ``dm (N*H)`` is scratch; ``carry (2, N*max(H,
    P))`` is scratch with a mask; ``dpeep_if``, ``dpeep_o`` take the peepholes' gradients."""
    peep_if, peep_o, gers = peepholes
    c, tanh_c, keep = states
    dout, dh, dc, dM, dm, carry, dpeep_if, dpeep_o = grads
    T, N, n0, H = tanh_c.size // L[3] - 1, dh.shape[0], L[10], L[1]
    z, dh_, dc_, P = Z.reshape(-1), dh.reshape(-1), dc.reshape(-1), dh.shape[1]
    proj, masked = w_hr_t[0].size > 0, keep.size > 0
    carry_h, carry_c = carry[0][: N * P], carry[1][: L[3]]
    for t in range(T - 1, -1, -1):
        _add(Lp, dh_, dout[t].reshape(-1))  # da<t> += its output's gradient
        if masked:
            _split_carry(Lp, t, dh_, keep, carry_h)
            _split_carry(L, t, dc_, keep, carry_c)
        if proj:  # through a<t> = m<t> W_hr^T
            _block(dM, N, t, n0, n1, 0, P)[:, :] = dh[n0:n1]
            product(w_hr_t, dh[n0:n1], dm.reshape(N, H)[n0:n1], 0.0)
            lstm_step_backward(
                L, t, z, peep_if, peep_o, gers, c, tanh_c, dm, dc_, dpeep_if, dpeep_o
            )
        else:
            lstm_step_backward(
                L, t, z, peep_if, peep_o, gers, c, tanh_c, dh_, dc_, dpeep_if, dpeep_o
            )
        product(w_hh_t, _block(Z, N, t, n0, n1, 0, 4 * H), dh[n0:n1], 0.0)  # dz W_hh
        if masked:
            _add(Lp, dh_, carry_h)
            _add(L, dc_, carry_c)


# ---------------------------------------------------------------- vanilla RNN, simplified GRU
# Both add their recurrent product into their gates; ``cell`` says which: TANH, RELU or SIMPLE.

TANH, RELU, SIMPLE = 0, 1, 2


@_jit
def rnn_step_forward(L, t, z, bias, relu, s):
    """One RNN step (:func:`rnnkit.cells.rnn_step_forward`) after its product: ``z`` (W_ax x<t>
    + W_aa a<t-1>) becomes a<t> = g(z + b_a), also written to the states ``s``."""
    A, B, cs, st, sa, t = _u(L[0]), _u(L[1]), _u(L[2]), _u(L[3]), _u(L[4]), _u(t)
    z, a_new, bias = z[t * _u(L[5]) + _u(L[8]) :], s[(t + 1) * st + cs :], bias[cs:]
    for a in range(A):
        za_, sa_ = L[11][a], a * sa
        for b in range(B):
            v = z[za_ + b] + bias[sa_ + b]
            v = (v if v > 0 else v - v) if relu else _tanh(v)  # v - v: a zero of v's width
            z[za_ + b], a_new[sa_ + b] = v, v


@_jit
def rnn_step_backward(L, t, z, relu, dh):
    """One RNN step backward, before the product W_aa^T dz: ``z`` (a<t>) becomes dz = da<t> *
    g'; ``dh`` (one step, the states' layout) holds da<t>."""
    A, B, cs, sa, t = _u(L[0]), _u(L[1]), _u(L[2]), _u(L[4]), _u(t)
    z, dh = z[t * _u(L[5]) + _u(L[8]) :], dh[cs:]
    for a in range(A):
        za_, sa_ = L[11][a], a * sa
        for b in range(B):
            a_t, da = z[za_ + b], dh[sa_ + b]
            z[za_ + b] = (da if a_t > 0 else da - da) if relu else da * (ONE - a_t * a_t)


@_jit
def simple_gru_step_forward(L, t, z, bias, s):
    """One step of the course's simplified GRU (:func:`rnnkit.cells.simple_gru_step_forward`)
    after its product: the gates z, n become z = 1 - Γu and c̃; a<t> goes to the states."""
    A, B, cs, st, sa = _u(L[0]), _u(L[1]), _u(L[2]), _u(L[3]), _u(L[4])
    zg, t = _u(L[6]), _u(t)
    z, bias = z[t * _u(L[5]) + _u(L[8]) :], bias[cs:]
    a_prev, a_new = s[t * st + cs :], s[(t + 1) * st + cs :]
    for a in range(A):
        za_, sa_ = L[11][a], a * sa
        for b in range(B):
            k, u = za_ + b, sa_ + b
            z_gate = _sigmoid(z[k] + bias[u])  # z = 1 - Γu
            c_tilde = _tanh(z[k + zg] + bias[u + st])
            z[k], z[k + zg] = z_gate, c_tilde
            a_new[u] = c_tilde + z_gate * (a_prev[u] - c_tilde)  # c<t> = Γu*c̃ + (1-Γu)*c<t-1>


@_jit
def simple_gru_step_backward(L, t, z, s, dh):
    """One step backward of :func:`simple_gru_step_forward`, before the product: the gates
    become their pre-activation gradients; ``dh`` holds da<t> and takes the part of da<t-1>
    that bypasses the product, da<t> * (1 - Γu)."""
    A, B, cs, st, sa = _u(L[0]), _u(L[1]), _u(L[2]), _u(L[3]), _u(L[4])
    zg, t = _u(L[6]), _u(t)
    z, dh, a_prev = z[t * _u(L[5]) + _u(L[8]) :], dh[cs:], s[t * st + cs :]
    for a in range(A):
        za_, sa_ = L[11][a], a * sa
        for b in range(B):
            k, u = za_ + b, sa_ + b
            da, z_gate, c_tilde = dh[u], z[k], z[k + zg]
            z[k] = da * (a_prev[u] - c_tilde) * z_gate * (ONE - z_gate)
            z[k + zg] = da * (ONE - z_gate) * (ONE - c_tilde * c_tilde)  # dc̃ = da * Γu
            dh[u] = da * z_gate


@_jit
def gated_forward(cell, L, n1, Z, inputs, w_hh, S, bias, keep, out):
    """All steps of the RNN or the simplified GRU (``cell``) for the chunk of sequences ``n0
    .. n1`` (``n0 = L[10]``), after the input projection (``Z``: the gates, as in
    :func:`lstm_forward`); ``S (T+1, N, H)`` holds a<t-1>; with a mask (``keep``) ``out (T, N,
    H)`` takes the outputs."""
    T, N, n0, G = S.shape[0] - 1, S.shape[1], L[10], w_hh[0].shape[0]
    s, z, st = S.reshape(-1), Z.reshape(-1), L[3]
    for t in range(T):
        _project_step(inputs, Z, N, t, n0, n1)
        product(w_hh, S[t][n0:n1], _block(Z, N, t, n0, n1, 0, G), 1.0)  # += a<t-1> W_aa^T
        if cell == SIMPLE:
            simple_gru_step_forward(L, t, z, bias, s)
        else:
            rnn_step_forward(L, t, z, bias, cell == RELU, s)
        if keep.size > 0:
            new, prev = s[(t + 1) * st : (t + 2) * st], s[t * st : (t + 1) * st]
            _hold(L, t, new, prev, keep, out[t].reshape(-1))


@_jit
def gated_backward(cell, L, n1, Z, w_hh_t, S, keep, dout, dh, carry):
    """All steps backward of :func:`gated_forward` for its chunk: the gates become dz, ``dh
    (N, H)`` holds the final state's gradient and takes da<0>; ``carry`` is scratch (N*H) with
    a mask."""
    T, N, n0, G = S.shape[0] - 1, S.shape[1], L[10], w_hh_t[0].shape[1]
    s, z, dh_ = S.reshape(-1), Z.reshape(-1), dh.reshape(-1)
    for t in range(T - 1, -1, -1):
        _add(L, dh_, dout[t].reshape(-1))
        if keep.size > 0:
            _split_carry(L, t, dh_, keep, carry)
        if cell == SIMPLE:
            simple_gru_step_backward(L, t, z, s, dh_)
        else:
            rnn_step_backward(L, t, z, cell == RELU, dh_)
        beta = 1.0 if cell == SIMPLE else 0.0  # the simplified GRU's dh holds da<t> (1 - Γu)
        product(w_hh_t, _block(Z, N, t, n0, n1, 0, G), dh[n0:n1], beta)  # += dz W_aa
        if keep.size > 0:
            _add(L, dh_, carry)


# ---------------------------------------------------------------- GRU


@_jit
def gru_step_forward(L, t, z, hw, bias, b_hn, s, r_in, rl):
    """One full GRU step (:func:`rnnkit.cells.gru_step_forward`), the gates r, z, n of ``z``
    becoming Γr, z = 1 - Γu, c̃. Reset after W_hn (``b_hn`` an array, spread): ``hw`` (one
    step laid out as the gates) holds a<t-1> W_hh^T, ``r_in`` takes W_hn a<t-1> + b_hn (at
    ``t*rl[0] + a*rl[1] + ..``), ``bias`` is b_ih + b_hh but b_hn, and a<t> goes to the
    states. Reset before (``b_hn`` None): this is the first half, Γr and z from ``hw``'s r, z
    rows, ``r_in`` takes Γr * a<t-1>; :func:`gru_step_candidate` is the second, after the
    product W_hn (Γr * a<t-1>)."""
    A, B, cs, st, sa = _u(L[0]), _u(L[1]), _u(L[2]), _u(L[3]), _u(L[4])
    zg, ra, t = _u(L[6]), _u(rl[1]), _u(t)
    zg2, st2 = zg + zg, st + st  # unsigned
    z, r_in = z[t * _u(L[5]) + _u(L[8]) :], r_in[t * _u(rl[0]) + cs :]
    hw, bias = hw[_u(L[8]) :], bias[cs:]
    a_prev, a_new = s[t * st + cs :], s[(t + 1) * st + cs :]
    if b_hn is not None:
        bn = b_hn[cs:]
    for a in range(A):
        za_, sa_, ra_ = L[11][a], a * sa, a * ra
        for b in range(B):
            k, u = za_ + b, sa_ + b
            z_r, z_z, z_n = z[k], z[k + zg], z[k + zg2]  # every load before any store
            gamma_r = _sigmoid(z_r + hw[k] + bias[u])  # Γr = σ(W_r [a<t-1>, x<t>] + b_r)
            z_gate = _sigmoid(z_z + hw[k + zg] + bias[u + st])  # z = 1 - Γu
            z[k], z[k + zg] = gamma_r, z_gate
            if b_hn is not None:
                reset_in = hw[k + zg2] + bn[u]  # W_hn a<t-1> + b_hn
                c_tilde = _tanh(z_n + bias[u + st2] + gamma_r * reset_in)
                r_in[ra_ + b], z[k + zg2] = reset_in, c_tilde
                a_new[u] = c_tilde + z_gate * (a_prev[u] - c_tilde)  # Γu*c̃ + (1-Γu)*a<t-1>
            if b_hn is None:
                r_in[ra_ + b] = gamma_r * a_prev[u]  # Γr*a<t-1>, reset before the product


@_jit
def gru_step_candidate(L, t, z, bias, s):
    """The second half of a reset-before GRU step: ``z``'s n row holds W_in x<t> + W_hn (Γr *
    a<t-1>) and becomes c̃ = tanh(. + b_n); a<t> goes to the states."""
    A, B, cs, st, sa = _u(L[0]), _u(L[1]), _u(L[2]), _u(L[3]), _u(L[4])
    zg, t = _u(L[6]), _u(t)
    zg2, st2 = zg + zg, st + st  # unsigned
    z, bias = z[t * _u(L[5]) + _u(L[8]) :], bias[cs:]
    a_prev, a_new = s[t * st + cs :], s[(t + 1) * st + cs :]
    for a in range(A):
        za_, sa_ = L[11][a], a * sa
        for b in range(B):
            k, u = za_ + b, sa_ + b
            c_tilde = _tanh(z[k + zg2] + bias[u + st2])  # c̃ = tanh(W_c [Γr*a, x] + b_c)
            z[k + zg2] = c_tilde
            a_new[u] = c_tilde + z[k + zg] * (a_prev[u] - c_tilde)


@_jit
def gru_step_backward(L, t, z, hw, s, r_in, rl, dhn, dh):
    """One full GRU step backward, before its products: the gates become the gradients of
    their input side, ``dh`` (one step) holds da<t> and takes da<t> * z (the part of da<t-1>
    that bypasses the products). Reset after (``dhn`` an array, laid out as ``r_in``): ``hw``
    takes the hidden side's (Γr, z and n * Γr), ``dhn`` its n row. Reset before (None): this
    is the part after W_hn (dz and dn only); :func:`gru_step_reset_backward` is the rest."""
    A, B, cs, st, sa = _u(L[0]), _u(L[1]), _u(L[2]), _u(L[3]), _u(L[4])
    zg, ra, t = _u(L[6]), _u(rl[1]), _u(t)
    zg2 = zg + zg  # unsigned
    z, hw, dh, a_prev = z[t * _u(L[5]) + _u(L[8]) :], hw[_u(L[8]) :], dh[cs:], s[t * st + cs :]
    r_in = r_in[t * _u(rl[0]) + cs :]
    if dhn is not None:
        dn_r = dhn[t * _u(rl[0]) + cs :]
    for a in range(A):
        za_, sa_, ra_ = L[11][a], a * sa, a * ra
        for b in range(B):
            k, u, da = za_ + b, sa_ + b, dh[sa_ + b]
            gamma_r, z_gate, c_tilde = z[k], z[k + zg], z[k + zg2]
            dn = da * (ONE - z_gate) * (ONE - c_tilde * c_tilde)  # dc̃ = da*Γu, tanh' = 1 - c̃²
            dz = da * (a_prev[u] - c_tilde) * z_gate * (ONE - z_gate)  # σ' = σ(1 - σ)
            z[k + zg], z[k + zg2], dh[u] = dz, dn, da * z_gate
            if dhn is not None:
                dr = dn * r_in[ra_ + b] * gamma_r * (ONE - gamma_r)
                z[k] = dr
                hw[k], hw[k + zg], hw[k + zg2] = dr, dz, dn * gamma_r
                dn_r[ra_ + b] = dn * gamma_r


@_jit
def gru_step_reset_backward(L, t, z, d_reset, s, dh):
    """The rest of a reset-before GRU step backward: ``d_reset`` (one step, laid out as one
    gate of the gates) holds the gradient of Γr * a<t-1>; Γr's row of ``z`` becomes dΓr's
    pre-activation, and da<t-1> takes the part through Γr * a<t-1>."""
    A, B, cs, st, sa, t = _u(L[0]), _u(L[1]), _u(L[2]), _u(L[3]), _u(L[4]), _u(t)
    z, d_reset = z[t * _u(L[5]) + _u(L[8]) :], d_reset[_u(L[8]) :]
    dh, a_prev = dh[cs:], s[t * st + cs :]
    for a in range(A):
        za_, sa_ = L[11][a], a * sa
        for b in range(B):
            k, u = za_ + b, sa_ + b
            gamma_r = z[k]
            z[k] = d_reset[k] * a_prev[u] * gamma_r * (ONE - gamma_r)
            dh[u] += d_reset[k] * gamma_r


@_jit
def gru_forward(L, n1, Z, inputs, w_hh, w_n, S, hw, bias, b_hn, R, rl, keep, out):
    """All steps of the full GRU for the chunk of sequences ``n0 .. n1`` (arguments as for
    :func:`gated_forward`; ``hw`` scratch (N*3H), ``R (T*N, H)`` takes the reset's input,
    ``w_hh`` is W_hh, or with the reset before W_hh's r, z rows and ``w_n`` its n rows)."""
    T, N, n0, H = S.shape[0] - 1, S.shape[1], L[10], S.shape[2]
    s, z, r_in, st = S.reshape(-1), Z.reshape(-1), R.reshape(-1), L[3]
    HW = hw.reshape(N, 3 * H)
    for t in range(T):
        _project_step(inputs, Z, N, t, n0, n1)
        product(w_hh, S[t][n0:n1], HW[n0:n1, : w_hh[0].shape[0]], 0.0)  # a<t-1> W_hh^T
        gru_step_forward(L, t, z, hw, bias, b_hn, s, r_in, rl)
        if b_hn is None:  # reset before: c̃'s product sees Γr * a<t-1>
            n_rows = _block(Z, N, t, n0, n1, 2 * H, 3 * H)
            product(w_n, _block(R, N, t, n0, n1, 0, H), n_rows, 1.0)
            gru_step_candidate(L, t, z, bias, s)
        if keep.size > 0:
            new, prev = s[(t + 1) * st : (t + 2) * st], s[t * st : (t + 1) * st]
            _hold(L, t, new, prev, keep, out[t].reshape(-1))


@_jit
def gru_backward(L, n1, Z, w_hh_t, w_n_t, S, hw, R, rl, dhn, keep, dout, dh, carry):
    """All steps backward of :func:`gru_forward` for its chunk (``w_hh_t``, ``w_n_t`` the
    transposed weights; reset after: ``dhn`` (laid out as R, flat) takes the n row of the
    hidden side's gradient, None with the reset before)."""
    T, N, n0, H = S.shape[0] - 1, S.shape[1], L[10], S.shape[2]
    s, z, r_in, dh_ = S.reshape(-1), Z.reshape(-1), R.reshape(-1), dh.reshape(-1)
    HW = hw.reshape(N, 3 * H)
    for t in range(T - 1, -1, -1):
        _add(L, dh_, dout[t].reshape(-1))
        if keep.size > 0:
            _split_carry(L, t, dh_, keep, carry)
        gru_step_backward(L, t, z, hw, s, r_in, rl, dhn, dh_)
        if dhn is not None:  # reset after: da<t-1> += (the hidden side's gradient) W_hh
            product(w_hh_t, HW[n0:n1], dh[n0:n1], 1.0)
        else:  # through c̃'s product, then Γr and z's
            product(w_n_t, _block(Z, N, t, n0, n1, 2 * H, 3 * H), HW[n0:n1, :H], 0.0)
            gru_step_reset_backward(L, t, z, hw, s, dh_)
            product(w_hh_t, _block(Z, N, t, n0, n1, 0, 2 * H), dh[n0:n1], 1.0)
        if keep.size > 0:
            _add(L, dh_, carry)


@_jit
def add_rows(table, ids, rows):
    """``table[ids[i]] += rows[i]`` for every i in turn, so a row named twice gets both: the
    embedding's gradient (``np.add.at``, 100x faster)."""
    for i in range(ids.shape[0]):
        target = table[ids[i]]
        row = rows[i]
        for j in range(row.shape[0]):
            target[j] += row[j]
