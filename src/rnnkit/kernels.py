"""Compiled gate arithmetic for the fast loops: one call per time step instead of a dozen.

Optional: it needs Numba (``pip install 'rnnkit[fast]'``); without it, or with the environment
variable ``RNNKIT_COMPILED=0``, :data:`AVAILABLE` is False and the fast loops keep their NumPy
code. Each kernel does, element by element, what the NumPy code of its step in
:mod:`rnnkit.loops` does with whole arrays (same buffers, same layout), so the loops only swap
the step body. The ``*_sequence_*`` kernels run the whole time loop, products included, in
one call: with NumPy's own BLAS where it is found (:data:`BLAS`), for any batch; without it,
for one sequence with small weights, with a product of their own.

In float32, tanh is a rational approximation (max error 3e-7 against NumPy's) written so that
the compiler vectorises it; NumPy's own ``np.tanh`` is vectorised, Numba's ``math.tanh`` is
not, and that was the difference between winning and losing to NumPy. float64 uses
``math.tanh``. Fast-math flags exclude "no NaNs / no infinities": a NaN must still reach the
loss, where training reports it. ``error_model="numpy"``: Numba's default checks every division
for zero, and that check alone stops the vectorisation. For the same reason a branch that
depends on the element (a mask) runs in a loop of its own.
"""

from __future__ import annotations

import ctypes
import math
import os

import numpy as np

from . import blas

try:
    import numba
    from numba import types
    from numba.extending import overload
except ImportError:  # the pure NumPy path stays whole
    numba = None

AVAILABLE = numba is not None and os.environ.get("RNNKIT_COMPILED", "1") != "0"

ONE, HALF = np.float32(1.0), np.float32(0.5)  # exact in both widths: no float64 promotion


def _tanh(x):
    """tanh of a scalar, inside the kernels (dispatches on the width below)."""
    return math.tanh(x)


if numba is not None:
    _FLAGS = {"contract", "arcp", "reassoc", "nsz", "afn"}  # no "nnan", "ninf"

    def _jit(function):
        options = {"fastmath": _FLAGS, "error_model": "numpy", "nogil": True}
        try:  # compiled once, then loaded from Numba's on-disk cache
            return numba.njit(cache=True, **options)(function)
        except RuntimeError:  # nowhere writable to keep that cache: compile in each process
            return numba.njit(**options)(function)

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
        num *= v
        return num / den

    def _tanh64(x):
        return math.tanh(x)

    @overload(_tanh, jit_options={"fastmath": _FLAGS})
    def _tanh_by_width(x):
        if isinstance(x, types.Float) and x.bitwidth == 32:
            return _tanh32
        return _tanh64

else:

    def _jit(function):
        return function


# ---------------------------------------------------------------- LSTM, one step of columns

# The gate buffer's offsets are unsigned: with signed ones Numba guards every index against a
# negative value, and that guard alone stopped the vectorisation of the strided rows (10x).
_u = numba.uint64 if numba is not None else int


