"""Numerical gradient checks of every recurrent layer variant, in float64 (central differences).

The scalar loss is ``sum(out * dout) + sum(h_n * dh_n) (+ sum(c_n * dc_n))`` with random upstream
gradients, so ``layer.backward(dout, cache, dstate)`` must return its gradient. Biases are
random non-zero (the default initialisation), initial states random non-zero, T >= 3.
The output gradient is *not* masked past each length: outputs there are constant zero, so the
analytic gradient must ignore whatever arrives there, and the numerical one does.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import VARIANTS, as_tuple, make_layer, numerical_grad, random_lengths, random_state

T, N, D, H = 4, 2, 3, 3
EPS = 1e-6
# Central differences with eps=1e-6 in float64: truncation error ~eps^2 (1e-12), rounding error
# ~1e-16 * |loss| / eps (about 1e-9 here); 1e-7 times the gradient's scale is a safe margin.
ATOL = 1e-7
RELU_MARGIN = 1e-4


def _relu_margin(layer, cache) -> float:
    """Smallest |pre-activation| over every step, layer and direction of a relu RNN.

    Rebuilt from the cache of the reference loop: each direction's input sequence and the step
    caches (a_prev, a_t).
    """
    smallest = np.inf
    for layer_idx in range(layer.num_layers):
        for direction in range(layer.num_directions):
            p = layer.cell_params(layer_idx, direction)
            x = cache.inputs[layer_idx][direction]
            for t, (a_prev, _) in enumerate(cache.steps[layer_idx][direction]):
                z = x[t] @ p.w_ih.T + a_prev @ p.w_hh.T
                if p.b_ih is not None:
                    z = z + p.b_ih + p.b_hh
                smallest = min(smallest, float(np.abs(z).min()))
    return smallest


def _setup(variant, num_layers, bidirectional, with_lengths, seed, **kwargs):
    """A float64 layer with random inputs, state, lengths and upstream gradients.

    For relu, seeds are retried until no pre-activation lies within RELU_MARGIN of the kink at
    0: a perturbation of eps=1e-6 then moves every pre-activation by far less than the margin,
    so the loss is smooth on the stencil and central differences are exact to O(eps^2).
    """
    for attempt in range(50):
        rng = np.random.default_rng([seed, attempt])
        layer = make_layer(
            variant,
            D,
            H,
            num_layers=num_layers,
            bidirectional=bidirectional,
            rng=rng,
            dtype=np.float64,
            **kwargs,
        )
        x_shape = (N, T, D) if layer.batch_first else (T, N, D)
        x = rng.standard_normal(x_shape)
        state = random_state(layer, N, rng)
        lengths = random_lengths(T, N, rng) if with_lengths else None
        if variant == "rnn_relu":
            layer.backend = "reference"
            _, _, cache = layer.forward(x, state, lengths)
            layer.backend = "fast"
        out, final, _ = layer.forward(x, state, lengths)
        if variant != "rnn_relu" or _relu_margin(layer, cache) > RELU_MARGIN:
            break
    else:  # pragma: no cover
        pytest.fail("no relu setup away from the kink found")
    dout = rng.standard_normal(out.shape)
    dfinal = tuple(rng.standard_normal(s.shape) for s in as_tuple(final))
    return layer, x, state, lengths, dout, dfinal


def _loss(layer, x, state, lengths, dout, dfinal) -> float:
    out, final, _ = layer.forward(x, state, lengths)
    total = np.sum(out * dout)
    for s, ds in zip(as_tuple(final), dfinal):
        total += np.sum(s * ds)
    return float(total)


def _dstate_arg(layer, dfinal):
    return dfinal if layer.kind.num_states == 2 else dfinal[0]


def _assert_close(analytic, numeric, name):
    scale = max(1.0, float(np.abs(numeric).max()))
    np.testing.assert_allclose(analytic, numeric, rtol=0, atol=ATOL * scale, err_msg=name)


def _check_all_gradients(layer, x, state, lengths, dout, dfinal):
    layer.zero_grad()
    _, _, cache = layer.forward(x, state, lengths)
    dx, dstate0 = layer.backward(dout, cache, _dstate_arg(layer, dfinal))

    def f():
        return _loss(layer, x, state, lengths, dout, dfinal)

    assert set(layer.grads) == set(layer.params)
    for name, value in layer.params.items():
        _assert_close(layer.grads[name], numerical_grad(f, value, EPS), name)
    _assert_close(dx, numerical_grad(f, x, EPS), "input x")
    for i, (s, ds) in enumerate(zip(as_tuple(state), as_tuple(dstate0))):
        assert ds.shape == s.shape
        _assert_close(ds, numerical_grad(f, s, EPS), f"initial state {i}")
    if lengths is not None:  # padded inputs cannot matter
        x_tm = x.transpose(1, 0, 2) if layer.batch_first else x
        dx_tm = dx.transpose(1, 0, 2) if layer.batch_first else dx
        pad = np.arange(T)[:, None] >= lengths[None, :]  # (T, N)
        assert dx_tm.shape == x_tm.shape
        assert np.all(dx_tm[pad] == 0), "gradient reaches padded inputs"


@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2], ids=["L1", "L2"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_gradcheck(variant, num_layers, bidirectional, with_lengths):
    seed = [list(VARIANTS).index(variant), num_layers, bidirectional, with_lengths]
    setup = _setup(variant, num_layers, bidirectional, with_lengths, seed)
    _check_all_gradients(*setup)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_gradcheck_batch_first_no_bias(variant):
    """batch_first and bias=False, for the variants torch cannot check too."""
    seed = [100, list(VARIANTS).index(variant)]
    setup = _setup(variant, 2, True, True, seed, batch_first=True, bias=False)
    assert not any(name.startswith("bias") for name in setup[0].params)
    _check_all_gradients(*setup)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_gradcheck_reverse_only(variant):
    """One direction that runs backwards in time (``reverse=True``), two layers, lengths."""
    seed = [300, list(VARIANTS).index(variant)]
    setup = _setup(variant, 2, False, True, seed, reverse=True)
    _check_all_gradients(*setup)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_gradients_accumulate_and_zero_grad_clears(variant):
    layer, x, state, lengths, dout, dfinal = _setup(variant, 2, True, True, [200])
    _, _, cache = layer.forward(x, state, lengths)
    dstate = _dstate_arg(layer, dfinal)
    dx1, ds1 = layer.backward(dout, cache, dstate)
    once = {name: g.copy() for name, g in layer.grads.items()}
    assert all(np.any(g != 0) for g in once.values())
    _, _, cache = layer.forward(x, state, lengths)  # a cache serves one backward pass
    dx2, ds2 = layer.backward(dout, cache, dstate)  # no zero_grad in between
    for name, g in layer.grads.items():
        np.testing.assert_array_equal(g, 2 * once[name], err_msg=name)
    np.testing.assert_array_equal(dx1, dx2)  # the returned gradients do not accumulate
    for a, b in zip(as_tuple(ds1), as_tuple(ds2)):
        np.testing.assert_array_equal(a, b)
    layer.zero_grad()
    for name, g in layer.grads.items():
        assert g.shape == layer.params[name].shape
        assert not np.any(g), name


@pytest.mark.parametrize("variant", ["rnn_tanh", "gru", "lstm_peephole"])
def test_gradcheck_with_dropout_mask_held_fixed(variant):
    """Dropout between layers in training mode: the gradient is that of the masked network.

    Reseeding ``layer.rng`` before every forward pass draws the same mask each time, so the
    loss is a smooth function of the parameters and central differences apply.
    """
    layer, x, state, lengths, dout, dfinal = _setup(variant, 3, True, True, [300], dropout=0.4)
    dropout_seed = 1234

    def reseeded_loss():
        layer.rng = np.random.default_rng(dropout_seed)
        return _loss(layer, x, state, lengths, dout, dfinal)

    layer.rng = np.random.default_rng(dropout_seed)
    out, _, cache = layer.forward(x, state, lengths)
    masks = [m for m in cache.dropout_masks if m is not None]
    assert len(masks) == 2 and all(np.any(m == 0) for m in masks)  # dropout is really active
    layer.eval()
    out_eval, _, _ = layer.forward(x, state, lengths)
    layer.train()
    assert not np.allclose(out, out_eval)

    layer.zero_grad()
    dx, dstate0 = layer.backward(dout, cache, _dstate_arg(layer, dfinal))
    for name, value in layer.params.items():
        _assert_close(layer.grads[name], numerical_grad(reseeded_loss, value, EPS), name)
    _assert_close(dx, numerical_grad(reseeded_loss, x, EPS), "input x")
    for i, (s, ds) in enumerate(zip(as_tuple(state), as_tuple(dstate0))):
        _assert_close(ds, numerical_grad(reseeded_loss, s, EPS), f"initial state {i}")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_eval_turns_dropout_off(variant):
    rng = np.random.default_rng(400)
    layer = make_layer(variant, D, H, num_layers=3, bidirectional=True, dropout=0.5, rng=rng)
    plain = make_layer(variant, D, H, num_layers=3, bidirectional=True, dropout=0.0, rng=rng)
    plain.load_state_dict(layer.state_dict())
    x = rng.standard_normal((T, N, D)).astype(np.float32)
    state = random_state(layer, N, rng)
    lengths = random_lengths(T, N, rng)

    out_plain, final_plain, _ = plain.forward(x, state, lengths)
    out_train, _, _ = layer.forward(x, state, lengths)
    assert not np.allclose(out_train, out_plain)  # dropout is active in training mode

    assert layer.eval() is layer and not layer.training
    out_eval, final_eval, cache = layer.forward(x, state, lengths)
    np.testing.assert_array_equal(out_eval, out_plain)
    for a, b in zip(as_tuple(final_eval), as_tuple(final_plain)):
        np.testing.assert_array_equal(a, b)
    assert all(m is None for m in cache.dropout_masks)

    layer.train()
    assert layer.training
    out_again, _, _ = layer.forward(x, state, lengths)
    assert not np.allclose(out_again, out_plain)


@pytest.mark.parametrize("variant", ["rnn_tanh", "lstm"])
def test_dropout_is_inverted_and_only_between_layers(variant):
    """As in torch: the outputs of every layer but the last are zeroed with probability p and
    the survivors scaled by 1 / (1 - p); the input and the last layer's output are untouched."""
    p, n_seq, length = 0.3, 64, 50
    rng = np.random.default_rng(500)
    layer = make_layer(variant, D, H, num_layers=3, dropout=p, rng=rng, dtype=np.float64)
    x = rng.standard_normal((length, n_seq, D))
    out, _, cache = layer.forward(x)
    assert cache.dropout_masks[0] is None  # no dropout on the input
    assert np.count_nonzero(out == 0) == 0  # nor on the last layer's output
    for mask in cache.dropout_masks[1:]:
        assert mask.shape == (length, n_seq, H)
        np.testing.assert_allclose(np.unique(mask), [0.0, 1 / (1 - p)], rtol=1e-12)
        kept = np.mean(mask > 0)
        assert abs(kept - (1 - p)) < 5 * np.sqrt(p * (1 - p) / mask.size)

    single = make_layer(variant, D, H, dropout=p, rng=rng, dtype=np.float64)  # nothing to drop
    out_train, _, _ = single.forward(x)
    out_eval, _, _ = single.eval().forward(x)
    np.testing.assert_array_equal(out_train, out_eval)
