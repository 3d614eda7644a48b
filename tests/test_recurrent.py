"""The sequence layers against their own definition: a loop over the cell."""

import numpy as np
import pytest

import rnnkit
from rnnkit import cells

T, N, D, H = 6, 3, 4, 5

VARIANTS = {
    "rnn_tanh": lambda **kw: rnnkit.RNN(D, H, **kw),
    "rnn_relu": lambda **kw: rnnkit.RNN(D, H, nonlinearity="relu", **kw),
    "gru": lambda **kw: rnnkit.GRU(D, H, **kw),
    "gru_reset_before": lambda **kw: rnnkit.GRU(D, H, reset_after=False, **kw),
    "gru_simple": lambda **kw: rnnkit.GRU(D, H, simplified=True, **kw),
    "lstm": lambda **kw: rnnkit.LSTM(D, H, **kw),
    "lstm_peephole": lambda **kw: rnnkit.LSTM(D, H, peephole=True, **kw),
    "lstm_gers": lambda **kw: rnnkit.LSTM(D, H, peephole="gers", **kw),
    "lstm_proj": lambda **kw: rnnkit.LSTM(D, H, proj_size=3, **kw),
}


def cell_loop(layer, x, state):
    """The layer written out by hand: one cell call per step, nothing batched."""
    p = layer.cell_params(0, 0)
    a = state[0][0] if isinstance(state, tuple) else state[0]
    c = state[1][0] if isinstance(state, tuple) else None
    outs = []
    for t in range(x.shape[0]):
        if layer.mode == "lstm":
            a, c, _ = cells.lstm_cell_forward(x[t], a, c, p, gers=layer.peephole == "gers")
        elif layer.mode.startswith("rnn"):
            a, _ = cells.rnn_cell_forward(x[t], a, p, layer.nonlinearity)
        elif layer.mode == "gru_simple":
            a, _ = cells.simple_gru_cell_forward(x[t], a, p)
        else:
            a, _ = cells.gru_cell_forward(x[t], a, p, layer.reset_after)
        outs.append(a)
    return np.stack(outs), a, c


def random_state(layer, rng, n=N):
    shape = (layer.num_layers * layer.num_directions, n, layer.output_size)
    if layer.mode == "lstm":
        return rng.normal(size=shape), rng.normal(size=shape[:2] + (H,))
    return rng.normal(size=shape)


def run_loss(layer, x, state, lengths, rng):
    """Forward, then backward with random upstream gradients; returns all results."""
    out, final, cache = layer.forward(x, state, lengths)
    dout = rng.normal(size=out.shape)
    layer.zero_grad()
    dx, dstate = layer.backward(dout, cache)
    return out, final, dx, dstate, {k: v.copy() for k, v in layer.grads.items()}


@pytest.mark.parametrize("variant", VARIANTS)
def test_layer_equals_loop_over_cell(variant):
    rng = np.random.default_rng(0)
    layer = VARIANTS[variant](rng=1, dtype=np.float64)
    x = rng.normal(size=(T, N, D))
    state = random_state(layer, rng)
    out, final, _ = layer.forward(x, state)
    ref_out, ref_a, ref_c = cell_loop(layer, x, state)
    np.testing.assert_allclose(out, ref_out, rtol=0, atol=1e-13)
    if layer.mode == "lstm":
        np.testing.assert_allclose(final[0][0], ref_a, atol=1e-13)
        np.testing.assert_allclose(final[1][0], ref_c, atol=1e-13)
    else:
        np.testing.assert_allclose(final[0], ref_a, atol=1e-13)