@_jit
def lstm_forward_step(zt, z, rows, start, stride, c_all, h_all, tanh_c_all, out_all, peep, bias,
                      keep_all, t):  # fmt: skip
    """Compiled twin of :func:`rnnkit.loops.lstm_forward_step` (same arguments)."""
    c_prev, h_prev, c, h = c_all[t], h_all[t], c_all[t + 1], h_all[t + 1]
    tanh_c, out, keep = tanh_c_all[t], out_all[t], keep_all[t]
    HN, rows, start, stride = _u(c_prev.size), _u(rows), _u(start), _u(stride)
    width = HN // rows
    # Offsets of the four gates, in (4, H, N) and in z; all unsigned (mixed with signed ones
    # Numba would compute in float64).
    g1, g2, g3 = HN, HN + HN, HN + HN + HN
    z1 = rows * stride  # from one gate's rows in z to the next's
    z2, z3 = z1 + z1, z1 + z1 + z1
    has_peep, has_mask, has_zt = peep.size > 0, keep.size > 0, zt.size > 0
    for i in range(rows):
        row = start + i * stride
        for n in range(width):
            k, r = i * width + n, row + n  # k: the element in (H, N); r: its place in z
            z_i, z_f, z_g, z_o = z[r], z[z1 + r], z[z2 + r], z[z3 + r]
            if has_zt:  # W_aa a<t-1>, unless the loop's product added it to z already
                z_i, z_f = z_i + zt[k], z_f + zt[g1 + k]
                z_g, z_o = z_g + zt[g2 + k], z_o + zt[g3 + k]
            z_i, z_f = z_i + bias[k], z_f + bias[g1 + k]
            z_g, z_o = z_g + bias[g2 + k], z_o + bias[g3 + k]
            if has_peep:
                z_i += peep[k] * c_prev[k]
                z_f += peep[g1 + k] * c_prev[k]
                z_o += peep[g2 + k] * c_prev[k]
            gamma_u = HALF + HALF * _tanh(HALF * z_i)  # σ(x) = (1 + tanh(x/2)) / 2
            gamma_f = HALF + HALF * _tanh(HALF * z_f)
            c_tilde = _tanh(z_g)
            gamma_o = HALF + HALF * _tanh(HALF * z_o)
            c[k] = gamma_f * c_prev[k] + gamma_u * c_tilde  # c<t> = Γf*c<t-1> + Γu*c̃<t>
            tanh_c[k] = _tanh(c[k])
            h[k] = gamma_o * tanh_c[k]  # a<t> = Γo*tanh(c<t>)
            z[r], z[z1 + r], z[z2 + r], z[z3 + r] = gamma_u, gamma_f, c_tilde, gamma_o
    if has_mask:  # a loop of its own: a branch in the loop above stops its vectorisation
        for k in range(HN):
            out[k] = h[k] * keep[k]
            if not keep[k] > 0:  # a finished sequence keeps its state
                c[k], h[k] = c_prev[k], h_prev[k]


@_jit
def lstm_backward_step(z, rows, start, stride, c_all, tanh_c_all, dh, dc, carry, peep, keep_all,
                       t):  # fmt: skip
    """Compiled twin of :func:`rnnkit.loops.lstm_backward_step` (same arguments)."""
    c_prev, tanh_c, keep = c_all[t], tanh_c_all[t], keep_all[t]
    HN, rows, start, stride = _u(c_prev.size), _u(rows), _u(start), _u(stride)
    width = HN // rows
    g1, g2 = HN, HN + HN  # peephole offsets, as in lstm_forward_step
    z1 = rows * stride
    z2, z3 = z1 + z1, z1 + z1 + z1
    has_peep, has_mask = peep.size > 0, keep.size > 0
    if has_mask:  # loops of their own: a branch in the loop below made it 5x slower
        for k in range(HN):  # a finished sequence passes its gradients straight through
            carry[0, k], carry[1, k] = dh[k] * (ONE - keep[k]), dc[k] * (ONE - keep[k])
            dh[k], dc[k] = dh[k] * keep[k], dc[k] * keep[k]
    for i in range(rows):
        row = start + i * stride
        for n in range(width):
            k, r = i * width + n, row + n
            da, dc_t = dh[k], dc[k]
            gamma_u, gamma_f, c_tilde, gamma_o = z[r], z[z1 + r], z[z2 + r], z[z3 + r]
            dc_t += da * gamma_o * (ONE - tanh_c[k] * tanh_c[k])  # through a<t> = Γo*tanh(c<t>)
            dz_i = dc_t * c_tilde * gamma_u * (ONE - gamma_u)  # σ' = σ(1 - σ)
            dz_f = dc_t * c_prev[k] * gamma_f * (ONE - gamma_f)
            dz_g = dc_t * gamma_u * (ONE - c_tilde * c_tilde)  # tanh' = 1 - tanh²
            dz_o = da * tanh_c[k] * gamma_o * (ONE - gamma_o)
            dc_prev = dc_t * gamma_f  # dc<t-1> = dc<t> * Γf
            if has_peep:
                dc_prev += dz_i * peep[k] + dz_f * peep[g1 + k] + dz_o * peep[g2 + k]
            dc[k] = dc_prev
            z[r], z[z1 + r], z[z2 + r], z[z3 + r] = dz_i, dz_f, dz_g, dz_o
    if has_mask:
        for k in range(HN):
            dc[k] += carry[1, k]


