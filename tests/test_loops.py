"""The fast time loops against the reference loop over the cells, for every variant."""

import itertools

import numpy as np
import pytest

import rnnkit

D, H = 5, 6
VARIANTS = {
    "rnn_tanh": lambda **kw: rnnkit.RNN(D, H, **kw),
    "rnn_relu": lambda **kw: rnnkit.RNN(D, H, nonlinearity="relu", **kw),
    "gru": lambda **kw: rnnkit.GRU(D, H, **kw),
    "gru_reset_before": lambda **kw: rnnkit.GRU(D, H, reset_after=False, **kw),
    "gru_simple": lambda **kw: rnnkit.GRU(D, H, simplified=True, **kw),
    "lstm": lambda **kw: rnnkit.LSTM(D, H, **kw),
    "lstm_peephole": lambda **kw: rnnkit.LSTM(D, H, peephole=True, **kw),
}
TOLERANCE = {np.float32: 1e-5, np.float64: 1e-10}


def run(layer, backend, x, state, lengths, dout, dfinal):
    layer.backend = backend
    layer.zero_grad()
    out, final, cache = layer.forward(x, state, lengths)
    dx, dstate = layer.backward(dout, cache, dfinal)
    return out, final, dx, dstate, {k: v.copy() for k, v in layer.grads.items()}


def flat(value):
    return list(value) if isinstance(value, tuple) else [value]


def assert_same_run(fast, ref, tol=1e-10):
    """Outputs, input and state gradients, and parameter gradients of two ``run`` results
    (started from a zero state, so without the final state's gradient) agree."""
    for a, b in zip([fast[0], fast[2], *flat(fast[3])], [ref[0], ref[2], *flat(ref[3])]):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
    for name in ref[4]:
        np.testing.assert_allclose(fast[4][name], ref[4][name], rtol=tol, atol=tol, err_msg=name)


@pytest.fixture(params=["numpy", "compiled", "compiled, own product"])
def step_code(request, monkeypatch):
    """Each fast loop with its NumPy step, and with the compiled kernels when Numba is
    installed (``rnnkit[fast]``): their loops over one sequence with NumPy's BLAS where it is
    found, and with their own product, as where it is not."""
    if request.param != "numpy" and rnnkit.kernels.numba is None:
        pytest.skip("Numba is not installed")
    monkeypatch.setattr(rnnkit.kernels, "AVAILABLE", request.param != "numpy")
    if request.param == "compiled, own product":
        monkeypatch.setattr(rnnkit.kernels, "BLAS", False)
    return request.param


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "variant,N",  # without Numba the LSTM runs in rows at N = 2 (H = 6), in columns from N = 4;
    # one sequence takes paths of its own (transposed views, one product for the projection)
    [(v, n) for n in (4, 1) for v in VARIANTS] + [("lstm", 2), ("lstm_peephole", 2)],
)
@pytest.mark.parametrize(
    "num_layers,bidirectional,with_lengths",
    list(itertools.product([1, 2], [False, True], [False, True])),
)
def test_fast_loop_equals_reference(
    step_code, variant, dtype, num_layers, bidirectional, with_lengths, N
):
    rng = np.random.default_rng(0)
    T = 7
    layer = VARIANTS[variant](
        num_layers=num_layers, bidirectional=bidirectional, rng=1, dtype=dtype
    )
    k = num_layers * (2 if bidirectional else 1)
    x = rng.normal(size=(T, N, D)).astype(dtype)
    state = rng.normal(size=(k, N, H)).astype(dtype)
    dfinal = rng.normal(size=(k, N, H)).astype(dtype)
    if layer.mode == "lstm":
        state = (state, rng.normal(size=(k, N, H)).astype(dtype))
        dfinal = (dfinal, rng.normal(size=(k, N, H)).astype(dtype))
    lengths = np.resize([T, 3, 5, 1], N) if with_lengths else None
    dout = rng.normal(size=(T, N, H * (2 if bidirectional else 1))).astype(dtype)
    fast = run(layer, "fast", x, state, lengths, dout, dfinal)
    ref = run(layer, "reference", x, state, lengths, dout, dfinal)
    tol = TOLERANCE[dtype]
    for a, b in zip(
        [fast[0], *flat(fast[1]), fast[2], *flat(fast[3])],
        [ref[0], *flat(ref[1]), ref[2], *flat(ref[3])],
    ):
        assert a.dtype == dtype
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
    for name in ref[4]:
        np.testing.assert_allclose(fast[4][name], ref[4][name], rtol=tol, atol=tol, err_msg=name)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("N", [1, 4])
