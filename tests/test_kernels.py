"""The compiled kernels' own pieces: their tanh, NaN propagation, the BLAS products they call,
and the switch back to the reference loop.

That the compiled loops compute what the reference computes is held by tests/test_loops.py.
"""

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import rnnkit
from rnnkit import blas, kernels, packed, parallel

needs_compiled = pytest.mark.skipif(not kernels.AVAILABLE, reason="the compiled loop is off")


@needs_compiled
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


@needs_compiled
@pytest.mark.parametrize("cls", [rnnkit.RNN, rnnkit.GRU, rnnkit.LSTM])
def test_a_nan_reaches_the_output_and_the_gradients(cls):
    """Training reports non-finite losses and gradients; the kernels must not hide one."""
    layer = cls(3, 4, rng=0)
    layer.params["bias_ih_l0"][0] = np.nan  # one gate of one unit: a clamp could map it to ±1
    out, _, cache = layer.forward(np.ones((5, 2, 3), dtype=np.float32))
    assert np.isnan(out[0, :, 0]).all() and np.isnan(out[-1]).all()
    dx, _ = layer.backward(np.ones_like(out), cache)
    assert np.isnan(dx).all()


@needs_compiled
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_blas_products_on_the_views_the_loops_pass(dtype):
    """gemm and gemv on blocks of wider matrices, row- and column-major,
    with and without adding into the output (beta), as the compiled loops call them."""

    @kernels.numba.njit
    def call(a, b, c, beta, v, y):
        blas.gemm(a, b, c, beta)
        blas.gemv(a, v, y, beta)

    rng = np.random.default_rng(0)
    for trial in range(60):
        M, N, K = rng.integers(1, 6, size=3)

        def view(rows, cols):  # a block of a wider matrix, or the transpose of one
            if rng.random() < 0.5:
                return rng.normal(size=(rows + 2, cols + 3)).astype(dtype)[
                    1 : 1 + rows, 2 : 2 + cols
                ]
            return rng.normal(size=(cols + 3, rows + 2)).astype(dtype)[2 : 2 + cols, 1 : 1 + rows].T

        a, b, c = view(M, K), view(K, N), view(M, N)
        v, y = rng.normal(size=2 * K).astype(dtype)[::2], rng.normal(size=3 * M).astype(dtype)[::3]
        beta = float(trial % 2)
        want_c, want_y = a @ b + beta * c, a @ v + beta * y
        call(a, b, c, beta, v, y)
        tol = 1e-5 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(c, want_c, rtol=tol, atol=tol)
        np.testing.assert_allclose(y, want_y, rtol=tol, atol=tol)


@pytest.mark.parametrize("total,parts,align", [(37, 2, 16), (32, 2, 16), (5, 3, 1), (3, 4, 8)])
def test_spans_cover_everything_once(total, parts, align):
    spans = parallel.spans(total, parts, align)
    assert spans[0][0] == 0 and spans[-1][1] == total
    assert all(a < b for a, b in spans) and all(s[1] == t[0] for s, t in zip(spans, spans[1:]))
    assert len(spans) <= parts or len(spans) == 1


def test_a_failing_piece_reaches_the_caller():
    parallel.set_num_threads(2)

    def fail():
        raise KeyError("piece 2")

    with pytest.raises(KeyError, match="piece 2"):
        parallel.run([lambda: None, fail, lambda: None])


needs_cores = pytest.mark.skipif(
    parallel._sched_getcpu is None or len(os.sched_getaffinity(0)) < 2,
    reason="needs two cores and Linux's thread placement",
)


@needs_cores
def test_a_helper_woken_on_the_callers_core_moves_off_it_and_may_return():
    caller_affinity = os.sched_getaffinity(0)
    seen = {}

    def helper():
        allowed = os.sched_getaffinity(0)
        start = parallel._cpu()
        parallel._move_off(start)
        seen.update(start=start, now=parallel._cpu(), allowed=os.sched_getaffinity(0) == allowed)

    thread = threading.Thread(target=helper)
    thread.start()
    thread.join()
    assert seen["now"] != seen["start"] and seen["allowed"]
    parallel.set_num_threads(2)
    parallel.run([lambda: None, lambda: None], apart=True)
    assert os.sched_getaffinity(0) == caller_affinity  # the caller's thread is never moved


def test_only_long_pieces_move_helpers(monkeypatch):
    """Short pieces (the demo's) are done sooner where the system put the helper: moving it
    costs two system calls and a migration a run."""
    moved = []
    monkeypatch.setattr(parallel, "_move_off", moved.append)
    parallel.set_num_threads(2)
    parallel.run([lambda: None, lambda: None])
    assert moved == []
    parallel.run([lambda: None, lambda: None], apart=True)
    assert len(moved) == 1


def run_python(code: str, **env: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        check=True,
    )
    return result.stdout.strip()


