"""Optimisers against their torch.optim twins, clipping, non-finite gradients, state round trips
and learning-rate schedules.

The model is a tiny rnnkit Module with two Linear children (so parameter names are dotted); each
step writes random gradients into ``module.grads`` in place (the optimiser holds references to
those arrays) and the same gradients into the torch twin's ``.grad``.
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager

import numpy as np
import pytest

from rnnkit import optim, parallel
from rnnkit.layers import Linear
from rnnkit.module import Module
from rnnkit.optim import (
    OPTIMIZERS,
    SGD,
    Adagrad,
    Adam,
    AdamW,
    NonFiniteGradientError,
    RMSprop,
    clip_grad_norm_,
    clip_grad_value_,
    constant_lr,
    grad_norm,
    step_lr,
    warmup_cosine_lr,
)

STEPS = 20
TOL = 1e-12


class Tiny(Module):
    def __init__(self, seed: int = 0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.add_module("a", Linear(3, 4, rng=rng, dtype=np.float64))
        self.add_module("b", Linear(4, 2, bias=False, rng=rng, dtype=np.float64))
        for _, p in self.named_parameters():  # random, non-zero, not small
            p[...] = rng.standard_normal(p.shape)


def _copy_of(model: Tiny) -> Tiny:
    twin = Tiny(seed=123)
    twin.load_state_dict(model.state_dict())
    return twin


def _random_grads(model: Module, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {name: rng.standard_normal(g.shape) for name, g in model.named_grads()}


def _set_grads(model: Module, grads: dict[str, np.ndarray]) -> None:
    for name, g in model.named_grads():
        g[...] = grads[name]  # in place: the optimiser holds these very arrays


# (our class, our kwargs, torch class name, torch kwargs, our buffer -> torch state key)
CASES = {
    "sgd": (SGD, {"lr": 0.1}, "SGD", {"lr": 0.1}, {}),
    "sgd_momentum": (
        SGD,
        {"lr": 0.05, "momentum": 0.9},
        "SGD",
        {"lr": 0.05, "momentum": 0.9},
        {"momentum": "momentum_buffer"},
    ),
    "sgd_nesterov": (
        SGD,
        {"lr": 0.05, "momentum": 0.8, "nesterov": True},
        "SGD",
        {"lr": 0.05, "momentum": 0.8, "nesterov": True},
        {"momentum": "momentum_buffer"},
    ),
    "sgd_weight_decay": (
        SGD,
        {"lr": 0.05, "momentum": 0.7, "weight_decay": 0.1},
        "SGD",
        {"lr": 0.05, "momentum": 0.7, "weight_decay": 0.1},
        {"momentum": "momentum_buffer"},
    ),
    "sgd_weight_decay_plain": (
        SGD,
        {"lr": 0.1, "weight_decay": 0.3},
        "SGD",
        {"lr": 0.1, "weight_decay": 0.3},
        {},
    ),
    "adagrad": (Adagrad, {"lr": 0.1}, "Adagrad", {"lr": 0.1, "eps": 1e-10}, {"sum": "sum"}),
    "rmsprop": (
        RMSprop,
        {"lr": 0.01, "alpha": 0.9},
        "RMSprop",
        {"lr": 0.01, "alpha": 0.9, "eps": 1e-8},
        {"square_avg": "square_avg"},
    ),
    "rmsprop_momentum": (
        RMSprop,
        {"lr": 0.01, "alpha": 0.95, "momentum": 0.9},
        "RMSprop",
        {"lr": 0.01, "alpha": 0.95, "eps": 1e-8, "momentum": 0.9},
        {"square_avg": "square_avg", "momentum": "momentum_buffer"},
    ),
    "adam": (
        Adam,
        {"lr": 0.05, "betas": (0.8, 0.95)},
        "Adam",
        {"lr": 0.05, "betas": (0.8, 0.95), "eps": 1e-8},
        {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq"},
    ),
    "adam_weight_decay": (
        Adam,
        {"lr": 0.05, "weight_decay": 0.1},
        "Adam",
        {"lr": 0.05, "weight_decay": 0.1},
        {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq"},
    ),
    "adamw": (
        AdamW,
        {"lr": 0.05, "weight_decay": 0.2},
        "AdamW",
        {"lr": 0.05, "weight_decay": 0.2},
        {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq"},
    ),
    "adamw_default_decay": (
        AdamW,
        {"lr": 0.05},
        "AdamW",
        {"lr": 0.05},  # both default to weight_decay = 0.01
        {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq"},
    ),
}


def _torch_twin(torch, model: Module):
    names = [name for name, _ in model.named_parameters()]
    tparams = [torch.nn.Parameter(torch.from_numpy(p.copy())) for _, p in model.named_parameters()]
    return names, tparams


def _assert_matches_torch(model, opt, names, tparams, topt, buffer_map, step):
    ours = dict(model.named_parameters())
    for name, tp in zip(names, tparams):
        np.testing.assert_allclose(
            ours[name], tp.detach().numpy(), rtol=TOL, atol=TOL, err_msg=f"{name} step {step}"
        )
        for kind, tkey in buffer_map.items():
            np.testing.assert_allclose(
                opt.buffers[kind][name],
                topt.state[tp][tkey].numpy(),
                rtol=TOL,
                atol=TOL,
                err_msg=f"{kind}.{name} step {step}",
            )


@pytest.mark.parametrize("case", list(CASES))
def test_optimizer_matches_torch_for_20_steps(case):
    torch = pytest.importorskip("torch")
    cls, kwargs, tname, tkwargs, buffer_map = CASES[case]
    rng = np.random.default_rng(list(CASES).index(case))  # hash() is salted per run
    model = Tiny(seed=1)
    start = {k: v.copy() for k, v in model.state_dict().items()}
    opt = cls(model, **kwargs)
    names, tparams = _torch_twin(torch, model)
    topt = getattr(torch.optim, tname)(tparams, foreach=False, **tkwargs)

    for step in range(1, STEPS + 1):
        grads = _random_grads(model, rng)
        _set_grads(model, grads)
        for name, tp in zip(names, tparams):
            tp.grad = torch.from_numpy(grads[name].copy())
        opt.step()
        topt.step()
        _assert_matches_torch(model, opt, names, tparams, topt, buffer_map, step)
    assert opt.step_count == STEPS
    for name, p in model.named_parameters():  # the weights really moved
        assert np.abs(p - start[name]).max() > 1e-3, name


@pytest.mark.parametrize("case", ["sgd_momentum", "adam", "adamw", "rmsprop_momentum"])
def test_optimizer_follows_lr_changed_between_steps_like_torch(case):
    torch = pytest.importorskip("torch")
    cls, kwargs, tname, tkwargs, buffer_map = CASES[case]
    rng = np.random.default_rng(5)
    model = Tiny(seed=2)
    opt = cls(model, **kwargs)
    names, tparams = _torch_twin(torch, model)
    topt = getattr(torch.optim, tname)(tparams, foreach=False, **tkwargs)
    for step in range(10):
        lr = warmup_cosine_lr(step, kwargs["lr"], total_steps=10, warmup_steps=3, min_lr=1e-3)
        opt.lr = lr
        for group in topt.param_groups:
            group["lr"] = lr
        grads = _random_grads(model, rng)
        _set_grads(model, grads)
        for name, tp in zip(names, tparams):
            tp.grad = torch.from_numpy(grads[name].copy())
        opt.step()
        topt.step()
        _assert_matches_torch(model, opt, names, tparams, topt, buffer_map, step)


def test_sgd_plain_step_by_hand():
    """Without torch: p <- p - lr * g exactly."""
    model = Tiny(seed=3)
    rng = np.random.default_rng(3)
    before = model.state_dict()
    opt = SGD(model, lr=0.25)
    grads = _random_grads(model, rng)
    _set_grads(model, grads)
    opt.step()
    for name, p in model.named_parameters():
        np.testing.assert_array_equal(p, before[name] - 0.25 * grads[name])


def test_adam_first_step_by_hand():
    """Without torch: Adam's first step is lr * g / (|g| + eps') for every entry."""
    model = Tiny(seed=4)
    rng = np.random.default_rng(4)
    before = model.state_dict()
    opt = Adam(model, lr=0.01, eps=1e-8)
    grads = _random_grads(model, rng)
    _set_grads(model, grads)
    opt.step()
    for name, p in model.named_parameters():
        g = grads[name]
        np.testing.assert_allclose(p, before[name] - 0.01 * g / (np.abs(g) + 1e-8), rtol=1e-12)


def test_zero_grad_clears_the_models_gradients():
    model = Tiny(seed=5)
    _set_grads(model, _random_grads(model, np.random.default_rng(5)))
    opt = Adam(model)
    opt.zero_grad()
    assert all(not g.any() for _, g in model.named_grads())


def test_optimizer_constructor_errors():
    model = Tiny()
    for lr in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="learning rate"):
            SGD(model, lr=lr)
    with pytest.raises(ValueError, match="Nesterov"):
        SGD(model, lr=0.1, nesterov=True)


def test_registry_names_every_optimizer():
    assert OPTIMIZERS == {
        "sgd": SGD,
        "adagrad": Adagrad,
        "rmsprop": RMSprop,
        "adam": Adam,
        "adamw": AdamW,
    }


# ---------------------------------------------------------------- clipping


def test_clip_grad_norm_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    for max_norm in (0.5, 2.0, 100.0):  # clipped, clipped, not clipped
        model = Tiny()
        grads = _random_grads(model, rng)
        _set_grads(model, grads)
        names, tparams = _torch_twin(torch, model)
        for name, tp in zip(names, tparams):
            tp.grad = torch.from_numpy(grads[name].copy())
        norm = clip_grad_norm_(model, max_norm)
        tnorm = torch.nn.utils.clip_grad_norm_(tparams, max_norm, foreach=False)
        assert isinstance(norm, float)
        assert norm == pytest.approx(tnorm.item(), rel=1e-13)
        ours = dict(model.named_grads())
        for name, tp in zip(names, tparams):
            np.testing.assert_allclose(ours[name], tp.grad.numpy(), rtol=1e-13, atol=1e-15)
        after = grad_norm(model)
        if max_norm < norm:
            assert after == pytest.approx(max_norm, rel=1e-5)
            assert after < max_norm
        else:
            for name, g in ours.items():
                np.testing.assert_array_equal(g, grads[name])


def test_clip_grad_norm_on_a_dict_and_without_torch():
    rng = np.random.default_rng(7)
    grads = {"x": rng.standard_normal((3, 4)), "y": rng.standard_normal(5)}
    original = {k: v.copy() for k, v in grads.items()}
    expected = math.sqrt(sum(float((v**2).sum()) for v in grads.values()))
    norm = clip_grad_norm_(grads, 1.0)
    assert norm == pytest.approx(expected, rel=1e-14)
    scale = 1.0 / (expected + 1e-6)
    for k in grads:  # clipped in place, in the caller's arrays
        np.testing.assert_allclose(grads[k], original[k] * scale, rtol=1e-14)


def test_clip_grad_norm_takes_a_norm_already_measured():
    rng = np.random.default_rng(8)
    grads = {"x": rng.standard_normal((3, 4)), "y": rng.standard_normal(5)}
    original = {k: v.copy() for k, v in grads.items()}
    measured = grad_norm(grads)
    # the norm given is the one used: no second measurement
    assert clip_grad_norm_(grads, 1.0, norm=2 * measured) == 2 * measured
    for k in grads:
        np.testing.assert_allclose(grads[k], original[k] / (2 * measured + 1e-6), rtol=1e-14)
    same = {k: v.copy() for k, v in original.items()}
    assert clip_grad_norm_(same, 1.0, norm=measured) == clip_grad_norm_(original, 1.0)
    for k in same:
        np.testing.assert_array_equal(same[k], original[k])


def test_clip_grad_value_matches_np_clip_and_torch():
    rng = np.random.default_rng(8)
    model = Tiny()
    grads = {k: 3 * v for k, v in _random_grads(model, rng).items()}
    _set_grads(model, grads)
    clip_grad_value_(model, 1.5)
    for name, g in model.named_grads():
        np.testing.assert_array_equal(g, np.clip(grads[name], -1.5, 1.5))
    every = np.concatenate([g.ravel() for g in grads.values()])
    assert (np.abs(every) < 1.5).any() and (np.abs(every) > 1.5).any()  # both cases present
    torch = pytest.importorskip("torch")
    names, tparams = _torch_twin(torch, model)
    for name, tp in zip(names, tparams):
        tp.grad = torch.from_numpy(grads[name].copy())
    torch.nn.utils.clip_grad_value_(tparams, 1.5)
    ours = dict(model.named_grads())
    for name, tp in zip(names, tparams):
        np.testing.assert_array_equal(ours[name], tp.grad.numpy())


# ---------------------------------------------------------------- non-finite gradients


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("cls", [SGD, Adagrad, RMSprop, Adam, AdamW])
def test_non_finite_gradient_changes_nothing(cls, bad):
    rng = np.random.default_rng(9)
    model = Tiny(seed=6)
    opt = cls(model, lr=0.05, **({"momentum": 0.9} if cls in (SGD, RMSprop) else {}))
    twin = _copy_of(model)
    topt = cls(twin, lr=0.05, **({"momentum": 0.9} if cls in (SGD, RMSprop) else {}))
    for _ in range(3):
        grads = _random_grads(model, rng)
        _set_grads(model, grads)
        _set_grads(twin, grads)
        opt.step()
        topt.step()

    weights = model.state_dict()
    state = opt.state_dict()
    grads = _random_grads(model, rng)
    grads["a.bias"][2] = bad
    _set_grads(model, grads)

    norm = clip_grad_norm_(model, 1.0)
    assert not math.isfinite(norm)
    for name, g in model.named_grads():  # untouched, finite entries included
        np.testing.assert_array_equal(g, grads[name])

    with pytest.raises(NonFiniteGradientError, match="a.bias"):
        opt.step()
    assert isinstance(NonFiniteGradientError("x"), ValueError)
    for name, p in model.named_parameters():
        np.testing.assert_array_equal(p, weights[name])
    after = opt.state_dict()
    assert after["step"] == state["step"] == 3
    assert after["buffers"].keys() == state["buffers"].keys()
    for key, buf in state["buffers"].items():
        np.testing.assert_array_equal(after["buffers"][key], buf)

    # training goes on as if the bad batch never happened
    for _ in range(3):
        grads = _random_grads(model, rng)
        _set_grads(model, grads)
        _set_grads(twin, grads)
        opt.step()
        topt.step()
    for (name, p), (_, q) in zip(model.named_parameters(), twin.named_parameters()):
        np.testing.assert_array_equal(p, q, err_msg=name)


@contextmanager
def _on_threads(n: int):
    """rnnkit's calls on ``n`` threads for the duration; the setting before comes back."""
    before = parallel.num_threads()
    parallel.set_num_threads(n)
    try:
        yield
    finally:
        parallel.set_num_threads(before)


