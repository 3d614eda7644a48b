"""rnnkit.gradflow: the stack run over the reference cells, and dL/da<t> through every layer."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import numerical_grad
from numpy.testing import assert_allclose

from rnnkit.gradflow import loss_at_last_step, stack_forward
from rnnkit.losses import cross_entropy
from rnnkit.models import LanguageModel

V, H, T, N = 7, 5, 6, 3
VARIANTS = [("rnn", {}), ("gru", {}), ("gru", {"reset_after": False}), ("lstm", {})]
VARIANTS += [("gru", {"simplified": True}), ("lstm", {"peephole": True})]


def make_model(cell: str, options: dict, num_layers: int = 2) -> LanguageModel:
    model = LanguageModel(
        V, H, num_layers, cell, rnn_options=options, rng=np.random.default_rng(1), dtype=np.float64
    )
    for _, p in model.named_parameters():  # non-zero biases, weights large enough to matter
        p += 0.3 * np.random.default_rng(p.size).standard_normal(p.shape)
    return model.eval()


def last_step_loss(model: LanguageModel, ids: np.ndarray, targets: np.ndarray, state=None):
    """``(loss, dlogits, cache)`` for the cross-entropy at the last step only, summed."""
    logits, _, cache = model.forward(ids, state)
    loss, dlast = cross_entropy(logits[-1], targets, reduction="sum")
    dlogits = np.zeros_like(logits)
    dlogits[-1] = dlast
    return loss, dlogits, cache


@pytest.mark.parametrize("cell, options", VARIANTS)
def test_stack_forward_equals_the_layer(cell, options):
    model = make_model(cell, options)
    x = np.random.default_rng(2).standard_normal((T, N, H))
    out, _, _ = model.rnn.forward(x)
    layers = stack_forward(model.rnn, x)
    assert len(layers) == 2 and len(layers[0].caches) == T
    assert_allclose(layers[-1].outputs, out, atol=1e-12)


@pytest.mark.parametrize("cell, options", VARIANTS)
def test_gradient_at_every_initial_state_equals_the_model_backward(cell, options):
    """dL/da<0> of each layer needs the whole chain through time and through the layers above;
    the model's own backward returns it as the initial state's gradient."""
    model = make_model(cell, options)
    rng = np.random.default_rng(3)
    ids, targets = rng.integers(0, V, (T, N)), rng.integers(0, V, N)
    grads = loss_at_last_step(model, ids, targets)
    assert [g.shape for g in grads] == [(T + 1, N, H)] * 2
    _, dlogits, cache = last_step_loss(model, ids, targets)
    dstate0 = model.backward(dlogits, cache)
    dh0 = dstate0[0] if isinstance(dstate0, tuple) else dstate0  # (L, N, H)
    for layer in range(2):
        assert_allclose(grads[layer][0], dh0[layer], rtol=1e-9, atol=1e-12)
    w = model.head.params["weight"]
    assert_allclose(grads[1][T], dlogits[-1] @ w)  # the top state at T: straight from the head


def test_gradient_at_an_inner_state_matches_finite_differences():
    """dL/da<t> at t = 2 of the bottom layer: nudge a<2> through the state the stack restarts
    from, by running steps 3..T from a perturbed state."""
    model = make_model("gru", {}, num_layers=1)
    rng = np.random.default_rng(4)
    ids, targets = rng.integers(0, V, (T, 1)), rng.integers(0, V, 1)
    grads = loss_at_last_step(model, ids, targets)
    _, state, _ = model.forward(ids[:2])  # a<2>, (1, 1, H)
    a2 = state.copy()
    numeric = numerical_grad(lambda: last_step_loss(model, ids[2:], targets, a2)[0], a2)
    assert_allclose(grads[0][2], numeric[0], rtol=1e-6, atol=1e-9)


def test_bidirectional_stacks_are_refused():
    from rnnkit import GRU

    with pytest.raises(ValueError, match="one-direction"):
        stack_forward(GRU(3, 4, bidirectional=True), np.zeros((2, 1, 3)))