@pytest.mark.parametrize("variant", VARIANTS)
def test_layer_backward_equals_loop_over_cell_backward(variant):
    """BPTT by hand with the whole-cell backward functions gives the layer's gradients."""
    rng = np.random.default_rng(1)
    layer = VARIANTS[variant](rng=2, dtype=np.float64)
    p = layer.cell_params(0, 0)
    x = rng.normal(size=(T, N, D))
    state = random_state(layer, rng)
    out, final, cache = layer.forward(x, state)
    dout = rng.normal(size=out.shape)
    layer.zero_grad()
    dx, _ = layer.backward(dout, cache)

    a = state[0][0] if layer.mode == "lstm" else state[0]
    c = state[1][0] if layer.mode == "lstm" else None
    step_caches = []
    for t in range(T):
        if layer.mode == "lstm":
            a, c, sc = cells.lstm_cell_forward(x[t], a, c, p, gers=layer.peephole == "gers")
        elif layer.mode.startswith("rnn"):
            a, sc = cells.rnn_cell_forward(x[t], a, p, layer.nonlinearity)
        elif layer.mode == "gru_simple":
            a, sc = cells.simple_gru_cell_forward(x[t], a, p)
        else:
            a, sc = cells.gru_cell_forward(x[t], a, p, layer.reset_after)
        step_caches.append(sc)
    da, dc = np.zeros((N, layer.output_size)), np.zeros((N, H))
    total: dict[str, np.ndarray] = {}
    ref_dx = np.zeros_like(x)
    for t in reversed(range(T)):
        if layer.mode == "lstm":
            ref_dx[t], da, dc, g = cells.lstm_cell_backward(da + dout[t], dc, step_caches[t], p)
        elif layer.mode.startswith("rnn"):
            ref_dx[t], da, g = cells.rnn_cell_backward(
                da + dout[t], step_caches[t], p, layer.nonlinearity
            )
        elif layer.mode == "gru_simple":
            ref_dx[t], da, g = cells.simple_gru_cell_backward(da + dout[t], step_caches[t], p)
        else:
            ref_dx[t], da, g = cells.gru_cell_backward(da + dout[t], step_caches[t], p)
        for k, v in g.items():
            total[k] = total.get(k, 0) + v
    np.testing.assert_allclose(dx, ref_dx, atol=1e-12)
    names = {"w_ih": "weight_ih_l0", "w_hh": "weight_hh_l0", "b_ih": "bias_ih_l0"}
    names |= {"b_hh": "bias_hh_l0", "w_peep": "weight_peephole_l0", "w_hr": "weight_hr_l0"}
    assert {names[k] for k in total} == set(layer.grads)
    for k, v in total.items():
        np.testing.assert_allclose(layer.grads[names[k]], v, atol=1e-12)


@pytest.mark.parametrize("variant", VARIANTS)
def test_reverse_direction_is_forward_on_flipped_sequence(variant):
    rng = np.random.default_rng(2)
    bi = VARIANTS[variant](bidirectional=True, rng=3, dtype=np.float64)
    fwd = VARIANTS[variant](rng=4, dtype=np.float64)
    rev = VARIANTS[variant](rng=5, dtype=np.float64)
    sd = bi.state_dict()
    fwd.load_state_dict({k: v for k, v in sd.items() if not k.endswith("_reverse")})
    rev.load_state_dict({k[: -len("_reverse")]: v for k, v in sd.items() if "_reverse" in k})
    x = rng.normal(size=(T, N, D))
    out, final, _ = bi.forward(x)
    out_f, final_f, _ = fwd.forward(x)
    out_r, final_r, _ = rev.forward(x[::-1])
    P = bi.output_size
    np.testing.assert_allclose(out[..., :P], out_f, atol=1e-13)
    np.testing.assert_allclose(out[..., P:], out_r[::-1], atol=1e-13)
    h, h_f, h_r = (s[0] if isinstance(s, tuple) else s for s in (final, final_f, final_r))
    np.testing.assert_allclose(h[1], h_r[0], atol=1e-13)
    np.testing.assert_allclose(h[0], h_f[0], atol=1e-13)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("num_layers", [1, 2])