REFERENCE_MATCHES = (
    "import numpy as np, rnnkit\n"
    "from rnnkit import kernels\n"
    "for cls in (rnnkit.RNN, rnnkit.GRU, rnnkit.LSTM):\n"
    "    layer = cls(3, 4, rng=0, dtype=np.float64)\n"
    "    x = np.random.default_rng(0).normal(size=(5, 3, 3))\n"
    "    out, _, cache = layer.forward(x)\n"
    "    dx, _ = layer.backward(np.ones_like(out), cache)\n"
    "print(kernels.AVAILABLE, out.shape, dx.shape)"
)


def test_the_environment_variable_turns_the_compiled_loop_off():
    assert run_python(REFERENCE_MATCHES, RNNKIT_COMPILED="0") == "False (5, 3, 4) (5, 3, 3)"


def test_without_numba_the_reference_loop_runs():
    code = "import sys; sys.modules['numba'] = None\n" + REFERENCE_MATCHES  # `import numba` fails
    assert run_python(code) == "False (5, 3, 4) (5, 3, 3)"


def test_without_numpys_openblas_the_reference_loop_runs():
    code = "import numpy as np\nnp.show_config = lambda mode=None: {}\n" + REFERENCE_MATCHES
    assert run_python(code, RNNKIT_COMPILED="1") == "False (5, 3, 4) (5, 3, 3)"


@needs_compiled
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


@needs_compiled
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_packed_product_on_every_shape(dtype):
    """rnnkit.packed: c (+)= a W^T with W packed in panels, whole tiles in the kernel and the
    outputs past them by BLAS, on blocks of wider matrices (as the loops pass them)."""
    rng = np.random.default_rng(1)
    for _ in range(80):
        M, K = (int(v) for v in rng.integers(1, 300, size=2))
        J = int(rng.choice([1, 2, 3, 4, 5, 7, 8, 15, 16, 17, 31, 32, 33, 48, 64, 70]))
        w = rng.normal(size=(M, K)).astype(dtype)
        a = rng.normal(size=(J, K + 5)).astype(dtype)[:, 2 : 2 + K]
        c = rng.normal(size=(J, M + 9)).astype(dtype)[:, 3 : 3 + M]
        rows = packed.tile_rows(M, w.itemsize)
        source = np.asfortranarray(w) if J % 2 else w  # packed from column-major too
        panels = packed.pack(source, rows) if rows else np.empty((0, 0, 0), dtype)
        for beta in (0.0, 1.0):
            want = a @ w.T + beta * c
            packed.product(panels, w, a, c, beta)
            tol = 1e-4 * K if dtype == np.float32 else 1e-12 * K
            np.testing.assert_allclose(c, want, rtol=tol, atol=tol)


@needs_compiled
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_packed_panels_are_the_weights_rows_by_columns_from_any_view(dtype):
    """The vector transposes of whole blocks, the columns past them and the views that have
    no contiguous rows all give ``panels[p, k, r] = W[p * rows + r, k]``."""
    rng = np.random.default_rng(2)
    width = packed.WIDTH[np.dtype(dtype).itemsize]
    for M, K in [(64, 16), (130, 37), (256, 128), (48, 5), (80, 300)]:
        base = rng.normal(size=(M + 3, 2 * K + 7)).astype(dtype)
        views = {
            "rows": base[:M, :K],
            "offset": base[1 : M + 1, 3 : K + 3],
            "columns": np.asfortranarray(base[:M, :K]),
            "strided": base[:M, : 2 * K : 2],
        }
        for rows in (width, 4 * width):
            for name, w in views.items():
                want = w[: M // rows * rows].reshape(M // rows, rows, K).transpose(0, 2, 1)
                assert np.array_equal(packed.pack(w, rows), want), (M, K, rows, name)


def test_cached_machine_code_goes_when_a_compiled_module_changes(tmp_path):
    """Numba checks a cached kernel against its own file only: after an edit of packed.py,
    kernels.py's cached kernels (which inline it) must not load."""
    for name in blas.COMPILED_SOURCES:
        (tmp_path / name).write_text(f"# {name}\n")
    cache = tmp_path / "__pycache__"
    cache.mkdir()

    def cached():
        for name in ("kernels.product-1.py311.nbi", "kernels.product-1.py311.1.nbc", "x.pyc"):
            (cache / name).write_text("")

    cached()
    blas.drop_stale_cache(tmp_path)  # no stamp yet: whatever is cached may be stale
    assert sorted(p.name for p in cache.iterdir()) == ["compiled-sources.sha256", "x.pyc"]
    cached()
    blas.drop_stale_cache(tmp_path)  # nothing changed: the cache stays
    assert len(list(cache.glob("*.nb?"))) == 2
    (tmp_path / "packed.py").write_text("# packed.py, edited\n")
    blas.drop_stale_cache(tmp_path)
    assert list(cache.glob("*.nb?")) == [] and (cache / "x.pyc").exists()