# ---------------------------------------------------------------- GRU (reset after), rows
# Each gate of a row is a slice of its own: with the three read and written through one array
# at offsets H apart, the compiler could not tell them apart and left the loop scalar (8x).


@_jit
def gru_forward_step(gates, hw, b_x, b_hn, h_prev, h, reset_in, out, keep):
    """One step of :class:`rnnkit.loops.GRULoop` (reset after W_hn) after its product.

    gates (N, 3H) holds the step's input projection W_x x<t>, hw (N, 3H) W_hh a<t-1>; b_x (3H,)
    is the bias outside the reset (b_ir + b_hr, b_iz + b_hz, b_in), b_hn (H,) the one inside.
    The gates become Γr, z (= 1 - Γu), c̃.
    Writes a<t> to ``h`` and W_hn a<t-1> + b_hn to ``reset_in``. With a mask ``keep`` (N,),
    ``out`` takes the masked output; both are empty otherwise.
    """
    N, H = h_prev.shape
    b_r, b_z, b_n = b_x[:H], b_x[H : 2 * H], b_x[2 * H :]
    for i in range(N):
        g, w, a_prev, a, r_in = gates[i], hw[i], h_prev[i], h[i], reset_in[i]
        g_r, g_z, g_n = g[:H], g[H : 2 * H], g[2 * H :]
        w_r, w_z, w_n = w[:H], w[H : 2 * H], w[2 * H :]
        for j in range(H):
            gamma_r = HALF + HALF * _tanh(HALF * (g_r[j] + w_r[j] + b_r[j]))  # σ via tanh
            z = HALF + HALF * _tanh(HALF * (g_z[j] + w_z[j] + b_z[j]))
            r_in[j] = w_n[j] + b_hn[j]  # W_hn a<t-1> + b_hn
            c_tilde = _tanh(g_n[j] + b_n[j] + gamma_r * r_in[j])
            g_r[j], g_z[j], g_n[j] = gamma_r, z, c_tilde
            a[j] = c_tilde + z * (a_prev[j] - c_tilde)  # a<t> = c̃ + z*(a<t-1> - c̃)
    if keep.size > 0:  # a loop of its own, as in lstm_forward_step
        for i in range(N):
            out[i] = h[i] * keep[i]
            if not keep[i] > 0:  # a finished sequence keeps its state
                h[i] = h_prev[i]


@_jit
def gru_backward_step(gates, h_prev, reset_in, d_out, dh, d_hidden, dhn, dh_direct, keep):
    """One step backward of the GRU (reset after), before the product ``d_hidden @ W_hh``.

    Reads the gates from ``gates`` (N, 3H) and replaces them by the gradients of their input
    side; da<t> is ``dh + d_out``. Writes the gradient of the hidden side ``W_hh a<t-1> +
    b_hh`` (N, 3H) to ``d_hidden``, its n block also to ``dhn`` (N, H) (its Γr and z blocks
    are those of the input side), and the rest of da<t-1> (through z*a<t-1>, and what a
    finished sequence carries) to ``dh_direct``.
    """
    N, H = h_prev.shape
    for i in range(N):
        m = keep[i] if keep.size > 0 else ONE  # the sequence's mask value
        g, dhid, a_prev, r_in = gates[i], d_hidden[i], h_prev[i], reset_in[i]
        dh_i, d_out_i, direct, dhn_i = dh[i], d_out[i], dh_direct[i], dhn[i]
        g_r, g_z, g_n = g[:H], g[H : 2 * H], g[2 * H :]
        d_r, d_z, d_n = dhid[:H], dhid[H : 2 * H], dhid[2 * H :]
        for j in range(H):
            da = (dh_i[j] + d_out_i[j]) * m
            gamma_r, z, c_tilde = g_r[j], g_z[j], g_n[j]
            dn = da * (ONE - z) * (ONE - c_tilde * c_tilde)  # dc̃ = da*Γu, tanh' = 1 - c̃²
            dr = dn * r_in[j] * gamma_r * (ONE - gamma_r)  # σ' = σ(1 - σ)
            dz = da * (a_prev[j] - c_tilde) * z * (ONE - z)
            g_r[j], g_z[j], g_n[j] = dr, dz, dn
            d_r[j], d_z[j], d_n[j] = dr, dz, dn * gamma_r
            dhn_i[j] = dn * gamma_r
            direct[j] = da * z + dh_i[j] * (ONE - m)  # through z*a<t-1>, and what is carried


