"""cross_entropy and binary_cross_entropy_with_logits: values and gradients against torch,
stability at extreme logits, and clear errors for bad targets."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rnnkit.data import IGNORE_INDEX
from rnnkit.losses import binary_cross_entropy_with_logits, cross_entropy

T, N, V = 5, 4, 7


def _logits_targets(seed: int, pad: bool = True):
    rng = np.random.default_rng(seed)
    logits = 3.0 * rng.standard_normal((T, N, V))
    targets = rng.integers(0, V, size=(T, N))
    if pad:  # ragged lengths, padded with ignore_index
        for n, length in enumerate([T, 2, 4, 1]):
            targets[length:, n] = IGNORE_INDEX
    return rng, logits, targets


def _reference_ce(logits, targets, ignore_index, reduction):
    """A plain loop, independent of the implementation under test."""
    total, count = 0.0, 0
    grad = np.zeros_like(logits)
    for idx in np.ndindex(targets.shape):
        y = targets[idx]
        if y == ignore_index:
            continue
        z = logits[idx]
        m = z.max()
        lse = m + math.log(np.exp(z - m).sum())
        total += lse - z[y]
        grad[idx] = np.exp(z - lse)
        grad[idx][y] -= 1
        count += 1
    scale = 1 / count if reduction == "mean" else 1.0
    return total * scale, grad * scale


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("pad", [False, True])
def test_cross_entropy_matches_reference_loop(reduction, pad):
    _, logits, targets = _logits_targets(1, pad)
    loss, dlogits = cross_entropy(logits, targets, reduction=reduction)
    ref_loss, ref_grad = _reference_ce(logits, targets, IGNORE_INDEX, reduction)
    assert isinstance(loss, float)
    assert loss == pytest.approx(ref_loss, rel=1e-13)
    np.testing.assert_allclose(dlogits, ref_grad, rtol=1e-12, atol=1e-15)
    if pad:
        assert not dlogits[targets == IGNORE_INDEX].any()


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("ignore_index", [IGNORE_INDEX, 0])
def test_cross_entropy_matches_torch(reduction, ignore_index):
    torch = pytest.importorskip("torch")
    rng, logits, targets = _logits_targets(2)
    if ignore_index != IGNORE_INDEX:  # a real class id used as padding
        targets[targets == IGNORE_INDEX] = ignore_index
    upstream = float(rng.uniform(0.5, 2.0))

    tl = torch.tensor(logits, requires_grad=True)
    tloss = torch.nn.functional.cross_entropy(
        tl.reshape(-1, V),
        torch.from_numpy(targets).reshape(-1),
        ignore_index=ignore_index,
        reduction=reduction,
    )
    (tloss * upstream).backward()

    loss, dlogits = cross_entropy(logits, targets, ignore_index=ignore_index, reduction=reduction)
    assert loss == pytest.approx(tloss.item(), rel=1e-13)
    np.testing.assert_allclose(dlogits * upstream, tl.grad.numpy(), rtol=1e-12, atol=1e-15)


def test_cross_entropy_gradient_matches_central_differences():
    _, logits, targets = _logits_targets(3)
    logits = logits[:2, :2]
    targets = targets[:2, :2]
    _, dlogits = cross_entropy(logits, targets)
    num = np.zeros_like(logits)
    eps = 1e-6
    for idx in np.ndindex(logits.shape):
        old = logits[idx]
        logits[idx] = old + eps
        plus, _ = cross_entropy(logits, targets)
        logits[idx] = old - eps
        minus, _ = cross_entropy(logits, targets)
        logits[idx] = old
        num[idx] = (plus - minus) / (2 * eps)
    np.testing.assert_allclose(dlogits, num, rtol=1e-6, atol=1e-9)


def test_cross_entropy_stable_for_huge_logits():
    rng = np.random.default_rng(4)
    logits = 1e4 * rng.standard_normal((T, N, V))
    targets = rng.integers(0, V, size=(T, N))
    loss, dlogits = cross_entropy(logits, targets, reduction="sum")
    assert np.isfinite(loss) and np.all(np.isfinite(dlogits))
    ref_loss, ref_grad = _reference_ce(logits, targets, IGNORE_INDEX, "sum")
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    np.testing.assert_allclose(dlogits, ref_grad, atol=1e-12)
    # the loss at the arg-max is exactly zero, and each row's gradient sums to zero
    best = logits.argmax(-1)
    loss_best, d_best = cross_entropy(logits, best)
    assert loss_best == 0.0
    np.testing.assert_allclose(d_best.sum(-1), 0.0, atol=1e-15)


def test_cross_entropy_float32_keeps_dtype_and_large_shift():
    rng = np.random.default_rng(5)
    logits = (1e4 + rng.standard_normal((T, N, V))).astype(np.float32)
    targets = rng.integers(0, V, size=(T, N))
    loss, dlogits = cross_entropy(logits, targets)
    assert dlogits.dtype == np.float32
    ref_loss, _ = _reference_ce(logits.astype(np.float64), targets, IGNORE_INDEX, "mean")
    assert loss == pytest.approx(ref_loss, rel=1e-3)


def test_cross_entropy_does_not_modify_inputs():
    _, logits, targets = _logits_targets(6)
    l0, t0 = logits.copy(), targets.copy()
    cross_entropy(logits, targets)
    np.testing.assert_array_equal(logits, l0)
    np.testing.assert_array_equal(targets, t0)


def test_cross_entropy_all_ignored_raises():
    _, logits, targets = _logits_targets(7)
    targets[...] = IGNORE_INDEX
    with pytest.raises(ValueError, match="ignore_index"):
        cross_entropy(logits, targets)


@pytest.mark.parametrize("bad", [V, -1, -99, 1000])
def test_cross_entropy_out_of_range_target_raises(bad):
    _, logits, targets = _logits_targets(8)
    targets[1, 1] = bad
    with pytest.raises(ValueError, match=rf"\[0, {V}\)"):
        cross_entropy(logits, targets)


@pytest.mark.parametrize("shape", [(T, N + 1), (T,), (T, N, 1), (N, T)])
def test_cross_entropy_shape_mismatch_raises(shape):
    _, logits, _ = _logits_targets(9)
    with pytest.raises(ValueError, match="disagree"):
        cross_entropy(logits, np.zeros(shape, dtype=np.int64))


def test_cross_entropy_bad_reduction_raises():
    _, logits, targets = _logits_targets(10)
    with pytest.raises(ValueError, match="reduction"):
        cross_entropy(logits, targets, reduction="none")


# ---------------------------------------------------------------- binary cross-entropy


def _bce_data(seed: int):
    rng = np.random.default_rng(seed)
    logits = 4.0 * rng.standard_normal((T, N, 3))
    logits[0, 0, :] = [100.0, -100.0, 37.0]
    logits[0, 1, :] = [-37.0, 0.0, 1e-3]
    targets = rng.uniform(0, 1, size=logits.shape)  # soft targets
    targets[1] = rng.integers(0, 2, size=targets[1].shape)  # and hard ones
    targets[0, 0, :] = [0.0, 1.0, 0.0]  # the worst cases: confident and wrong
    return rng, logits, targets


def test_bce_matches_naive_formula_in_safe_range():
    rng = np.random.default_rng(11)
    z = rng.uniform(-5, 5, size=(T, N))
    y = rng.uniform(0, 1, size=(T, N))
    sig = 1 / (1 + np.exp(-z))
    ref = -(y * np.log(sig) + (1 - y) * np.log(1 - sig)).mean()
    loss, grad = binary_cross_entropy_with_logits(z, y)
    assert loss == pytest.approx(ref, rel=1e-12)
    np.testing.assert_allclose(grad, (sig - y) / z.size, rtol=1e-10, atol=1e-16)


def test_bce_matches_torch():
    torch = pytest.importorskip("torch")
    rng, logits, targets = _bce_data(12)
    upstream = float(rng.uniform(0.5, 2.0))
    tz = torch.tensor(logits, requires_grad=True)
    tloss = torch.nn.functional.binary_cross_entropy_with_logits(tz, torch.from_numpy(targets))
    (tloss * upstream).backward()
    loss, grad = binary_cross_entropy_with_logits(logits, targets)
    assert loss == pytest.approx(tloss.item(), rel=1e-13)
    # absolute tolerance far below the gradient's scale (1 / size)
    np.testing.assert_allclose(grad * upstream, tz.grad.numpy(), rtol=1e-10, atol=1e-16)


def test_bce_extreme_logits_are_finite_and_exact():
    z = np.array([100.0, -100.0, 100.0, -100.0, 800.0, -800.0])
    y = np.array([0.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    loss, grad = binary_cross_entropy_with_logits(z, y)
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    # per-element losses: 100, 100, ~0, ~0, 800, ~0
    assert loss == pytest.approx(1000.0 / 6, rel=1e-13)
    np.testing.assert_allclose(grad[[0, 1, 4]] * 6, [1.0, -1.0, 1.0], rtol=1e-15)
    assert np.abs(grad[[2, 3, 5]]).max() < 1e-40


def test_bce_shape_mismatch_raises():
    with pytest.raises(ValueError, match="must match"):
        binary_cross_entropy_with_logits(np.zeros((3, 2)), np.zeros((2, 3)))


def test_bce_gradient_keeps_relative_precision_for_negative_logits():
    """BUG (src, minor): the gradient uses sigmoid = 0.5 * (1 + tanh(z / 2)), which cancels
    catastrophically for z << 0: relative error 1e-8 at z = -20, 2e-4 at z = -30 and 100 %
    (exactly 0) at z = -40, where torch gives sigmoid(z) to full precision."""
    z = np.array([-10.0, -20.0, -30.0, -40.0, -60.0])
    y = np.zeros_like(z)
    _, grad = binary_cross_entropy_with_logits(z, y)
    expected = np.exp(z) / (1 + np.exp(z)) / z.size  # exact enough: exp(z) << 1
    np.testing.assert_allclose(grad, expected, rtol=1e-12)
