"""The compiled loop against the reference loop over the cells, for every variant, and the
buffers and threads around it (rnnkit.loops, rnnkit.parallel)."""

import itertools
import threading

import numpy as np
import pytest

import rnnkit
from rnnkit import blas, kernels, loops, packed, parallel

D, H = 5, 6
VARIANTS = {
    "rnn_tanh": lambda **kw: rnnkit.RNN(D, H, **kw),
    "rnn_relu": lambda **kw: rnnkit.RNN(D, H, nonlinearity="relu", **kw),
    "gru": lambda **kw: rnnkit.GRU(D, H, **kw),
    "gru_reset_before": lambda **kw: rnnkit.GRU(D, H, reset_after=False, **kw),
    "gru_simple": lambda **kw: rnnkit.GRU(D, H, simplified=True, **kw),
    "lstm": lambda **kw: rnnkit.LSTM(D, H, **kw),
    "lstm_peephole": lambda **kw: rnnkit.LSTM(D, H, peephole=True, **kw),
    "lstm_gers": lambda **kw: rnnkit.LSTM(D, H, peephole="gers", **kw),
    "lstm_proj": lambda **kw: rnnkit.LSTM(D, H, proj_size=4, **kw),
}
TOLERANCE = {np.float32: 1e-5, np.float64: 1e-10}
needs_compiled = pytest.mark.skipif(not kernels.AVAILABLE, reason="the compiled loop is off")
EVERY_STACK = pytest.mark.parametrize(  # depths, directions, with and without lengths
    "num_layers,direction,with_lengths",
    list(itertools.product([1, 2], ["forward", "bidirectional", "reverse"], [False, True])),
)


@pytest.fixture
def in_chunks(monkeypatch):
    """Every batch of 2 or more sequences split into chunks on two threads, however small."""
    monkeypatch.setattr(loops, "_PIECE", 1)
    monkeypatch.setattr(parallel, "_MATMUL_PART", 1)
    threads = parallel.num_threads()
    parallel.set_num_threads(2)
    yield
    parallel.set_num_threads(threads)


def run(layer, backend, x, state, lengths, dout, dfinal):
    layer.backend = backend
    layer.zero_grad()
    out, final, cache = layer.forward(x, state, lengths)
    dx, dstate = layer.backward(dout, cache, dfinal)
    return out, final, dx, dstate, {k: v.copy() for k, v in layer.grads.items()}


def flat(value):
    return list(value) if isinstance(value, tuple) else [value]


def random_state(layer, N, rng, dtype):
    k = layer.num_layers * layer.num_directions
    h = rng.normal(size=(k, N, layer.output_size)).astype(dtype)
    return (h, rng.normal(size=(k, N, H)).astype(dtype)) if layer.mode == "lstm" else h


def assert_same_run(compiled, ref, tol):
    """Outputs, final states, input and state gradients, every parameter gradient."""
    for a, b in zip(
        [compiled[0], *flat(compiled[1]), compiled[2], *flat(compiled[3])],
        [ref[0], *flat(ref[1]), ref[2], *flat(ref[3])],
    ):
        assert a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
    for name in ref[4]:
        np.testing.assert_allclose(
            compiled[4][name], ref[4][name], rtol=tol, atol=tol, err_msg=name
        )


@needs_compiled
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N", [1, 4, 37])  # 37: two chunks of unequal width
@pytest.mark.parametrize("variant", VARIANTS)
@EVERY_STACK
def test_compiled_equals_reference(
    in_chunks, variant, dtype, num_layers, direction, with_lengths, N
):
    rng = np.random.default_rng(0)
    T = 7
    kw = {"bidirectional": direction == "bidirectional", "reverse": direction == "reverse"}
    layer = VARIANTS[variant](num_layers=num_layers, rng=1, dtype=dtype, **kw)
    x = rng.normal(size=(T, N, D)).astype(dtype)
    state, dfinal = random_state(layer, N, rng, dtype), random_state(layer, N, rng, dtype)
    lengths = np.resize([T, 3, 5, 1], N) if with_lengths else None
    dout = rng.normal(size=(T, N, layer.output_size * layer.num_directions)).astype(dtype)
    compiled = run(layer, "fast", x, state, lengths, dout, dfinal)
    ref = run(layer, "reference", x, state, lengths, dout, dfinal)
    assert_same_run(compiled, ref, TOLERANCE[dtype])