# ---------------------------------------------------------------- vanilla RNN, rows


@_jit
def rnn_forward_step(z, hw, bias, h_prev, h, out, keep, relu):
    """One step of :class:`rnnkit.loops.RNNLoop` after its product: a<t> = g(z + hw + b).

    z (N, H) holds the step's input projection and becomes a<t>, also written to ``h``; hw
    (N, H) is W_aa a<t-1>, or (N, 0) where the loop's product added it to z already; bias (H,)
    b_ih + b_hh. With a mask ``keep`` (N,), ``out`` takes the masked output and finished
    sequences keep a<t-1> in ``h``; both are empty otherwise.
    """
    has_hw = hw.shape[1] > 0
    for i in range(h.shape[0]):
        z_i, hw_i, a = z[i], hw[i], h[i]
        for j in range(a.size):
            v = (z_i[j] + hw_i[j] if has_hw else z_i[j]) + bias[j]
            z_i[j] = a[j] = (v if v > 0 else v - v) if relu else _tanh(v)  # v - v: zero, same width
    if keep.size > 0:  # a loop of its own, as in lstm_forward_step
        for i in range(h.shape[0]):
            out[i] = h[i] * keep[i]
            if not keep[i] > 0:
                h[i] = h_prev[i]


@_jit
def _rnn_span_backward(a, d_out, dh, carry, m, relu):
    """:func:`rnn_backward_step` over flat spans with one mask value ``m``."""
    for j in range(a.size):
        da = (dh[j] + d_out[j]) * m
        carry[j] = dh[j] * (ONE - m)
        a[j] = (da if a[j] > 0 else da - da) if relu else da * (ONE - a[j] * a[j])  # g'


@_jit
def rnn_backward_step(a, d_out, dh, carry, keep, relu):
    """One step backward of the RNN, before the product ``dz @ W_aa``: the activations ``a``
    (N, H) become dz; what a finished sequence carries to a<t-1> goes to ``carry``."""
    if keep.size == 0:
        flat = (a.reshape(a.size), d_out.reshape(a.size), dh.reshape(a.size))
        _rnn_span_backward(*flat, carry.reshape(a.size), ONE, relu)
        return
    for i in range(a.shape[0]):
        _rnn_span_backward(a[i], d_out[i], dh[i], carry[i], keep[i], relu)


# ---------------------------------------------------------------- NumPy's own BLAS
# The loops over all steps below call the products (gemv, gemm) of NumPy's own OpenBLAS
# (:mod:`rnnkit.blas`), without the Python around each call. The functions are bound under
# names of ours, so that Numba's on-disk cache does not hold an address; where the library is
# not found, those names point at stubs that are never called (BLAS is False).


def _cblas_signature(name: str) -> list:
    """The C argument types of a CBLAS function: enums, sizes, then scalars and pointers."""
    real = ctypes.c_float if name[0] == "s" else ctypes.c_double
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    if name.endswith("gemv"):  # order, trans, M, N, alpha, A, lda, x, incx, beta, y, incy
        return [ctypes.c_int] * 2 + [i64] * 2 + [real, ptr, i64, ptr, i64, real, ptr, i64]
    if name.endswith("omatcopy"):  # order, trans, rows, cols, alpha, A, lda, B, ldb
        return [ctypes.c_int] * 2 + [i64] * 2 + [real, ptr, i64, ptr, i64]
    # gemm: order, trans A, trans B, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc
    return [ctypes.c_int] * 3 + [i64] * 3 + [real, ptr, i64, ptr, i64, real, ptr, i64]


