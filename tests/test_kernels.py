"""The optional compiled kernels: their tanh, NaN propagation, NumPy's BLAS inside them, and
the switch back to NumPy.

That they compute what the NumPy steps compute is held by ``tests/test_loops.py``, which runs
every fast loop with and without them.
"""

import subprocess
import sys

import numpy as np
import pytest

import rnnkit
from rnnkit import kernels

needs_numba = pytest.mark.skipif(kernels.numba is None, reason="Numba is not installed")
TOLERANCE = {np.float32: 1e-5, np.float64: 1e-10}


@needs_numba
def test_float32_tanh_is_within_a_few_ulp_of_numpy():
    @kernels.numba.njit(fastmath=kernels._FLAGS, error_model="numpy")
    def tanh(x, out):
        for i in range(x.size):
            out[i] = kernels._tanh(x[i])

    x = np.concatenate(
        [np.linspace(-20, 20, 400_001), np.geomspace(1e-30, 1e-3, 1000), [np.inf, -np.inf]]
    ).astype(np.float32)
    x = np.concatenate([x, -x])
    got = np.empty_like(x)
    tanh(x, got)
    np.testing.assert_allclose(got, np.tanh(x), rtol=1e-6, atol=5e-7)
    tanh(np.array([np.nan], dtype=np.float32), got[:1])
    assert np.isnan(got[0])  # fast-math must not assume NaNs away


@needs_numba
@pytest.mark.parametrize("cls", [rnnkit.RNN, rnnkit.GRU, rnnkit.LSTM])
def test_a_nan_reaches_the_output_and_the_gradients(cls, monkeypatch):
    """Training reports non-finite losses and gradients; the kernels must not hide one."""
    monkeypatch.setattr(kernels, "AVAILABLE", True)
    layer = cls(3, 4, rng=0)
    layer.params["bias_ih_l0"][0] = np.nan  # one gate of one unit: a clamp could map it to ±1
    out, _, cache = layer.forward(np.ones((5, 2, 3), dtype=np.float32))
    assert np.isnan(out[0, :, 0]).all() and np.isnan(out[-1]).all()
    dx, _ = layer.backward(np.ones_like(out), cache)
    assert np.isnan(dx).all()


def run_python(code: str, **env: str) -> str:
    import os

    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        check=True,
    )
    return result.stdout.strip()


def test_the_environment_variable_turns_the_kernels_off():
    code = "from rnnkit import kernels; print(kernels.AVAILABLE)"
    assert run_python(code, RNNKIT_COMPILED="0") == "False"


def test_without_numba_the_numpy_path_runs():
    code = (
        "import sys; sys.modules['numba'] = None\n"  # makes `import numba` fail
        "import numpy as np, rnnkit\n"
        "from rnnkit import kernels\n"
        "layer = rnnkit.LSTM(3, 4, rng=0)\n"
        "out, _, cache = layer.forward(np.ones((5, 8, 3)))\n"
        "dx, _ = layer.backward(np.ones_like(out), cache)\n"
        "print(kernels.AVAILABLE, out.shape, dx.shape)"
    )
    assert run_python(code) == "False (5, 8, 4) (5, 8, 3)"


@needs_numba
def test_without_a_writable_cache_the_kernels_still_compile():
    """Numba refuses ``cache=True`` when no folder it may write to exists (a read-only install
    and home); rnnkit must then compile in each process, not fail to import."""
    code = (
        "import numba\n"
        "real = numba.njit\n"
        "def njit(*args, **options):\n"
        "    if options.get('cache'):\n"
        "        raise RuntimeError('cannot cache function: no locator available')\n"
        "    return real(*args, **options)\n"
        "numba.njit = njit\n"
        "import numpy as np, rnnkit\n"
        "from rnnkit import kernels\n"
        "layer = rnnkit.GRU(3, 4, rng=0)\n"
        "out, _, cache = layer.forward(np.ones((5, 2, 3)))\n"
        "print(kernels.AVAILABLE, np.isfinite(out).all())"
    )
    assert run_python(code, RNNKIT_COMPILED="1") == "True True"


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpy_blas_products_inside_the_kernels(dtype):
    """The products the compiled loops call (NumPy's own BLAS when found), on the operands they
    get: a matrix times a vector, a matrix times a block of columns of a wider matrix (also
    added to such a block), and a transposed copy."""
    if not kernels.BLAS:
        pytest.skip("NumPy's OpenBLAS was not found; the loops use their own product")

    @kernels.numba.njit
    def products(w, v, wide, out_v, out_m, out_t, into):
        kernels._mat_vec(w, v, out_v)
        kernels._mat_mat(w, wide[:, 3:5], out_m)  # columns 3 and 4: rows 7 apart
        kernels._transpose(w, out_t)
        kernels._mat_mat_add(w, wide[:, 3:5], into[:, 1:3])

    rng = np.random.default_rng(0)
    w, v, wide = rng.normal(size=(6, 4)), rng.normal(size=4), rng.normal(size=(4, 7))
    w, v, wide = w.astype(dtype), v.astype(dtype), wide.astype(dtype)
    out_v, out_m = np.empty(6, dtype=dtype), np.empty((6, 2), dtype=dtype)
    out_t = np.empty((4, 6), dtype=dtype)
    into = rng.normal(size=(6, 5)).astype(dtype)
    expected_into = into.copy()
    expected_into[:, 1:3] += w @ wide[:, 3:5]
    products(w, v, wide, out_v, out_m, out_t, into)
    tol = TOLERANCE[dtype]
    np.testing.assert_allclose(out_v, w @ v, rtol=tol, atol=tol)
    np.testing.assert_allclose(out_m, w @ wide[:, 3:5], rtol=tol, atol=tol)
    np.testing.assert_array_equal(out_t, w.T)
    np.testing.assert_allclose(into, expected_into, rtol=tol, atol=tol)