@pytest.mark.parametrize("backend", ["fast", "reference"])
@pytest.mark.parametrize("V", [3, 400])  # fewer rows than the input's (projected), more
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("variant", VARIANTS)
@EVERY_STACK
def test_rows_of_a_table_equal_the_dense_input(
    in_chunks, variant, dtype, V, backend, num_layers, direction, with_lengths
):
    """An embedding's rows as TableRows: the same outputs and gradients as the vectors
    themselves, and the table's gradient the input's summed by id."""
    rng = np.random.default_rng(0)
    T, N = 7, 37
    kw = {"bidirectional": direction == "bidirectional", "reverse": direction == "reverse"}
    layer = VARIANTS[variant](num_layers=num_layers, rng=1, dtype=dtype, **kw)
    table = rng.normal(size=(V, D)).astype(dtype)
    ids = rng.integers(0, V, size=(T, N))
    state, dfinal = random_state(layer, N, rng, dtype), random_state(layer, N, rng, dtype)
    lengths = np.resize([T, 3, 5, 1], N) if with_lengths else None
    dout = rng.normal(size=(T, N, layer.output_size * layer.num_directions)).astype(dtype)
    dense = run(layer, backend, table[ids], state, lengths, dout, dfinal)
    rows = run(layer, backend, loops.TableRows(table, ids), state, lengths, dout, dfinal)
    dtable = np.zeros_like(table)
    np.add.at(dtable, ids.reshape(-1), dense[2].reshape(-1, D))
    assert_same_run(rows, (*dense[:2], dtable, *dense[3:]), TOLERANCE[dtype])


def test_rows_of_a_table_batch_first_and_bad_ids():
    rng = np.random.default_rng(0)
    layer = rnnkit.LSTM(D, H, batch_first=True, rng=1)
    table = rng.normal(size=(9, D)).astype(np.float32)
    ids = rng.integers(0, 9, size=(4, 6))  # (N, T)
    out, _, _ = layer.forward(table[ids])
    np.testing.assert_allclose(layer.forward(loops.TableRows(table, ids))[0], out, atol=1e-6)
    bad = ids.copy()
    bad[1, 2] = 9
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 9\), got 0 to 9"):
        layer.forward(loops.TableRows(table, bad))
    with pytest.raises(ValueError, match="ids must be 2-D integers"):
        layer.forward(loops.TableRows(table, np.zeros((4, 6))))
    with pytest.raises(ValueError, match=r"\(V, input_size=5\) of float32, got \(9, 5\)"):
        layer.forward(loops.TableRows(table.astype(np.float64), ids))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N", [4, 37])  # one sequence runs as in evaluation mode
@pytest.mark.parametrize("variant", VARIANTS)
@EVERY_STACK
def test_inference_mode_equals_reference(
    in_chunks, variant, dtype, num_layers, direction, with_lengths, N
):
    """Under inference_mode (T >= 8: the compiled loop projects step by step into one step's
    gates), the outputs and final states of every variant are the reference's."""
    rng = np.random.default_rng(3)
    T = 9
    kw = {"bidirectional": direction == "bidirectional", "reverse": direction == "reverse"}
    layer = VARIANTS[variant](num_layers=num_layers, rng=1, dtype=dtype, **kw).eval()
    x = rng.normal(size=(T, N, D)).astype(dtype)
    state = random_state(layer, N, rng, dtype)
    lengths = np.resize([T, 3, 5, 1], N) if with_lengths else None
    layer.backend = "reference"
    want = layer.forward(x, state, lengths)
    layer.backend = "fast"
    for _ in range(2):  # the second call reuses the layer's buffers
        with rnnkit.inference_mode():
            got = layer.forward(x, state, lengths)
        assert got[2].inference and got[2].steps == []  # the mask alone
        for a, b in zip([got[0], *flat(got[1])], [want[0], *flat(want[1])]):
            assert a.dtype == b.dtype
            np.testing.assert_allclose(a, b, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])


