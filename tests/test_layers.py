"""Linear, Embedding and Dropout: forward and backward against torch, accumulation, bad input.

Every comparison uses random non-zero weights, biases, inputs and upstream gradients in
float64, on time-major ``(T, N, D)`` inputs.
"""

from __future__ import annotations

import numpy as np
import pytest

from rnnkit.layers import Dropout, Embedding, Linear

T, N, D, OUT, V, E = 4, 3, 5, 6, 7, 4


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ---------------------------------------------------------------- Linear


def test_linear_forward_backward_match_numpy_formula():
    """Checks numbers without torch: y = x W^T + b, dW = sum dy^T x, db = sum dy, dx = dy W."""
    rng = _rng(1)
    layer = Linear(D, OUT, rng=rng, dtype=np.float64)
    layer.params["bias"][...] = rng.standard_normal(OUT)
    x = rng.standard_normal((T, N, D))
    dy = rng.standard_normal((T, N, OUT))
    y, cache = layer(x)
    W, b = layer.params["weight"], layer.params["bias"]
    np.testing.assert_allclose(y, np.einsum("tnd,od->tno", x, W) + b, rtol=1e-13, atol=1e-13)
    dx = layer.backward(dy, cache)
    np.testing.assert_allclose(dx, np.einsum("tno,od->tnd", dy, W), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(
        layer.grads["weight"], np.einsum("tno,tnd->od", dy, x), rtol=1e-13, atol=1e-13
    )
    np.testing.assert_allclose(layer.grads["bias"], dy.sum(axis=(0, 1)), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_torch(bias):
    torch = pytest.importorskip("torch")
    rng = _rng(2)
    layer = Linear(D, OUT, bias=bias, rng=rng, dtype=np.float64)
    if bias:
        layer.params["bias"][...] = rng.standard_normal(OUT)  # non-zero, not the init bound
    x = rng.standard_normal((T, N, D))
    dy = rng.standard_normal((T, N, OUT))

    tl = torch.nn.Linear(D, OUT, bias=bias, dtype=torch.float64)
    tl.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in layer.state_dict().items()})
    tx = torch.tensor(x, requires_grad=True)
    ty = tl(tx)
    ty.backward(torch.from_numpy(dy))

    y, cache = layer(x)
    dx = layer.backward(dy, cache)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        layer.grads["weight"], tl.weight.grad.numpy(), rtol=1e-12, atol=1e-12
    )
    if bias:
        np.testing.assert_allclose(layer.grads["bias"], tl.bias.grad.numpy(), rtol=1e-12)
    else:
        assert "bias" not in layer.params and "bias" not in layer.grads


def test_linear_forward_does_not_modify_input_or_weights():
    rng = _rng(3)
    layer = Linear(D, OUT, rng=rng, dtype=np.float64)
    x = rng.standard_normal((T, N, D))
    x0, w0 = x.copy(), layer.params["weight"].copy()
    layer(x)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(layer.params["weight"], w0)


def test_linear_gradients_accumulate_across_backward_calls():
    rng = _rng(4)
    layer = Linear(D, OUT, rng=rng, dtype=np.float64)
    x1, x2 = rng.standard_normal((T, N, D)), rng.standard_normal((2, N, D))
    d1, d2 = rng.standard_normal((T, N, OUT)), rng.standard_normal((2, N, OUT))

    _, c1 = layer(x1)
    _, c2 = layer(x2)  # two forward passes before either backward: caches are not stored
    layer.backward(d1, c1)
    g1 = {k: v.copy() for k, v in layer.grads.items()}
    layer.backward(d2, c2)
    g12 = {k: v.copy() for k, v in layer.grads.items()}

    layer.zero_grad()
    assert all(not v.any() for v in layer.grads.values())
    layer.backward(d2, c2)
    for k in layer.grads:
        assert np.abs(g1[k]).max() > 0 and np.abs(layer.grads[k]).max() > 0
        np.testing.assert_allclose(g12[k], g1[k] + layer.grads[k], rtol=1e-13, atol=1e-13)


def test_linear_rejects_wrong_last_axis():
    layer = Linear(D, OUT, rng=0)
    with pytest.raises(ValueError, match=str(D)):
        layer(np.zeros((T, N, D + 1), dtype=np.float32))


def test_linear_same_seed_same_weights_and_torch_bound():
    a, b = Linear(D, OUT, rng=7), Linear(D, OUT, rng=7)
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    bound = 1 / np.sqrt(D)
    assert np.abs(a.params["weight"]).max() <= bound
    assert a.params["weight"].dtype == np.float32
    assert a.params["weight"].shape == (OUT, D) and a.params["bias"].shape == (OUT,)


# ---------------------------------------------------------------- Embedding