def test_reverse_only_layer_is_forward_on_flipped_input(variant, num_layers):
    """``reverse=True`` (ONNX's direction "reverse", Keras's go_backwards): a forward layer of
    the same weights on each sequence reversed within its length, its outputs put back in the
    input's time order; and the gradients likewise."""
    rng = np.random.default_rng(4)
    rev = VARIANTS[variant](num_layers=num_layers, reverse=True, rng=5, dtype=np.float64)
    fwd = VARIANTS[variant](num_layers=num_layers, rng=6, dtype=np.float64)
    fwd.load_state_dict(rev.state_dict())
    lengths = np.array([T, 2, 5])
    x = rng.normal(size=(T, N, D))
    flip = np.where(
        np.arange(T)[:, None] < lengths, lengths - 1 - np.arange(T)[:, None], np.arange(T)[:, None]
    )
    state = random_state(rev, rng)
    out, final, dx, dstate, grads = run_loss(rev, x, state, lengths, np.random.default_rng(7))
    dout = np.random.default_rng(7).normal(size=out.shape)
    x_f = x[flip, np.arange(N)]  # each sequence reversed within its length
    out_f, final_f, cache = fwd.forward(x_f, state, lengths)
    np.testing.assert_allclose(out, out_f[flip, np.arange(N)], atol=1e-13)
    for a, b in zip(
        final if isinstance(final, tuple) else (final,),
        final_f if isinstance(final_f, tuple) else (final_f,),
    ):
        np.testing.assert_allclose(a, b, atol=1e-13)
    fwd.zero_grad()
    dx_f, _ = fwd.backward(dout[flip, np.arange(N)], cache)
    np.testing.assert_allclose(dx, dx_f[flip, np.arange(N)], atol=1e-12)
    for k in grads:
        np.testing.assert_allclose(grads[k], fwd.grads[k], atol=1e-12, err_msg=k)
    with pytest.raises(ValueError, match="bidirectional=True already has a reverse direction"):
        VARIANTS[variant](reverse=True, bidirectional=True)


def test_gers_peepholes_follow_their_equations():
    """``peephole="gers"``: the input and forget gates see c<t-1>, the output gate the new c<t>
    (Gers et al. 2002, ONNX's P input), written out here line by line."""
    rng = np.random.default_rng(8)
    layer = rnnkit.LSTM(D, H, peephole="gers", rng=9, dtype=np.float64)
    p = layer.cell_params(0, 0)
    x = rng.normal(size=(T, N, D))
    h, c = rng.normal(size=(N, H)), rng.normal(size=(N, H))
    out, (h_n, c_n), _ = layer.forward(x, (h[None], c[None]))

    def sigmoid(v):
        return 1 / (1 + np.exp(-v))

    w = lambda g: (p.w_ih[g * H : (g + 1) * H], p.w_hh[g * H : (g + 1) * H])  # noqa: E731
    b = lambda g: p.b_ih[g * H : (g + 1) * H] + p.b_hh[g * H : (g + 1) * H]  # noqa: E731
    for t in range(T):
        pre = [x[t] @ w(g)[0].T + h @ w(g)[1].T + b(g) for g in range(4)]  # i, f, g, o
        i = sigmoid(pre[0] + p.w_peep[0] * c)
        f = sigmoid(pre[1] + p.w_peep[1] * c)
        c = f * c + i * np.tanh(pre[2])
        o = sigmoid(pre[3] + p.w_peep[2] * c)  # the new cell state
        h = o * np.tanh(c)
        np.testing.assert_allclose(out[t], h, atol=1e-12)
    np.testing.assert_allclose(h_n[0], h, atol=1e-12)
    np.testing.assert_allclose(c_n[0], c, atol=1e-12)


def test_projection_sizes_follow_pytorch():
    layer = rnnkit.LSTM(D, H, num_layers=2, bidirectional=True, proj_size=2)
    assert layer.params["weight_hh_l0"].shape == (4 * H, 2)
    assert layer.params["weight_hr_l1_reverse"].shape == (2, H)
    assert layer.params["weight_ih_l1"].shape == (4 * H, 4)  # both directions' projections
    out, (h, c), _ = layer.forward(np.zeros((T, N, D)))
    assert out.shape == (T, N, 4) and h.shape == (4, N, 2) and c.shape == (4, N, H)
    with pytest.raises(ValueError, match="proj_size must be smaller than hidden_size"):
        rnnkit.LSTM(D, H, proj_size=H)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, True)])