def _same_steps(models: dict, opts: dict, rng: np.random.Generator, steps: int = 3) -> dict:
    """``steps`` steps of the same random gradients, each model's optimiser on as many threads
    as its key says; returns the last gradients."""
    for _ in range(steps):
        grads = _random_grads(models[1], rng)
        for threads, model in models.items():
            _set_grads(model, grads)
            with _on_threads(threads):
                opts[threads].step()
    return grads


@pytest.mark.parametrize("case", list(CASES))
def test_a_large_models_step_on_threads_equals_one_thread(case):
    """Past ``_SPLIT`` parameters each parameter's update runs on rnnkit's threads: bit for bit
    the numbers of one thread, and still nothing changes on a non-finite gradient."""
    cls, kwargs = CASES[case][:2]

    class Large(Module):
        def __init__(self):
            super().__init__()
            self.add_module("a", Linear(300, 400, rng=1, dtype=np.float64))
            self.add_module("b", Linear(400, 30, rng=2, dtype=np.float32))

    models = {threads: Large() for threads in (1, 2)}
    assert sum(p.size for _, p in models[2].named_parameters()) > optim._SPLIT
    opts = {threads: cls(model, **kwargs) for threads, model in models.items()}
    grads = _same_steps(models, opts, np.random.default_rng(4))
    weights = models[2].state_dict()
    grads["b.weight"][3, 7] = np.nan
    _set_grads(models[2], grads)
    with _on_threads(2), pytest.raises(NonFiniteGradientError, match="b.weight"):
        opts[2].step()
    for (name, p), (_, q) in zip(models[1].named_parameters(), models[2].named_parameters()):
        np.testing.assert_array_equal(p, q, err_msg=name)
        np.testing.assert_array_equal(q, weights[name], err_msg=name)