def _ids(rng, shape=(T, N)):
    ids = rng.integers(0, V, size=shape)
    ids[0, 0] = ids[1, 1] = 3  # a repeated id for certain
    return ids


def test_embedding_forward_and_repeated_ids_accumulate():
    rng = _rng(5)
    emb = Embedding(V, E, rng=rng, dtype=np.float64)
    ids = _ids(rng)
    dy = rng.standard_normal((T, N, E))
    out, cache = emb(ids)
    assert out.shape == (T, N, E)
    np.testing.assert_array_equal(out, emb.params["weight"][ids])
    emb.backward(dy, cache)
    expected = np.zeros((V, E))
    for idx in np.ndindex(ids.shape):
        expected[ids[idx]] += dy[idx]
    np.testing.assert_allclose(emb.grads["weight"], expected, rtol=1e-13, atol=1e-13)
    # row 3 was used at least twice, so its gradient is a sum of >= 2 upstream rows
    assert (ids == 3).sum() >= 2


@pytest.mark.parametrize("vocab", [40, 5000])  # a table of characters, one of words
def test_embedding_gradient_both_ways(vocab):
    rng = _rng(8)
    emb = Embedding(vocab, 3, rng=rng, dtype=np.float64)
    ids = rng.integers(0, 40, size=(30, 20))  # 600 ids, repeats certain
    dy = rng.standard_normal((30, 20, 3))
    emb.grads["weight"][:] = 1.0  # accumulates into what is there
    emb.backward(dy, emb(ids)[1])
    expected = np.ones((vocab, 3))
    for idx in np.ndindex(ids.shape):
        expected[ids[idx]] += dy[idx]
    np.testing.assert_allclose(emb.grads["weight"], expected, rtol=1e-12, atol=1e-12)


def test_embedding_output_is_a_copy():
    emb = Embedding(V, E, rng=0, dtype=np.float64)
    w0 = emb.params["weight"].copy()
    out, _ = emb(np.array([[1, 2]]))
    out += 100.0
    np.testing.assert_array_equal(emb.params["weight"], w0)