def test_padded_batch_equals_each_sequence_alone(variant, num_layers, bidirectional):
    rng = np.random.default_rng(3)
    layer = VARIANTS[variant](
        num_layers=num_layers, bidirectional=bidirectional, rng=6, dtype=np.float64
    )
    lengths = np.array([T, 2, 4])
    x = rng.normal(size=(T, N, D))
    state = random_state(layer, rng)
    out, final, dx, dstate, grads = run_loss(layer, x, state, lengths, np.random.default_rng(9))
    dout_all = np.random.default_rng(9).normal(size=out.shape)
    assert np.all(out[lengths[1] :, 1] == 0)  # past the end: zeros
    total_grads = {k: np.zeros_like(v) for k, v in grads.items()}
    for n, length in enumerate(lengths):
        one_state = tuple(s[:, n : n + 1] for s in state) if isinstance(state, tuple) else None
        one_state = one_state if one_state is not None else state[:, n : n + 1]
        o, f, c = layer.forward(x[:length, n : n + 1], one_state)
        np.testing.assert_allclose(out[:length, n : n + 1], o, atol=1e-13)
        f_all = final if isinstance(final, tuple) else (final,)
        f_one = f if isinstance(f, tuple) else (f,)
        for s_all, s_one in zip(f_all, f_one):
            np.testing.assert_allclose(s_all[:, n : n + 1], s_one, atol=1e-13)
        layer.zero_grad()
        d, ds = layer.backward(dout_all[:length, n : n + 1], c)
        np.testing.assert_allclose(dx[:length, n : n + 1], d, atol=1e-12)
        assert np.all(dx[length:, n] == 0)
        ds_all = dstate if isinstance(dstate, tuple) else (dstate,)
        ds_one = ds if isinstance(ds, tuple) else (ds,)
        for s_all, s_one in zip(ds_all, ds_one):
            np.testing.assert_allclose(s_all[:, n : n + 1], s_one, atol=1e-12)
        for k in total_grads:
            total_grads[k] += layer.grads[k]
    for k in grads:
        np.testing.assert_allclose(grads[k], total_grads[k], atol=1e-11)


def test_batch_first_is_a_transpose():
    rng = np.random.default_rng(4)
    a = rnnkit.LSTM(D, H, 2, bidirectional=True, rng=7, dtype=np.float64)
    b = rnnkit.LSTM(D, H, 2, bidirectional=True, batch_first=True, rng=7, dtype=np.float64)
    x = rng.normal(size=(T, N, D))
    out_a, (h_a, c_a), _ = a.forward(x)
    out_b, (h_b, c_b), _ = b.forward(x.transpose(1, 0, 2))
    np.testing.assert_array_equal(out_a, out_b.transpose(1, 0, 2))
    np.testing.assert_array_equal(h_a, h_b)  # states stay (L*dirs, N, H) as in PyTorch
    np.testing.assert_array_equal(c_a, c_b)


def test_float32_is_default_and_kept():
    layer = rnnkit.GRU(D, H, rng=0)
    assert all(v.dtype == np.float32 for v in layer.params.values())
    out, h, cache = layer.forward(np.ones((T, N, D)))
    dx, dh = layer.backward(np.ones_like(out), cache)
    assert out.dtype == h.dtype == dx.dtype == dh.dtype == np.float32
    assert all(g.dtype == np.float32 for g in layer.grads.values())


def test_same_seed_same_weights_and_dropout():
    def run(seed):
        layer = rnnkit.LSTM(D, H, 3, dropout=0.5, rng=seed)
        out, _, _ = layer.forward(np.ones((T, N, D)))
        return layer.state_dict(), out

    (sd1, o1), (sd2, o2), (sd3, _) = run(11), run(11), run(12)
    assert all(np.array_equal(sd1[k], sd2[k]) for k in sd1)
    np.testing.assert_array_equal(o1, o2)
    assert not np.array_equal(sd1["weight_ih_l0"], sd3["weight_ih_l0"])


def test_dropout_only_between_layers_and_only_in_training():
    layer = rnnkit.RNN(D, H, 2, dropout=0.5, rng=0, dtype=np.float64)
    x = np.random.default_rng(0).normal(size=(T, N, D))
    train_out, _, c = layer.forward(x)
    assert c.dropout_masks[0] is None and c.dropout_masks[1] is not None
    assert set(np.unique(c.dropout_masks[1])) <= {0.0, 2.0}
    layer.eval()
    eval1, _, c = layer.forward(x)
    eval2, _, _ = layer.forward(x)
    assert c.dropout_masks == [None, None]
    np.testing.assert_array_equal(eval1, eval2)
    assert not np.allclose(train_out, eval1)