def test_parameters_that_share_memory_are_updated_in_turn(monkeypatch):
    """One child registered twice: its arrays appear under two names, and two threads would
    update them at once (a race, which shows only now and then). The step then runs on the
    calling thread alone, and gives one thread's numbers."""
    runs = []
    monkeypatch.setattr(parallel, "run", lambda pieces: runs.append(len(pieces)))
    models = {}
    for threads in (1, 2):
        shared, model = Linear(400, 400, rng=1, dtype=np.float64), Module()
        model.add_module("first", shared)
        model.add_module("again", shared)
        models[threads] = model
    opts = {threads: Adam(model, lr=0.01) for threads, model in models.items()}
    assert not opts[2]._apart and opts[2].params["first.weight"].size * 2 > optim._SPLIT
    _same_steps(models, opts, np.random.default_rng(3))
    assert runs == []  # no update went to rnnkit's threads
    for (name, p), (_, q) in zip(models[1].named_parameters(), models[2].named_parameters()):
        np.testing.assert_array_equal(p, q, err_msg=name)


# ---------------------------------------------------------------- state dict round trip


@pytest.mark.parametrize("case", list(CASES))
def test_state_dict_round_trip_resumes_bit_for_bit(case):
    cls, kwargs, *_ = CASES[case]
    rng = np.random.default_rng(10)
    model = Tiny(seed=7)
    opt = cls(model, **kwargs)
    for _ in range(5):
        _set_grads(model, _random_grads(model, rng))
        opt.step()

    state = opt.state_dict()
    json.dumps({k: v for k, v in state.items() if k != "buffers"})  # JSON-friendly
    model2 = _copy_of(model)
    opt2 = cls(model2, **kwargs)
    opt2.load_state_dict(state)
    assert opt2.step_count == 5

    # the saved state is a copy: changing it later does not reach either optimiser
    for buf in state["buffers"].values():
        buf += 1.0

    for _ in range(5):
        grads = _random_grads(model, rng)
        _set_grads(model, grads)
        _set_grads(model2, grads)
        opt.step()
        opt2.step()
    for (name, p), (_, q) in zip(model.named_parameters(), model2.named_parameters()):
        np.testing.assert_array_equal(p, q, err_msg=name)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["step"] == s2["step"] == 10 and s1["hyper"] == s2["hyper"]
    assert s1["buffers"].keys() == s2["buffers"].keys()
    for key in s1["buffers"]:
        np.testing.assert_array_equal(s1["buffers"][key], s2["buffers"][key], err_msg=key)