def _bind_cblas() -> bool:
    """Binds ``rnnkit_sgemv`` and the others for the compiled code; True if to NumPy's."""
    library = blas.library() if AVAILABLE else None
    for name in blas.PRODUCTS:
        if library is not None:
            function = getattr(library, f"scipy_cblas_{name}64_")
        else:
            function = ctypes.CFUNCTYPE(None, *_cblas_signature(name))(lambda *args: None)
            _STUBS.append(function)  # kept alive while the process runs
        llvm.add_symbol(f"rnnkit_{name}", ctypes.cast(function, ctypes.c_void_p).value)
    return library is not None


_STUBS: list = []
BLAS = False  # whether the loops over all steps may use NumPy's BLAS (see above)

if numba is not None:
    from llvmlite import binding as llvm

    BLAS = _bind_cblas()
    _ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112  # CBLAS's enums
    _NUMBA_TYPES = {
        ctypes.c_int: types.intc,
        ctypes.c_int64: types.int64,
        ctypes.c_float: types.float32,
        ctypes.c_double: types.float64,
        ctypes.c_void_p: types.voidptr,
    }
    _sgemv, _dgemv, _sgemm, _dgemm, _somatcopy, _domatcopy = (
        types.ExternalFunction(
            f"rnnkit_{name}", types.void(*(_NUMBA_TYPES[c] for c in _cblas_signature(name)))
        )
        for name in blas.PRODUCTS
    )


def _mat_vec(w, v, out):
    """``out = w @ v`` by NumPy's BLAS, inside the kernels (dispatches on the width below)."""
    return np.matmul(w, v, out=out)


def _mat_mat(a, b, out):
    """``out = a @ b`` by NumPy's BLAS, inside the kernels; rows may be apart (views of
    columns), elements of a row must be adjacent."""
    return np.matmul(a, b, out=out)


def _mat_mat_add(a, b, out):
    """``out += a @ b`` by NumPy's BLAS, inside the kernels (operands as for :func:`_mat_mat`)."""
    out += a @ b


def _transpose(a, out):
    """``out = a.T`` by NumPy's BLAS (omatcopy), inside the kernels: 2x to 2.5x NumPy's
    transposed copy of a layer's whole output."""
    out[...] = a.T


if numba is not None:

    def _scalars(array_type):
        if array_type.dtype.bitwidth == 32:
            return np.float32(1), np.float32(0)
        return 1.0, 0.0

    @overload(_mat_vec)
    def _mat_vec_by_width(w, v, out):
        gemv = _sgemv if w.dtype.bitwidth == 32 else _dgemv
        one, zero = _scalars(w)

        def call(w, v, out):
            rows, cols = w.shape
            size = w.itemsize  # strides are in bytes, BLAS counts elements
            ld_w, inc_v, inc_o = w.strides[0] // size, v.strides[0] // size, out.strides[0] // size
            gemv(_ROW_MAJOR, _NO_TRANS, rows, cols, one, w.ctypes, ld_w, v.ctypes, inc_v, zero,
                 out.ctypes, inc_o)  # fmt: skip

        return call

    def _gemm(a, add: bool):
        """The compiled ``out = a @ b`` (``out += a @ b`` with ``add``) in a's width."""
        gemm = _sgemm if a.dtype.bitwidth == 32 else _dgemm
        one, zero = _scalars(a)
        beta = one if add else zero

        def call(a, b, out):
            rows, inner = a.shape
            cols, size = b.shape[1], a.itemsize
            ld_a, ld_b, ld_o = a.strides[0] // size, b.strides[0] // size, out.strides[0] // size
            gemm(_ROW_MAJOR, _NO_TRANS, _NO_TRANS, rows, cols, inner, one, a.ctypes, ld_a,
                 b.ctypes, ld_b, beta, out.ctypes, ld_o)  # fmt: skip

        return call

    @overload(_mat_mat)
    def _mat_mat_by_width(a, b, out):
        return _gemm(a, add=False)

    @overload(_mat_mat_add)
    def _mat_mat_add_by_width(a, b, out):
        return _gemm(a, add=True)

    @overload(_transpose)
    def _transpose_by_width(a, out):
        omatcopy = _somatcopy if a.dtype.bitwidth == 32 else _domatcopy
        one = _scalars(a)[0]

        def call(a, out):
            rows, cols = a.shape
            ld_a, ld_o = a.strides[0] // a.itemsize, out.strides[0] // out.itemsize
            omatcopy(_ROW_MAJOR, _TRANS, rows, cols, one, a.ctypes, ld_a, out.ctypes, ld_o)

        return call