def test_state_dict_round_trip_and_checks():
    a = rnnkit.GRU(D, H, 2, bidirectional=True, rng=0)
    b = rnnkit.GRU(D, H, 2, bidirectional=True, rng=1)
    b.load_state_dict(a.state_dict())
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    assert set(a.state_dict()) == set(a.grads)
    assert "weight_hh_l1_reverse" in a.state_dict()
    sd = a.state_dict()
    sd["weight_ih_l0"] = sd["weight_ih_l0"][:, :2]
    with pytest.raises(ValueError, match=r"weight_ih_l0.*shape \(15, 2\).*expected \(15, 4\)"):
        b.load_state_dict(sd)
    sd = a.state_dict()
    del sd["bias_hh_l1"]
    with pytest.raises(ValueError, match="missing keys.*bias_hh_l1"):
        b.load_state_dict(sd)
    sd = a.state_dict()
    sd["extra"] = np.zeros(1)
    with pytest.raises(ValueError, match="unexpected keys.*extra"):
        b.load_state_dict(sd)
    before = b.state_dict()
    sd = a.state_dict()
    sd["weight_hh_l0"] = sd["weight_hh_l0"] * np.nan
    with pytest.raises(ValueError, match="non-finite"):
        b.load_state_dict(sd)
    assert all(np.array_equal(before[k], b.params[k]) for k in before)  # nothing half-loaded


def test_parameter_shapes_follow_pytorch():
    lstm = rnnkit.LSTM(D, H, 2, bidirectional=True, peephole=True, rng=0)
    assert lstm.params["weight_ih_l0"].shape == (4 * H, D)
    assert lstm.params["weight_ih_l1_reverse"].shape == (4 * H, 2 * H)
    assert lstm.params["weight_peephole_l1"].shape == (3, H)
    assert rnnkit.GRU(D, H, simplified=True).params["weight_hh_l0"].shape == (2 * H, H)
    assert set(rnnkit.RNN(D, H, bias=False).params) == {"weight_ih_l0", "weight_hh_l0"}
    assert lstm.num_parameters() == sum(v.size for v in lstm.params.values())


# ---------------------------------------------------------------- bad input


def test_bad_constructor_arguments():
    with pytest.raises(TypeError, match="hidden_size must be an int, got float"):
        rnnkit.RNN(3, 2.5)
    with pytest.raises(ValueError, match="input_size must be >= 1, got 0"):
        rnnkit.GRU(0, 3)
    with pytest.raises(ValueError, match="num_layers must be >= 1"):
        rnnkit.LSTM(3, 3, num_layers=0)
    with pytest.raises(ValueError, match=r"dropout must be a number in \[0, 1\), got 1.5"):
        rnnkit.LSTM(3, 3, dropout=1.5)
    with pytest.raises(ValueError, match="nonlinearity must be 'tanh' or 'relu', got 'sigmoid'"):
        rnnkit.RNN(3, 3, nonlinearity="sigmoid")
    with pytest.raises(TypeError, match="dtype must be float32 or float64, got int32"):
        rnnkit.RNN(3, 3, dtype=np.int32)
    with pytest.raises(TypeError, match="rng must be a numpy.random.Generator"):
        rnnkit.RNN(3, 3, rng="seed")


@pytest.mark.parametrize(
    "x,message",
    [
        (np.zeros((T, D)), r"input must be 3-D \(T, N, D\), got shape \(6, 4\)"),
        (np.zeros((T, N, D + 1)), "input has feature size 5, expected input_size=4"),
        (np.zeros((0, N, D)), "at least one time step"),
        (np.full((T, N, D), np.nan), "input holds non-finite values"),
    ],
)
def test_bad_input_arrays(x, message):
    with pytest.raises(ValueError, match=message):
        rnnkit.GRU(D, H).forward(x)


def test_bad_input_types():
    with pytest.raises(TypeError, match="input must hold real numbers, got dtype <U1"):
        rnnkit.GRU(D, H).forward(np.full((T, N, D), "a"))
    with pytest.raises(TypeError, match="input must hold real numbers, got dtype complex128"):
        rnnkit.GRU(D, H).forward(np.zeros((T, N, D), dtype=complex))