def test_state_dict_round_trip_through_a_checkpoint_file(tmp_path):
    from rnnkit.checkpoint import load_checkpoint, save_checkpoint

    rng = np.random.default_rng(11)
    model = Tiny(seed=8)
    opt = Adam(model, lr=0.02, weight_decay=0.05)
    for _ in range(5):
        _set_grads(model, _random_grads(model, rng))
        opt.step()
    state = opt.state_dict()
    buffers = state.pop("buffers")
    arrays = {f"model.{k}": v for k, v in model.state_dict().items()}
    arrays |= {f"optim.{k}": v for k, v in buffers.items()}
    save_checkpoint(tmp_path / "ck.safetensors", arrays, {"optimizer": state})

    arrays, meta = load_checkpoint(tmp_path / "ck.safetensors")
    model2 = Tiny(seed=99)
    model2.load_state_dict({k[6:]: v for k, v in arrays.items() if k.startswith("model.")})
    opt2 = Adam(model2, lr=0.02, weight_decay=0.05)
    restored = dict(meta["optimizer"])
    restored["buffers"] = {k[6:]: v for k, v in arrays.items() if k.startswith("optim.")}
    opt2.load_state_dict(restored)
    for _ in range(5):
        grads = _random_grads(model, rng)
        _set_grads(model, grads)
        _set_grads(model2, grads)
        opt.step()
        opt2.step()
    for (name, p), (_, q) in zip(model.named_parameters(), model2.named_parameters()):
        np.testing.assert_array_equal(p, q, err_msg=name)