# ---------------------------------------------------------------- all steps in one call
# A step is a product and the gate arithmetic; with one sequence at H = 128 that is ~2 us of
# work, and the Python around them (a product call, a kernel call, slicing) cost as much again,
# a few us a step at any size. These run the whole time loop compiled, calling the step kernels
# above. Their products are NumPy's BLAS (``blas``), or for one sequence with weights up to
# 1 MiB, a product of their own, as fast as BLAS's there (:func:`rnnkit.loops._loop_product`).
#
# Each product multiplies the states by a matrix P (W_aa forward, W_aa^T backward); ``w`` is P
# or P^T, whichever is the faster operand of that product: P for BLAS's vector product (one
# sequence) and for columns of states (the LSTM), P^T for rows of states (the RNN and the GRU,
# ``a<t-1> @ P^T``) and for the own product (``_vec_mat``).


@_jit
def _vec_mat(v, m, out):
    """``out = v @ m`` for ``v (K,)`` and ``m (K, M)``: rows of ``m`` added up, the form that
    vectorises (a dot product per output would end each in a horizontal sum)."""
    for k in range(out.size):
        out[k] = 0
    for j in range(v.size):
        v_j, row = v[j], m[j]
        for k in range(out.size):
            out[k] += v_j * row[k]


@_jit
def _vector_product(w, v, out, blas):
    """``out = P v`` for one sequence: ``w`` is P with ``blas``, else P^T."""
    if blas:
        _mat_vec(w, v, out)
    else:
        _vec_mat(v, w, out)


@_jit
def _row_product(w, h, out, blas):
    """``out = h P^T`` for the rows of ``h (N, K)``: ``w`` is P for one row with ``blas``,
    else P^T."""
    if blas and h.shape[0] > 1:
        _mat_mat(h, w, out)
    else:
        for i in range(h.shape[0]):
            _vector_product(w, h[i], out[i], blas)


@_jit
def rnn_sequence_forward(z, w, bias, h_all, out, keep, relu, blas):
    """All steps of :class:`rnnkit.loops.RNNLoop`: :func:`rnn_forward_step` after the product
    for each t. ``z, out (T, N, H)``, ``h_all (T+1, N, H)``, ``keep (T, N)``; without a mask
    ``out`` is ``(T, 0, 0)`` and ``keep (T, 0)``; ``w`` as above."""
    N, H = h_all.shape[1:]
    in_place = blas and N > 1  # the product adds W_aa a<t-1> to the step's z (1.0x-1.1x)
    hw = np.empty((N, 0 if in_place else H), dtype=z.dtype)
    for t in range(z.shape[0]):
        if in_place:
            _mat_mat_add(h_all[t], w, z[t])
        else:
            _row_product(w, h_all[t], hw, blas)  # W_aa a<t-1>
        rnn_forward_step(z[t], hw, bias, h_all[t], h_all[t + 1], out[t], keep[t], relu)


@_jit
def rnn_sequence_backward(a, dout, w, dh, keep, relu, blas):
    """All steps backward of :func:`rnn_sequence_forward`; ``dh (N, H)`` takes da<0>."""
    carry = np.empty_like(dh)
    for t in range(a.shape[0] - 1, -1, -1):
        rnn_backward_step(a[t], dout[t], dh, carry, keep[t], relu)
        _row_product(w, a[t], dh, blas)  # da<t-1> = W_aa^T dz
        if keep.shape[1] > 0:
            dh += carry


@_jit
def gru_sequence_forward(gates, w, b_x, b_hn, h_all, reset_in, out, keep, blas):
    """All steps of :func:`gru_forward_step` (shapes and ``w`` as for
    :func:`rnn_sequence_forward`, with W_hh)."""
    hw = np.empty_like(gates[0])
    for t in range(gates.shape[0]):
        _row_product(w, h_all[t], hw, blas)
        gru_forward_step(gates[t], hw, b_x, b_hn, h_all[t], h_all[t + 1], reset_in[t], out[t],
                         keep[t])  # fmt: skip