def test_fast_loop_from_zero_state(step_code, variant, N):
    """No initial state (zeros): the paths that skip the h0 terms of the weight gradients."""
    rng = np.random.default_rng(0)
    layer = VARIANTS[variant](rng=1, dtype=np.float64)
    x = rng.normal(size=(7, N, D))
    dout = rng.normal(size=(7, N, H))
    fast = run(layer, "fast", x, None, None, dout, None)
    ref = run(layer, "reference", x, None, None, dout, None)
    assert_same_run(fast, ref)


@pytest.mark.parametrize("variant", VARIANTS)
def test_fast_cache_serves_one_backward_pass(step_code, variant):
    layer = VARIANTS[variant](rng=0)
    out, _, cache = layer.forward(np.ones((3, 2, D)))
    layer.backward(np.ones_like(out), cache)
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
def test_kept_buffers_never_alias_live_ones(step_code, variant, N):
    """The fast loops keep their internal buffers from one backward pass for the next call of
    the same shape: two layers of one shape, their passes interleaved, must still match the
    reference, and an output handed out earlier must not change."""
    rng = np.random.default_rng(0)
    layers = [VARIANTS[variant](num_layers=2, bidirectional=True, rng=k) for k in (1, 2)]
    x = [rng.normal(size=(7, N, D)).astype(np.float32) for _ in range(3)]
    dout = rng.normal(size=(7, N, 2 * H)).astype(np.float32)
    kept = []
    for step in range(3):
        runs = [layer.forward(x[step]) for layer in layers]  # both forwards, then both backwards
        kept.append((runs[0][0], runs[0][0].copy()))
        fast = [layer.backward(dout, run[2])[0] for layer, run in zip(layers, runs)]
        for layer, got in zip(layers, fast):
            layer.backend = "reference"
            out, _, cache = layer.forward(x[step])
            want = layer.backward(dout, cache)[0]
            layer.backend = "fast"
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for out, copy in kept:
        np.testing.assert_array_equal(out, copy)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("N", [1, 4])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("training", [True, False])
def test_forward_only_buffers_never_alias_outputs(step_code, variant, N, num_layers, training):
    """Forward passes alone (inference), their caches dropped at once (in evaluation mode their
    buffers then go back to the pool): outputs and final states handed out before must not
    change with later calls, and every call must still match the reference."""
    rng = np.random.default_rng(0)
    layer = VARIANTS[variant](num_layers=num_layers, rng=1)
    layer.train(training)
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
@pytest.mark.parametrize("N", [1, 4])
def test_backward_in_evaluation_mode(step_code, variant, N):
    """In evaluation mode a cache gives its buffers back when dropped unused; one used by a
    backward pass must not, and the gradients must match the reference. Forward passes
    dropped unused in between exercise the pool."""
    rng = np.random.default_rng(0)
    layer = VARIANTS[variant](num_layers=2, rng=1, dtype=np.float64).eval()
    x = rng.normal(size=(7, N, D))
    dout = rng.normal(size=(7, N, H))
    for _ in range(2):
        layer.forward(x)  # dropped unused: its buffers go back
        fast = run(layer, "fast", x, None, None, dout, None)
    ref = run(layer, "reference", x, None, None, dout, None)
    assert_same_run(fast, ref)


@pytest.mark.parametrize("cls,hidden", [(rnnkit.RNN, 520), (rnnkit.GRU, 300), (rnnkit.LSTM, 260)])
def test_one_sequence_with_weights_past_1_mib(step_code, cls, hidden):
    """One sequence runs its own product up to 1 MiB of recurrent weights in float32 and
    NumPy's BLAS beyond (where found): the layer sizes here are just past that."""
    rng = np.random.default_rng(0)
    layer = cls(3, hidden, rng=1, dtype=np.float64)
    x, dout = rng.normal(size=(4, 1, 3)), rng.normal(size=(4, 1, hidden))
    assert_same_run(
        run(layer, "fast", x, None, None, dout, None),
        run(layer, "reference", x, None, None, dout, None),
    )