def test_load_state_dict_restores_lr_and_rejects_mismatches():
    model = Tiny()
    opt = SGD(model, lr=0.3, momentum=0.9)
    _set_grads(model, _random_grads(model, np.random.default_rng(12)))
    opt.step()
    state = opt.state_dict()

    fresh = SGD(Tiny(), lr=0.1, momentum=0.9)
    fresh.load_state_dict(state)
    assert fresh.lr == 0.3

    with pytest.raises(ValueError, match="SGD"):
        Adam(Tiny()).load_state_dict(state)
    bad = dict(state, buffers={"velocity.a.weight": np.zeros((4, 3))})
    with pytest.raises(ValueError, match="velocity.a.weight"):
        SGD(Tiny(), momentum=0.9).load_state_dict(bad)
    bad = dict(state, buffers={"momentum.a.nothing": np.zeros((4, 3))})
    with pytest.raises(ValueError, match="a.nothing"):
        SGD(Tiny(), momentum=0.9).load_state_dict(bad)
    bad = dict(state, buffers={**state["buffers"], "momentum.a.weight": np.zeros((3, 4))})
    with pytest.raises(ValueError, match=r"'momentum.a.weight' is float64 \(3, 4\)"):
        SGD(Tiny(), momentum=0.9).load_state_dict(bad)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"buffers": {}}, "missing"),  # the optimiser's state lost: it would restart from zero
        ({"step": -1}, "step must be a whole number >= 0"),
        ({"step": True}, "step must be a whole number"),
        ({"step": 2.5}, "step must be a whole number"),
        ({"hyper": {"lr": float("nan")}}, "learning rate must be a number > 0"),
        ({"hyper": {}}, "learning rate"),
        ({"type": "SGD"}, "optimiser state is for 'SGD'"),
    ],
)
def test_load_state_dict_refuses_a_state_no_run_reaches(change, message):
    """Adam's buffers missing at step 3, a negative or boolean step, a learning rate that is
    not a number: each raises, and the optimiser is left as it was."""
    model = Tiny()
    opt = Adam(model, lr=0.01)
    for seed in range(3):
        _set_grads(model, _random_grads(model, np.random.default_rng(seed)))
        opt.step()
    target = Adam(Tiny(), lr=0.02)
    with pytest.raises(ValueError, match=message):
        target.load_state_dict({**opt.state_dict(), **change})
    assert (
        target.step_count == 0
        and target.lr == 0.02
        and target.buffers
        == {
            "exp_avg": {},
            "exp_avg_sq": {},
        }
    )