@needs_compiled
@pytest.mark.parametrize("cell", [rnnkit.RNN, rnnkit.GRU, rnnkit.LSTM])
def test_inference_mode_keeps_one_steps_gates(cell):
    """What makes inference mode fast: the gates buffer holds one step, not all T (16 units:
    enough rows for the packed weights the step-by-step projection needs)."""
    layer = cell(D, 16, rng=1)
    T, N, key = 20, 32, ("gates", np.dtype(np.float32))
    x = np.random.default_rng(0).normal(size=(T, N, D)).astype(np.float32)
    with rnnkit.inference_mode():
        out = layer.forward(x)[0]
    (gates,) = layer._workspaces[(0, 0)]._free[key]
    assert gates.size == N * layer.cell_params(0, 0).w_ih.shape[0]
    layer.eval().forward(x)  # every step's, for a backward pass
    assert max(g.size for g in layer._workspaces[(0, 0)]._free[key]) == T * gates.size
    layer.backend = "reference"
    np.testing.assert_allclose(out, layer.forward(x)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", ["lstm", "gru"])
@pytest.mark.parametrize("backend", ["fast", "reference"])
def test_a_forward_pass_in_inference_mode_serves_no_backward_pass(variant, backend):
    layer = VARIANTS[variant](rng=0)
    layer.backend = backend
    with rnnkit.inference_mode():
        with rnnkit.inference_mode():  # nested blocks
            pass
        out, _, cache = layer.forward(np.ones((9, 4, D)))
    assert cache.inference
    with pytest.raises(ValueError, match=r"ran under rnnkit.inference_mode\(\).*outside it"):
        layer.backward(np.ones_like(out), cache)
    out, _, cache = layer.forward(np.ones((9, 4, D)))  # outside the block: gradients again
    layer.backward(np.ones_like(out), cache)


def test_inference_mode_is_this_threads_only():
    seen = []
    with rnnkit.inference_mode():
        thread = threading.Thread(target=lambda: seen.append(rnnkit.module.is_inference_mode()))
        thread.start()
        thread.join()
        assert rnnkit.module.is_inference_mode()
    assert seen == [False] and not rnnkit.module.is_inference_mode()


@needs_compiled
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("variant", VARIANTS)
def test_one_long_sequence_projected_by_packed_weights(in_chunks, variant, dtype):
    """One chunk with NumPy's BLAS held to one thread: the input projection of all steps is
    rnnkit's packed product (enough rows for its tiles), not BLAS's."""
    rng = np.random.default_rng(2)
    T = 40
    layer = VARIANTS[variant](rng=1, dtype=dtype)
    x = rng.normal(size=(T, 1, D)).astype(dtype)
    state, dfinal = random_state(layer, 1, rng, dtype), random_state(layer, 1, rng, dtype)
    dout = rng.normal(size=(T, 1, layer.output_size)).astype(dtype)
    compiled = run(layer, "fast", x, state, None, dout, dfinal)
    ref = run(layer, "reference", x, state, None, dout, dfinal)
    assert_same_run(compiled, ref, TOLERANCE[dtype])


@needs_compiled
def test_one_sequence_steps_with_packed_weights_where_blas_has_one_thread(monkeypatch):
    """One sequence's step products read W_hh (forward) and W_hh^T (backward) packed where
    NumPy's BLAS runs on one thread; where it has two, BLAS's matrix-vector product reads W
    on both cores."""
    shapes = []
    real_pack = packed.pack
    monkeypatch.setattr(
        packed, "pack", lambda w, rows: shapes.append(w.shape) or real_pack(w, rows)
    )
    threads, blas_threads = parallel.num_threads(), blas.threads()
    layer = rnnkit.LSTM(D, 16, dtype=np.float32)  # W_hh (64, 16)
    x = np.ones((40, 1, D), dtype=np.float32)
    try:
        for rnnkit_threads, on_blas, packed_too in [(2, 1, True), (1, 2, False)]:
            parallel.set_num_threads(rnnkit_threads)
            shapes.clear()
            with parallel.region():
                blas.set_threads(on_blas)
                out, _, cache = layer.forward(x)
                layer.backward(np.ones_like(out), cache)
            assert ((64, 16) in shapes and (16, 64) in shapes) == packed_too, shapes
    finally:
        parallel.set_num_threads(threads)
        blas.set_threads(blas_threads)


@needs_compiled
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("N", [1, 4])
def test_compiled_from_zero_state_without_biases(variant, N):
    rng = np.random.default_rng(0)
    layer = VARIANTS[variant](bias=False, rng=1, dtype=np.float64)
    x = rng.normal(size=(7, N, D))
    dout = rng.normal(size=(7, N, layer.output_size))
    assert_same_run(
        run(layer, "fast", x, None, None, dout, None),
        run(layer, "reference", x, None, None, dout, None),
        1e-10,
    )


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_compiled_cache_serves_one_backward_pass(variant):
    layer = VARIANTS[variant](rng=0)
    out, _, cache = layer.forward(np.ones((3, 2, D)))
    layer.backward(np.ones_like(out), cache)
    if kernels.AVAILABLE:
        with pytest.raises(ValueError, match="already used by a backward pass.*run forward again"):
            layer.backward(np.ones_like(out), cache)
    layer.backend = "reference"
    out, _, cache = layer.forward(np.ones((3, 2, D)))
    layer.backward(np.ones_like(out), cache)
    layer.backward(np.ones_like(out), cache)  # the reference keeps its caches intact


def test_unknown_backend():
    layer = rnnkit.GRU(D, H)
    layer.backend = "gpu"
    with pytest.raises(ValueError, match="backend must be 'fast' or 'reference', got 'gpu'"):
        layer.forward(np.ones((3, 2, D)))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("N", [1, 4])
def test_kept_buffers_never_alias_live_ones(variant, N):
    """A layer keeps its buffers from one backward pass for its next call: two forward passes
    before their backward passes, of sequences of different lengths, must still match the
    reference, and an output handed out earlier must not change."""
    rng = np.random.default_rng(0)
    layer = VARIANTS[variant](num_layers=2, bidirectional=True, rng=1)
    kept = []
    for T in (7, 4, 9):
        x = [rng.normal(size=(T, N, D)).astype(np.float32) for _ in range(2)]
        dout = rng.normal(size=(T, N, 2 * layer.output_size)).astype(np.float32)
        runs = [layer.forward(xi) for xi in x]  # both forwards, then both backwards
        kept.append((runs[0][0], runs[0][0].copy()))
        got = [layer.backward(dout, r[2])[0] for r in runs]
        layer.backend = "reference"
        for xi, g in zip(x, got):
            want = layer.backward(dout, layer.forward(xi)[2])[0]
            np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-5)
        layer.backend = "fast"
    for out, copy in kept:
        np.testing.assert_array_equal(out, copy)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("N", [1, 4])