@needs_numba
def test_without_numpys_blas_the_compiled_loops_use_their_own():
    """Where NumPy's OpenBLAS is not found (another build of NumPy), BLAS is off, its names
    point at stubs, and every loop still runs and matches the reference."""
    code = (
        "import numpy as np\n"
        "np.show_config = lambda mode=None: {}\n"  # as a NumPy built against another BLAS
        "import rnnkit\n"
        "from rnnkit import kernels\n"
        "worst = 0.0\n"
        "for cls in (rnnkit.RNN, rnnkit.GRU, rnnkit.LSTM):\n"
        "    for N in (1, 3):\n"
        "        layer = cls(3, 4, rng=0, dtype=np.float64)\n"
        "        x = np.random.default_rng(0).normal(size=(5, N, 3))\n"
        "        runs = []\n"
        "        for backend in ('fast', 'reference'):\n"
        "            layer.backend = backend\n"
        "            out, _, cache = layer.forward(x)\n"
        "            dx, _ = layer.backward(np.ones_like(out), cache)\n"
        "            runs.append((out, dx))\n"
        "        worst = max(worst, *(abs(a - b).max() for a, b in zip(*runs)))\n"
        "print(kernels.AVAILABLE, kernels.BLAS, worst < 1e-10)"
    )
    assert run_python(code, RNNKIT_COMPILED="1") == "True False True"


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N,peephole", [(1, False), (3, False), (3, True)])
def test_lstm_step_with_the_product_already_in_the_gates(dtype, N, peephole):
    """An empty ``zt`` means W_aa a<t-1> was added to the gates by the loop's product (as the
    compiled loop over several sequences does): both step functions then give what the NumPy
    step gives with ``zt`` apart."""
    from rnnkit.loops import lstm_forward_step

    H, T, t = 4, 2, 1
    rng = np.random.default_rng(0)
    rows, stride, step = (1, H, 4 * H) if N == 1 else (H, T * N, N)  # LSTMColumnLoop's layout

    def normal(*shape):
        return rng.normal(size=shape).astype(dtype)

    z, zt, bias = normal(4 * H * T * N), normal(4 * H * N), normal(4 * H * N)
    states = [normal(T + 1, H * N), normal(T + 1, H * N), normal(T, H * N)]  # c, h, tanh c
    peep = normal(3 * H * N) if peephole else np.empty(0, dtype)
    none = np.empty((T, 0), dtype)
    z_added = z.copy()  # the block of step t with W_aa a<t-1> added
    block = z_added.reshape(4 * H, -1) if N > 1 else z_added.reshape(T, 4 * H)
    if N > 1:
        block[:, t * N : (t + 1) * N] += zt.reshape(4 * H, N)
    else:
        block[t] += zt

    def run(step_function, zt, z):
        z, c, h, tanh_c = z.copy(), *(s.copy() for s in states)
        step_function(zt, z, rows, t * step, stride, c, h, tanh_c, none, peep, bias, none, t)
        return z, c, h, tanh_c

    expected = run(lstm_forward_step, zt, z)
    tol = TOLERANCE[dtype]
    for step_function in (lstm_forward_step, kernels.lstm_forward_step):
        for got, want in zip(run(step_function, np.empty(0, dtype), z_added), expected):
            np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("relu", [False, True])
def test_rnn_step_with_the_product_already_in_z(dtype, relu):
    """``hw`` of width 0 means W_aa a<t-1> was added to z by the loop's product: the step then
    gives what it gives with the product apart."""
    rng = np.random.default_rng(1)
    z, hw = rng.normal(size=(3, 4)).astype(dtype), rng.normal(size=(3, 4)).astype(dtype)
    bias, h_prev = rng.normal(size=4).astype(dtype), rng.normal(size=(3, 4)).astype(dtype)
    empty, none = np.empty((0, 0), dtype), np.empty(0, dtype)
    runs = []
    for z_in, hw_in in ((z.copy(), hw), (z + hw, np.empty((3, 0), dtype))):
        h = np.empty_like(h_prev)
        kernels.rnn_forward_step(z_in, hw_in, bias, h_prev, h, empty, none, relu)
        runs.append((z_in, h))
    for got, want in zip(*runs):
        np.testing.assert_allclose(got, want, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])
    np.testing.assert_allclose(
        runs[0][1],
        np.maximum(z + hw + bias, 0) if relu else np.tanh(z + hw + bias),
        rtol=1e-5,
        atol=1e-6,
    )
