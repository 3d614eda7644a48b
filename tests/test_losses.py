"""cross_entropy, binary_cross_entropy_with_logits and ctc_loss: values and gradients against
torch (and, for CTC, against a sum over every path), stability at extreme logits, clear errors
for bad targets; the CTC decoders against brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rnnkit import parallel
from rnnkit.ctc import collapse, ctc_beam_decode, ctc_greedy_decode, prefix_beam_search
from rnnkit.data import IGNORE_INDEX
from rnnkit.functional import log_softmax
from rnnkit.losses import binary_cross_entropy_with_logits, cross_entropy, ctc_loss, perplexity

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
def test_cross_entropy_of_many_rows_on_threads_matches_the_loop(reduction):
    """A batch large enough to be split over rnnkit's threads by rows (some rows ignored, one
    span of them all): the same loss and gradient as the plain loop and as one thread."""
    rng = np.random.default_rng(5)
    logits = 3.0 * rng.standard_normal((300, 5, 100))
    targets = rng.integers(0, 100, size=(300, 5))
    targets[100:160] = IGNORE_INDEX
    assert logits.size >> 16 >= 2  # two spans of rows
    before = parallel.num_threads()
    try:
        parallel.set_num_threads(2)
        loss, dlogits = cross_entropy(logits, targets, reduction=reduction)
        parallel.set_num_threads(1)
        one_loss, one_dlogits = cross_entropy(logits, targets, reduction=reduction)
    finally:
        parallel.set_num_threads(before)
    ref_loss, ref_grad = _reference_ce(logits, targets, IGNORE_INDEX, reduction)
    assert loss == pytest.approx(ref_loss, rel=1e-13) and loss == pytest.approx(one_loss, rel=1e-14)
    np.testing.assert_allclose(dlogits, ref_grad, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(dlogits, one_dlogits)


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


# ---------------------------------------------------------------- CTC


def _brute_force_log_p(logp: np.ndarray, blank: int) -> dict[tuple, float]:
    """log P(labels | x) of every labelling, by summing over every path: (T, C) log-probs."""
    import itertools

    T, C = logp.shape
    out: dict[tuple, float] = {}
    for path in itertools.product(range(C), repeat=T):
        key = tuple(collapse(path, blank))
        out[key] = np.logaddexp(out.get(key, -np.inf), sum(logp[t, k] for t, k in enumerate(path)))
    return out


def _min_input_length(target) -> int:
    """S steps, plus a blank between each pair of equal neighbours."""
    return len(target) + sum(a == b for a, b in zip(target[:-1], target[1:]))


def _ctc_case(rng: np.random.Generator, N: int = 6, C: int = 5, S: int = 5, blank: int = 0):
    """Random logits and targets with repeated labels, one target at its minimum feasible
    input length, one empty target, and ragged lengths."""
    labels = [k for k in range(C) if k != blank]
    targets = rng.choice(labels, size=(N, S))
    targets[0, 1] = targets[0, 2] = targets[0, 3]  # a run of three equal labels
    target_lengths = rng.integers(1, S + 1, size=N)
    target_lengths[0], target_lengths[1] = S, 0
    need = [_min_input_length(targets[n, : target_lengths[n]]) for n in range(N)]
    T = max(need) + 4
    input_lengths = np.array([int(rng.integers(max(nd, 1), T + 1)) for nd in need])
    input_lengths[0] = need[0]  # exactly the minimum: a single path of alignments
    logits = 2.0 * rng.standard_normal((T, N, C))
    return logits, targets, input_lengths, target_lengths


def _torch_ctc(logits, targets, input_lengths, target_lengths, blank, reduction, zero_infinity):
    torch = pytest.importorskip("torch")
    z = torch.tensor(logits, requires_grad=True)
    loss = torch.nn.functional.ctc_loss(
        torch.log_softmax(z, dim=-1),
        torch.as_tensor(targets),
        torch.as_tensor(input_lengths),
        torch.as_tensor(target_lengths),
        blank=blank,
        reduction=reduction,
        zero_infinity=zero_infinity,
    )
    loss.sum().backward()
    return loss.detach().numpy(), z.grad.numpy()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("blank", [0, 3])
@pytest.mark.parametrize("seed", range(4))
def test_ctc_matches_torch(reduction, blank, seed):
    logits, targets, input_lengths, target_lengths = _ctc_case(
        np.random.default_rng(seed), blank=blank
    )
    loss, dlogits = ctc_loss(logits, targets, input_lengths, target_lengths, blank, reduction)
    want, want_grad = _torch_ctc(
        logits, targets, input_lengths, target_lengths, blank, reduction, False
    )
    np.testing.assert_allclose(loss, want, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(dlogits, want_grad, rtol=0, atol=1e-9)
    for n, length in enumerate(input_lengths):
        assert not dlogits[length:, n].any()  # nothing past an input's end


def test_ctc_concatenated_targets_equal_padded_ones():
    logits, targets, input_lengths, target_lengths = _ctc_case(np.random.default_rng(7))
    flat = np.concatenate([targets[n, :s] for n, s in enumerate(target_lengths)])
    a = ctc_loss(logits, targets, input_lengths, target_lengths)
    b = ctc_loss(logits, flat, input_lengths, target_lengths)
    want, want_grad = _torch_ctc(logits, flat, input_lengths, target_lengths, 0, "mean", False)
    assert a[0] == pytest.approx(b[0], abs=1e-12) and b[0] == pytest.approx(float(want), abs=1e-9)
    np.testing.assert_allclose(a[1], b[1], atol=1e-12)
    np.testing.assert_allclose(b[1], want_grad, atol=1e-9)


@pytest.mark.parametrize("blank", [0, 2])
def test_ctc_equals_the_sum_over_every_path(blank):
    """Without torch: P(l | x) summed path by path, for every labelling of a short input."""
    rng = np.random.default_rng(3)
    T, C = 5, 3
    logits = rng.standard_normal((T, 1, C))
    logp = log_softmax(logits[:, 0])
    for labels, want in _brute_force_log_p(logp, blank).items():
        loss, _ = ctc_loss(logits, np.array([labels or [0]]), [T], [len(labels)], blank, "sum")
        assert loss == pytest.approx(-want, rel=1e-12), labels


def test_ctc_gradient_matches_central_differences():
    from conftest import numerical_grad

    logits, targets, input_lengths, target_lengths = _ctc_case(np.random.default_rng(11), N=3)
    _, dlogits = ctc_loss(logits, targets, input_lengths, target_lengths)
    num = numerical_grad(
        lambda: ctc_loss(logits, targets, input_lengths, target_lengths)[0], logits
    )
    np.testing.assert_allclose(dlogits, num, rtol=1e-6, atol=1e-9)


def test_ctc_impossible_alignment_is_infinite_or_zeroed():
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((4, 2, 4))
    targets = np.array([[1, 1, 2], [1, 2, 3]])
    lengths = [4, 2]  # the second needs 3 steps; the first (1 - 1 2) needs 4 and has them
    losses, dlogits = ctc_loss(logits, targets, lengths, [3, 3], reduction="none")
    assert np.isfinite(losses[0]) and losses[1] == np.inf
    assert not dlogits[:, 1].any() and dlogits[:, 0].any()  # no nan: the gradient is zero
    mean, _ = ctc_loss(logits, targets, lengths, [3, 3])
    assert mean == np.inf
    zeroed, dz = ctc_loss(logits, targets, lengths, [3, 3], zero_infinity=True)
    assert zeroed == pytest.approx(losses[0] / 3 / 2)
    want, want_grad = _torch_ctc(logits, targets, lengths, [3, 3], 0, "mean", True)
    assert zeroed == pytest.approx(float(want), abs=1e-9)
    np.testing.assert_allclose(dz, want_grad, atol=1e-9)
    inf_torch, _ = _torch_ctc(logits, targets, lengths, [3, 3], 0, "none", False)
    assert inf_torch[1] == np.inf  # PyTorch agrees that the loss is infinite


def test_ctc_keeps_float32_and_leaves_its_inputs_alone():
    logits, targets, input_lengths, target_lengths = _ctc_case(np.random.default_rng(2))
    x = logits.astype(np.float32)
    before = x.copy()
    loss, dlogits = ctc_loss(x, targets, input_lengths, target_lengths)
    assert dlogits.dtype == np.float32 and isinstance(loss, float)
    np.testing.assert_array_equal(x, before)
    want, _ = ctc_loss(logits, targets, input_lengths, target_lengths)
    assert loss == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize(
    "targets, lengths, match",
    [
        ([[1, 0]], ([3], [2]), "holds the blank"),
        ([[1, 9]], ([3], [2]), r"lie in \[0, 4\)"),
        ([[1, 2]], ([0], [2]), r"input lengths must lie in \[1, 3\]"),
        ([[1, 2]], ([4], [2]), r"input lengths must lie in \[1, 3\]"),
        ([[1, 2]], ([3], [3]), "exceeds the targets' width"),
        ([1, 2, 3], ([3], [2]), "sum\\(target_lengths\\) = 2"),
    ],
)
def test_ctc_bad_arguments_raise(targets, lengths, match):
    with pytest.raises(ValueError, match=match):
        ctc_loss(np.zeros((3, 1, 4)), np.array(targets), *lengths)


def test_collapse_and_greedy_decoding_by_hand():
    assert collapse([1, 1, 0, 2, 0, 2, 2]) == [1, 2, 2]
    assert collapse([3, 3, 1, 3], blank=3) == [1]
    logits = np.full((5, 2, 3), -5.0)
    for t, k in enumerate([1, 1, 0, 1, 2]):  # sequence 0: 1 1 - 1 2 -> 1 1 2
        logits[t, 0, k] = 5.0
    for t, k in enumerate([2, 0, 2, 2, 1]):  # sequence 1, 3 steps real: 2 - 2 -> 2 2
        logits[t, 1, k] = 5.0
    assert ctc_greedy_decode(logits, [5, 3]) == [[1, 1, 2], [2, 2]]


@pytest.mark.parametrize("seed", range(5))
def test_prefix_beam_search_finds_the_most_likely_labelling(seed):
    rng = np.random.default_rng(seed)
    logp = log_softmax(1.5 * rng.standard_normal((6, 3)))
    every = _brute_force_log_p(logp, blank=0)
    best = max(every, key=every.get)
    labels, log_p = prefix_beam_search(logp, beam_width=64)
    assert tuple(labels) == best and log_p == pytest.approx(every[best], rel=1e-12)
    # a narrow beam loses the paths through pruned prefixes: a lower bound on the probability
    labels, log_p = prefix_beam_search(logp, beam_width=2)
    assert log_p <= every[tuple(labels)] + 1e-12


def test_beam_beats_greedy_where_the_best_path_misleads():
    # each step: blank 0.6, label 1 0.4. Best path: all blanks (empty labelling, 0.6^2 = 0.36);
    # but P(1) = 0.4*0.4 + 2 * 0.4*0.6 = 0.64.
    logits = np.log(np.array([[[0.6, 0.4]], [[0.6, 0.4]]]))
    assert ctc_greedy_decode(logits) == [[]]
    assert ctc_beam_decode(logits, beam_width=4) == [[1]]


def test_perplexity_is_exp_of_the_loss_and_inf_past_a_float():
    assert perplexity(math.log(5.0)) == pytest.approx(5.0)
    assert perplexity(709.0) == pytest.approx(math.exp(709.0))
    assert perplexity(710.0) == math.inf and perplexity(5.7e29) == math.inf
