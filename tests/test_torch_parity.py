"""The same weights in torch.nn.RNN / GRU / LSTM give the same outputs, final states and gradients.

Weights come from rnnkit and move to torch through the state dict, unrenamed. Variable lengths
are compared against ``pack_padded_sequence(enforce_sorted=False)`` and
``pad_packed_sequence(total_length=T)``. Upstream gradients are random for the output (masked
past each length, where both libraries output constant zeros) and for every final state.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import as_tuple, make_layer, random_lengths, random_state  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

T, N, D, H = 6, 3, 4, 5
CELLS = ["rnn_tanh", "rnn_relu", "gru", "lstm", "lstm_proj"]
TOLERANCE = {np.float64: 1e-9, np.float32: 1e-5}
TORCH_DTYPE = {np.float64: torch.float64, np.float32: torch.float32}


def _torch_layer(layer, variant: str):
    cls = {"rnn_tanh": torch.nn.RNN, "rnn_relu": torch.nn.RNN, "gru": torch.nn.GRU}.get(
        variant, torch.nn.LSTM
    )
    kwargs = {}
    if variant.startswith("rnn"):
        kwargs["nonlinearity"] = variant[4:]
    if variant == "lstm_proj":
        kwargs["proj_size"] = layer.proj_size
    return cls(
        layer.input_size,
        layer.hidden_size,
        num_layers=layer.num_layers,
        bias=layer.bias,
        batch_first=layer.batch_first,
        bidirectional=layer.bidirectional,
        dtype=TORCH_DTYPE[layer.dtype.type],
        **kwargs,
    )


def _torch_forward(tlayer, x, state, lengths):
    """torch output padded back to T (zeros past each length) and final state(s)."""
    if lengths is None:
        out, final = tlayer(x, state)
    else:
        packed = pack_padded_sequence(
            x, torch.as_tensor(lengths), batch_first=tlayer.batch_first, enforce_sorted=False
        )
        out, final = tlayer(packed, state)
        out, _ = pad_packed_sequence(out, batch_first=tlayer.batch_first, total_length=T)
    return out, final


def _assert_close(ours, theirs, tol, name):
    theirs = theirs.detach().numpy() if hasattr(theirs, "detach") else theirs
    assert ours.shape == theirs.shape, name
    np.testing.assert_allclose(ours, theirs, rtol=tol, atol=tol, err_msg=name)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2], ids=["L1", "L2"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("variant", CELLS)
def test_matches_torch(variant, bias, num_layers, bidirectional, batch_first, with_lengths, dtype):
    tol = TOLERANCE[dtype]
    rng = np.random.default_rng(
        [CELLS.index(variant), bias, num_layers, bidirectional, batch_first, with_lengths]
    )
    layer = make_layer(
        variant,
        D,
        H,
        num_layers=num_layers,
        bias=bias,
        batch_first=batch_first,
        bidirectional=bidirectional,
        rng=rng,
        dtype=dtype,
    )
    tlayer = _torch_layer(layer, variant)
    tlayer.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})

    x = rng.standard_normal((N, T, D) if batch_first else (T, N, D)).astype(dtype)
    state = as_tuple(random_state(layer, N, rng))
    lengths = random_lengths(T, N, rng) if with_lengths else None

    out, final, cache = layer.forward(x, state if len(state) == 2 else state[0], lengths)
    final = as_tuple(final)
    dout = rng.standard_normal(out.shape).astype(dtype)
    if lengths is not None:  # outputs past each length are constant zero in both libraries
        valid = np.arange(T)[:, None] < lengths[None, :]  # (T, N)
        dout *= (valid.T if batch_first else valid)[:, :, None]
    dfinal = tuple(rng.standard_normal(s.shape).astype(dtype) for s in final)
    dx, dstate0 = layer.backward(dout, cache, dfinal if len(dfinal) == 2 else dfinal[0])
    dstate0 = as_tuple(dstate0)

    tx = torch.tensor(x, requires_grad=True)
    tstate = tuple(torch.tensor(s, requires_grad=True) for s in state)
    tout, tfinal = _torch_forward(tlayer, tx, tstate if len(tstate) == 2 else tstate[0], lengths)
    tfinal = as_tuple(tfinal)
    loss = (tout * torch.from_numpy(dout)).sum()
    for s, ds in zip(tfinal, dfinal):
        loss = loss + (s * torch.from_numpy(ds)).sum()
    loss.backward()

    assert tout.dtype == TORCH_DTYPE[dtype] and out.dtype == dtype
    _assert_close(out, tout, tol, "output")
    for i, (s, ts) in enumerate(zip(final, tfinal)):
        _assert_close(s, ts, tol, f"final state {'hc'[i]}_n")
    _assert_close(dx, tx.grad, tol, "d input")
    for i, (ds, ts) in enumerate(zip(dstate0, tstate)):
        _assert_close(ds, ts.grad, tol, f"d {'hc'[i]}_0")
    tgrads = {name: p.grad for name, p in tlayer.named_parameters()}
    assert set(tgrads) == set(layer.grads)
    for name, g in layer.grads.items():
        _assert_close(g, tgrads[name], tol, f"d {name}")


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("variant", CELLS)
def test_torch_state_dict_loads_into_rnnkit(variant, dtype):
    rng = np.random.default_rng([7, CELLS.index(variant)])
    layer = make_layer(variant, D, H, num_layers=2, bidirectional=True, rng=rng, dtype=dtype)
    tlayer = _torch_layer(layer, variant)  # torch's own random initialisation
    layer.load_state_dict(tlayer.state_dict())
    for name, p in tlayer.named_parameters():
        np.testing.assert_array_equal(layer.params[name], p.detach().numpy())
        assert layer.params[name].dtype == dtype
    snapshot = {k: v.copy() for k, v in layer.params.items()}

    tol = TOLERANCE[dtype]
    x = rng.standard_normal((T, N, D)).astype(dtype)
    state = as_tuple(random_state(layer, N, rng))
    lengths = random_lengths(T, N, rng)
    for lens in (None, lengths):
        out, final, _ = layer.forward(x, state if len(state) == 2 else state[0], lens)
        with torch.no_grad():
            tstate = tuple(torch.from_numpy(s) for s in state)
            tout, tfinal = _torch_forward(
                tlayer, torch.from_numpy(x), tstate if len(tstate) == 2 else tstate[0], lens
            )
        _assert_close(out, tout, tol, "output")
        for i, (s, ts) in enumerate(zip(as_tuple(final), as_tuple(tfinal))):
            _assert_close(s, ts, tol, f"final state {'hc'[i]}_n")

    with torch.no_grad():  # later changes to torch's tensors do not reach rnnkit
        for p in tlayer.parameters():
            p.mul_(2.0)
    for name, value in layer.params.items():
        np.testing.assert_array_equal(value, snapshot[name], err_msg=f"{name} aliases torch")