def test_bad_state():
    x = np.zeros((T, N, D))
    with pytest.raises(ValueError, match=r"state must have shape .* = \(2, 3, 5\), got \(1, 3"):
        rnnkit.GRU(D, H, 2).forward(x, np.zeros((1, N, H)))
    with pytest.raises(TypeError, match=r"state of an LSTM must be a tuple \(h, c\)"):
        rnnkit.LSTM(D, H).forward(x, np.zeros((1, N, H)))
    with pytest.raises(ValueError, match=r"state\[1\] \(c\) must have shape"):
        rnnkit.LSTM(D, H).forward(x, (np.zeros((1, N, H)), np.zeros((1, N, H + 1))))
    with pytest.raises(TypeError, match="state of GRU must be one array h, got a tuple"):
        rnnkit.GRU(D, H).forward(x, (np.zeros((1, N, H)),))
    with pytest.raises(ValueError, match="state holds non-finite"):
        rnnkit.RNN(D, H).forward(x, np.full((1, N, H), np.inf))


@pytest.mark.parametrize(
    "lengths,error,message",
    [
        ([6, 0, 3], ValueError, r"lengths must lie in \[1, T=6\], got min 0 and max 6"),
        ([7, 2, 3], ValueError, r"lengths must lie in \[1, T=6\], got min 2 and max 7"),
        ([6, 2], ValueError, r"lengths must have shape \(N,\) = \(3,\), got \(2,\)"),
        ([6, 2.5, 3], ValueError, "lengths must be whole numbers"),
        ([True, True, True], TypeError, "lengths must hold integers, got dtype bool"),
    ],
)
def test_bad_lengths(lengths, error, message):
    with pytest.raises(error, match=message):
        rnnkit.LSTM(D, H).forward(np.zeros((T, N, D)), lengths=lengths)


def test_bad_backward_arguments():
    layer = rnnkit.LSTM(D, H, bidirectional=True)
    out, _, cache = layer.forward(np.zeros((T, N, D)))
    with pytest.raises(ValueError, match=r"doutput must have the output's shape \(6, 3, 10\)"):
        layer.backward(np.zeros((T, N, H)), cache)
    with pytest.raises(ValueError, match=r"dstate\[0\] \(h\) must have shape"):
        layer.backward(np.zeros_like(out), cache, (np.zeros((1, N, H)), np.zeros((2, N, H))))
    with pytest.raises(ValueError, match="doutput holds non-finite"):
        layer.backward(np.full_like(out, np.nan), cache)


def test_gate_bias_options_shift_only_their_gate():
    base = rnnkit.LSTM(D, H, 2, bidirectional=True, rng=0).state_dict()
    shifted = rnnkit.LSTM(D, H, 2, bidirectional=True, forget_bias=1.5, rng=0).state_dict()
    for name in base:
        diff = shifted[name] - base[name]
        if name.startswith("bias_ih"):
            np.testing.assert_allclose(diff[H : 2 * H], 1.5)  # gate f only
            assert not diff[:H].any() and not diff[2 * H :].any()
        else:
            assert not diff.any()
    gru = rnnkit.GRU(D, H, carry_bias=2.0, rng=0).params["bias_ih_l0"]
    np.testing.assert_allclose(
        gru[H : 2 * H] - rnnkit.GRU(D, H, rng=0).params["bias_ih_l0"][H : 2 * H], 2.0
    )
    simple = rnnkit.GRU(D, H, simplified=True, carry_bias=2.0, rng=0).params["bias_ih_l0"]
    plain = rnnkit.GRU(D, H, simplified=True, rng=0).params["bias_ih_l0"]
    np.testing.assert_allclose(simple[:H] - plain[:H], 2.0)  # gates z, n: z first


@pytest.mark.parametrize("cls", [rnnkit.RNN, rnnkit.GRU, rnnkit.LSTM])
def test_output_shared_with_the_cache_is_read_only(cls):
    """Writing into an output the backward pass still needs would corrupt the gradients (the
    compiled loop reads a<t> from it; the reference loop keeps copies of its own)."""
    if not rnnkit.kernels.AVAILABLE:
        pytest.skip("the compiled loop is off; the reference shares nothing with its output")
    layer = cls(D, H, rng=0)
    out, _, cache = layer.forward(np.ones((T, N, D)))
    with pytest.raises(ValueError, match="read-only"):
        out *= 2
    copy = out * 2  # arithmetic that makes a new array is fine
    layer.backward(np.ones_like(copy), cache)