@pytest.mark.parametrize("padding_idx", [None, 0, 2])
def test_embedding_matches_torch(padding_idx):
    torch = pytest.importorskip("torch")
    rng = _rng(6)
    emb = Embedding(V, E, padding_idx=padding_idx, rng=rng, dtype=np.float64)
    ids = _ids(rng)
    if padding_idx is not None:
        ids[2, :] = padding_idx  # padding present for certain
    dy = rng.standard_normal((T, N, E))

    te = torch.nn.Embedding(V, E, padding_idx=padding_idx, dtype=torch.float64)
    te.load_state_dict({"weight": torch.from_numpy(emb.params["weight"].copy())})
    tout = te(torch.from_numpy(ids))
    tout.backward(torch.from_numpy(dy))

    out, cache = emb(ids)
    emb.backward(dy, cache)
    np.testing.assert_allclose(out, tout.detach().numpy(), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(emb.grads["weight"], te.weight.grad.numpy(), rtol=1e-12, atol=1e-13)


def test_embedding_padding_row_starts_at_zero_and_gets_no_gradient():
    rng = _rng(7)
    pad = 2
    emb = Embedding(V, E, padding_idx=pad, rng=rng, dtype=np.float64)
    assert not emb.params["weight"][pad].any()
    assert np.abs(np.delete(emb.params["weight"], pad, axis=0)).min() > 0
    ids = _ids(rng)
    ids[:, 0] = pad
    out, cache = emb(ids)
    assert not out[:, 0].any()
    emb.backward(rng.standard_normal((T, N, E)), cache)
    emb.backward(rng.standard_normal((T, N, E)), cache)
    assert not emb.grads["weight"][pad].any()
    used = np.unique(ids[ids != pad])
    assert np.abs(emb.grads["weight"][used]).min() > 0


def test_embedding_gradients_accumulate_across_backward_calls():
    rng = _rng(8)
    emb = Embedding(V, E, rng=rng, dtype=np.float64)
    ids1, ids2 = _ids(rng), _ids(rng, (2, N))
    d1, d2 = rng.standard_normal((T, N, E)), rng.standard_normal((2, N, E))
    _, c1 = emb(ids1)
    _, c2 = emb(ids2)
    emb.backward(d1, c1)
    g1 = emb.grads["weight"].copy()
    emb.backward(d2, c2)
    g12 = emb.grads["weight"].copy()
    emb.zero_grad()
    emb.backward(d2, c2)
    np.testing.assert_allclose(g12, g1 + emb.grads["weight"], rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("bad", [[[V]], [[-1]], [[0, V + 5]]])
def test_embedding_out_of_range_ids_raise(bad):
    emb = Embedding(V, E, rng=0)
    with pytest.raises(ValueError, match=rf"\[0, {V}\)"):
        emb(np.array(bad))


@pytest.mark.parametrize("bad", [np.array([[1.0, 2.0]]), np.array([[True, False]])])
def test_embedding_non_integer_ids_raise(bad):
    emb = Embedding(V, E, rng=0)
    with pytest.raises(TypeError, match="integer"):
        emb(bad)


def test_embedding_accepts_lists_and_any_integer_dtype():
    emb = Embedding(V, E, rng=0, dtype=np.float64)
    ref, _ = emb(np.array([[1, 2], [3, 4]], dtype=np.int64))
    for ids in ([[1, 2], [3, 4]], np.array([[1, 2], [3, 4]], dtype=np.int32)):
        out, _ = emb(ids)
        np.testing.assert_array_equal(out, ref)


# ---------------------------------------------------------------- Dropout


def test_dropout_is_identity_in_eval_and_backward_passes_through():
    rng = _rng(9)
    drop = Dropout(0.4, rng=1)
    drop.eval()
    x = rng.standard_normal((T, N, D))
    y, cache = drop(x)
    np.testing.assert_array_equal(y, x)
    dy = rng.standard_normal((T, N, D))
    np.testing.assert_array_equal(drop.backward(dy, cache), dy)


def test_dropout_p_zero_is_identity_in_training():
    x = _rng(10).standard_normal((T, N, D))
    y, _ = Dropout(0.0, rng=0)(x)
    np.testing.assert_array_equal(y, x)


@pytest.mark.parametrize("p", [0.25, 0.5, 0.8])
def test_dropout_training_zeros_and_scales_kept_entries(p):
    rng = _rng(11)
    drop = Dropout(p, rng=3)
    x = rng.standard_normal((40, 50, 10)) + 3.0  # no exact zeros in x
    y, mask = drop(x)
    kept = y != 0
    np.testing.assert_allclose(y[kept], x[kept] / (1 - p), rtol=1e-15)
    frac_dropped = 1 - kept.mean()
    assert abs(frac_dropped - p) < 0.02  # 20000 Bernoulli draws: std ~ 0.0035
    dy = rng.standard_normal(x.shape)
    dx = drop.backward(dy, mask)
    assert not dx[~kept].any()
    np.testing.assert_allclose(dx[kept], dy[kept] / (1 - p), rtol=1e-15)


def test_dropout_same_seed_same_mask_different_seed_different_mask():
    x = _rng(12).standard_normal((T, N, D)) + 3.0
    y1, m1 = Dropout(0.5, rng=42)(x)
    y2, m2 = Dropout(0.5, rng=42)(x)
    y3, _ = Dropout(0.5, rng=43)(x)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(m1, m2)
    assert not np.array_equal(y1, y3)
    # the generator advances: the next call draws a new mask
    drop = Dropout(0.5, rng=42)
    a, _ = drop(x)
    b, _ = drop(x)
    assert not np.array_equal(a, b)


def test_dropout_train_eval_switch():
    x = _rng(13).standard_normal((T, N, D)) + 3.0
    drop = Dropout(0.5, rng=0)
    drop.eval()
    np.testing.assert_array_equal(drop(x)[0], x)
    drop.train()
    assert not np.array_equal(drop(x)[0], x)


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_dropout_rejects_bad_probability(p):
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(p)


def test_dropout_keeps_dtype():
    x = _rng(14).standard_normal((T, N, D)).astype(np.float32)
    y, mask = Dropout(0.3, rng=0)(x)
    assert y.dtype == np.float32 and mask.dtype == np.float32


def test_embedding_negative_padding_idx_counts_from_the_end_like_torch():
    """BUG (src): ``padding_idx=-1`` zeroes row V-1 at init but backward compares ids with -1,
    so row V-1 still receives gradient. torch normalises padding_idx to V + padding_idx."""
    rng = _rng(15)
    emb = Embedding(V, E, padding_idx=-1, rng=rng, dtype=np.float64)
    assert not emb.params["weight"][V - 1].any()
    ids = np.array([[V - 1, 1], [2, V - 1]])
    _, cache = emb(ids)
    emb.backward(rng.standard_normal((2, 2, E)), cache)
    assert not emb.grads["weight"][V - 1].any()


@pytest.mark.parametrize("padding_idx", [V, -V - 1])
def test_embedding_out_of_range_padding_idx_raises_value_error(padding_idx):
    """BUG (src): an out-of-range padding_idx fails with a bare IndexError from NumPy
    (or not at all) instead of a clear ValueError naming the valid range."""
    with pytest.raises(ValueError, match="padding_idx"):
        Embedding(V, E, padding_idx=padding_idx, rng=0)