@_jit
def gru_sequence_backward(gates, h_all, reset_in, dout, dh, dhn, w, keep, blas):
    """All steps backward of :func:`gru_sequence_forward`; ``dh (N, H)`` takes da<0>, ``dhn
    (T, N, H)`` the n block of each step's hidden-side gradient."""
    dh_direct, d_hidden = np.empty_like(dh), np.empty_like(gates[0])
    for t in range(gates.shape[0] - 1, -1, -1):
        gru_backward_step(gates[t], h_all[t], reset_in[t], dout[t], dh, d_hidden, dhn[t],
                          dh_direct, keep[t])  # fmt: skip
        _row_product(w, d_hidden, dh, blas)  # da<t-1> through the hidden side
        dh += dh_direct


@_jit
def lstm_sequence_forward(w, N, z, rows, stride, step, c_all, h_all, tanh_c_all, out_all, peep,
                          bias, keep_all, output, blas):  # fmt: skip
    """All steps of :func:`lstm_forward_step` for ``N`` sequences (its arguments; step t's
    gates start at ``t * step`` in ``z``), after the product ``W_aa a<t-1>`` for each t (``w``
    as above); each step's output, a column per sequence, goes transposed to ``output[t]``
    (N, H), while it is in cache."""
    if N > 1 and not blas:
        raise ValueError("the compiled loop over several sequences needs NumPy's BLAS")
    H = c_all.shape[1] // N
    zt = np.empty(4 * H if N == 1 else 0, dtype=z.dtype)  # W_aa a<t-1> for one sequence
    gates = z.reshape(4 * H, z.size // (4 * H))  # as (4H, T*N), for N > 1
    for t in range(tanh_c_all.shape[0]):
        if N == 1:
            _vector_product(w, h_all[t], zt, blas)
        else:  # added to the step's gates where they are: no (4H, N) buffer between (1.04-1.08x)
            _mat_mat_add(w, h_all[t].reshape(H, N), gates[:, t * N : (t + 1) * N])
        lstm_forward_step(zt, z, rows, t * step, stride, c_all, h_all, tanh_c_all, out_all, peep,
                          bias, keep_all, t)  # fmt: skip
        cols = out_all[t] if out_all.shape[1] > 0 else h_all[t + 1]  # masked, or a<t>
        if blas:
            _transpose(cols.reshape(H, N), output[t])
        else:  # one sequence: a copy
            for i in range(H):
                for n in range(N):
                    output[t, n, i] = cols[i * N + n]


@_jit
def lstm_sequence_backward(w, N, z, rows, stride, step, c_all, tanh_c_all, dout, dh, dc, carry,
                           peep, keep_all, blas):  # fmt: skip
    """All steps backward of :func:`lstm_sequence_forward`: ``dout (T, N, H)``, ``dh, dc (HN,)``
    (columns, flat) take da<0>, dc<0>; the other arguments as in :func:`lstm_backward_step`."""
    if N > 1 and not blas:
        raise ValueError("the compiled loop over several sequences needs NumPy's BLAS")
    H = c_all.shape[1] // N
    dz = z.reshape(4 * H, z.size // (4 * H))  # the gates as (4H, T*N), for N > 1
    dout_t = np.empty(H * N, dtype=dh.dtype)
    for t in range(tanh_c_all.shape[0] - 1, -1, -1):
        if N > 1:  # da<t>: columns from the output's rows, by BLAS (2.5x an element loop)
            _transpose(dout[t], dout_t.reshape(H, N))
            dh += dout_t
        else:
            dh += dout[t, 0]
        lstm_backward_step(z, rows, t * step, stride, c_all, tanh_c_all, dh, dc, carry, peep,
                           keep_all, t)  # fmt: skip
        if N == 1:  # da<t-1> = W_aa^T dz
            _vector_product(w, z[t * step : t * step + 4 * H], dh, blas)
        else:
            _mat_mat(w, dz[:, t * N : (t + 1) * N], dh.reshape(H, N))
        if carry.shape[1] > 0:
            dh += carry[0]