@pytest.mark.parametrize("training", [True, False])
def test_forward_only_buffers_never_alias_outputs(variant, N, training):
    """Forward passes alone, their caches dropped at once (in evaluation mode their buffers
    then go back to the layer): what was handed out before must not change."""
    rng = np.random.default_rng(0)
    layer = VARIANTS[variant](num_layers=2, rng=1).train(training)
    xs = [rng.normal(size=(7, N, D)).astype(np.float32) for _ in range(4)]
    kept = []
    for x in xs:
        out, final, _ = layer.forward(x)  # the cache is dropped at once
        kept.append([(a, a.copy()) for a in (out, *flat(final))])
    layer.backend = "reference"
    for x, got in zip(xs, kept):
        out, final, _ = layer.forward(x)
        for (a, copy), want in zip(got, (out, *flat(final))):
            np.testing.assert_array_equal(a, copy)
            np.testing.assert_allclose(a, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_backward_in_evaluation_mode(variant):
    """In evaluation mode a cache gives its buffers back when dropped unused; one used by a
    backward pass must not (it gives them back itself), and the gradients must hold."""
    rng = np.random.default_rng(0)
    layer = VARIANTS[variant](num_layers=2, rng=1, dtype=np.float64).eval()
    x, dout = rng.normal(size=(7, 4, D)), rng.normal(size=(7, 4, layer.output_size))
    for _ in range(2):
        layer.forward(x)  # dropped unused: its buffers go back
        compiled = run(layer, "fast", x, None, None, dout, None)
    assert_same_run(compiled, run(layer, "reference", x, None, None, dout, None), 1e-10)


@needs_compiled
@pytest.mark.parametrize("variant", ["lstm", "gru", "rnn_tanh"])
def test_layers_in_threads_of_their_own(in_chunks, variant):
    """Two layers, and one layer, used from two threads at once: each call gets the numbers it
    gets alone (no buffer, BLAS setting or pool is shared in a way that mixes them)."""
    rng = np.random.default_rng(0)
    layers = [VARIANTS[variant](num_layers=2, rng=k, dtype=np.float64) for k in (1, 2)]
    shared = VARIANTS[variant](rng=3, dtype=np.float64)
    inputs = [rng.normal(size=(T, 40, D)) for T in (9, 5)]
    douts = [rng.normal(size=(x.shape[0], 40, layers[0].output_size)) for x in inputs]

    def alone(layer, x, dout):
        layer.backend = "reference"
        result = run(layer, "reference", x, None, None, dout, None)
        layer.backend = "fast"
        return result

    want = [alone(layer, x, d) for layer, x, d in zip(layers, inputs, douts)]
    want_shared = [alone(shared, x, d)[:4] for x, d in zip(inputs, douts)]
    got, errors = {}, []

    def work(k):
        try:
            for _ in range(5):
                got[k] = run(layers[k], "fast", inputs[k], None, None, douts[k], None)
                out, _, cache = shared.forward(inputs[k])
                dx, _ = shared.backward(douts[k], cache)
                np.testing.assert_allclose(out, want_shared[k][0], atol=1e-10)
                np.testing.assert_allclose(dx, want_shared[k][2], atol=1e-10)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for k in (0, 1):
        assert_same_run(got[k], want[k], 1e-10)


@needs_compiled
def test_products_on_blass_own_threads_run_one_at_a_time(monkeypatch):
    """One sequence with large weights leaves NumPy's BLAS its threads; two of rnnkit's
    threads each running a product on them put four threads on two cores (a backward pass
    at H = 512 took 20 to 35 ms instead of 10)."""
    seen = []
    real_run = parallel.run

    def run(pieces, apart=False):
        seen.append((len(pieces), blas.threads()))
        real_run(pieces, apart)

    monkeypatch.setattr(parallel, "run", run)
    threads, blas_threads = parallel.num_threads(), blas.threads()
    parallel.set_num_threads(2)
    blas.set_threads(2)
    try:
        layer = rnnkit.LSTM(D, 260, dtype=np.float32)  # W_hh of 1040 x 260: past 2^18
        out, _, cache = layer.forward(np.ones((20, 1, D), dtype=np.float32))
        layer.backward(np.ones_like(out), cache)
        assert blas.threads() == 2
    finally:
        parallel.set_num_threads(threads)
        blas.set_threads(blas_threads)
    assert all(threads == 1 for pieces, threads in seen if pieces > 1), seen


@needs_compiled
def test_numpys_blas_setting_comes_back_after_a_call():
    """Inside a layer's call NumPy's BLAS runs on one thread; the caller's setting returns."""
    seen = []
    blas.set_threads(2)
    real_product = kernels.product
    try:  # the products over all steps, called from Python
        kernels.product = lambda *args: (seen.append(blas.threads()), real_product(*args))
        layer = rnnkit.LSTM(D, 64)
        out, _, cache = layer.forward(np.ones((50, 64, D)))
        layer.backward(np.ones_like(out), cache)
    finally:
        kernels.product = real_product
    assert seen and set(seen) == {1}
    assert blas.threads() == 2