def test_a_state_at_step_zero_has_no_buffers_and_sgd_without_momentum_none():
    model = Tiny()
    Adam(Tiny()).load_state_dict(Adam(model).state_dict())  # step 0, no buffers: fine
    plain = SGD(model, lr=0.1)
    _set_grads(model, _random_grads(model, np.random.default_rng(1)))
    plain.step()
    SGD(Tiny(), lr=0.1).load_state_dict(plain.state_dict())  # no momentum: no buffers
    with pytest.raises(ValueError, match="missing"):
        SGD(Tiny(), lr=0.1, momentum=0.5).load_state_dict(plain.state_dict())


# ---------------------------------------------------------------- schedules


def test_constant_and_step_schedules():
    assert [constant_lr(s, 0.3) for s in (0, 1, 1000)] == [0.3, 0.3, 0.3]
    got = [step_lr(s, 0.1, step_size=10, gamma=0.5) for s in (0, 9, 10, 19, 20, 35)]
    assert got == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.0125], rel=1e-15)
    assert step_lr(25, 1.0, step_size=10) == pytest.approx(0.01, rel=1e-15)


def test_warmup_cosine_schedule_values():
    f = [warmup_cosine_lr(s, 1.0, total_steps=110, warmup_steps=10, min_lr=0.1) for s in range(200)]
    assert f[0] == pytest.approx(0.1)  # (0 + 1) / 10
    assert f[4] == pytest.approx(0.5)
    assert f[9] == pytest.approx(1.0)
    assert f[10] == pytest.approx(1.0)  # cosine starts at the peak
    assert f[60] == pytest.approx(0.55)  # half way: (lr + min_lr) / 2
    assert f[35] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.25)))
    assert f[110] == pytest.approx(0.1) and f[199] == pytest.approx(0.1)  # stays at min_lr
    assert all(a <= b for a, b in zip(f[:10], f[1:11]))  # rises through the warm-up
    assert all(a >= b for a, b in zip(f[10:110], f[11:111]))  # then decays


def test_cosine_without_warmup_matches_torch_cosine_annealing():
    torch = pytest.importorskip("torch")
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.5)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=20, eta_min=0.01)
    for step in range(20):
        ours = warmup_cosine_lr(step, 0.5, total_steps=20, min_lr=0.01)
        assert ours == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12), step
        opt.step()
        sched.step()


def test_grad_norm_of_large_float32_gradients_does_not_overflow():
    """Squares of 1e20 overflow float32; the norm is summed in float64 and stays finite."""
    from rnnkit.layers import Linear
    from rnnkit.optim import clip_grad_norm_, grad_norm

    layer = Linear(3, 2, rng=0)
    layer.grads["weight"][...] = 1e20
    assert grad_norm(layer) == pytest.approx(1e20 * np.sqrt(6), rel=1e-6)
    clip_grad_norm_(layer, 1.0)
    assert np.all(np.isfinite(layer.grads["weight"]))
    assert grad_norm(layer) == pytest.approx(1.0, rel=1e-5)
