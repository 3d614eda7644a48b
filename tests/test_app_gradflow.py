"""rnnkit gradflow: the vanishing-gradient lesson, checked on its numbers."""

from __future__ import annotations

import numpy as np
import pytest

from rnnkit.apps import gradflow
from rnnkit.apps.gradflow import (
    GradFlowConfig,
    build_model,
    first_token_batch,
    gradient_norms,
    hidden_gradients,
    run_gradflow,
    table_steps,
)
from rnnkit.cli import main as cli_main
from rnnkit.losses import cross_entropy
from rnnkit.train import TrainingError


def cli_gradflow(argv):
    """``rnnkit gradflow ARGV``, as the command line runs it."""
    return cli_main(["gradflow", *argv])


def ratio(norms: np.ndarray) -> float:
    """|dL/da<T>| / |dL/da<1>|."""
    return norms[-1] / norms[1]


@pytest.fixture(scope="module")
def at_init():
    """Default size and length (H = 32, T = 100), no training: one forward/backward per cell."""
    results = run_gradflow(GradFlowConfig(steps=0, measure_size=16, eval_size=50))
    return {r.cell: r for r in results}


def test_rnn_gradient_vanishes_and_gated_cells_keep_it(at_init):
    assert ratio(at_init["rnn"].init_norms) >= 1e3  # in fact about 1e35
    assert ratio(at_init["lstm"].init_norms) < 1e2
    assert ratio(at_init["gru"].init_norms) < 1e2
    # the RNN's norm falls at every step back in time; by t = 50 it is already below 1e-10
    rnn = at_init["rnn"].init_norms
    assert np.all(np.diff(np.log(rnn[1:])) > 0)
    assert rnn[50] < 1e-10 * rnn[100]


def test_with_pytorch_initialisation_the_gated_cells_vanish_too():
    """The gates start half open (σ(0) = 0.5): without a carry bias, every cell loses the
    gradient over 100 steps, which is why forget_bias / carry_bias exist."""
    results = run_gradflow(
        GradFlowConfig(steps=0, measure_size=8, eval_size=50, gate_bias=0, input_bias=0)
    )
    for r in results:
        assert ratio(r.init_norms) > 1e6, r.cell


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_hidden_gradients_agree_with_the_layer_and_with_finite_differences(cell):
    config = GradFlowConfig(seq_len=6, hidden_size=5, vocab_size=5)
    model = build_model(cell, config, np.random.default_rng(3))
    ids, y = first_token_batch(np.random.default_rng(4), 6, 3, 5)
    grads = hidden_gradients(model, ids, y)
    assert len(grads) == 7 and grads[0].shape == (3, 5)

    # the layer's own BPTT: zero output gradient, dL/da<T> as the final-state gradient
    emb, _ = model.embedding.forward(ids)
    out, state, cache = model.rnn.forward(emb)
    h = state[0] if isinstance(state, tuple) else state
    _, dlogits = cross_entropy(model.head.forward(h[0])[0], y, reduction="sum")
    np.testing.assert_allclose(grads[6], dlogits @ model.head.params["weight"], atol=1e-12)
    da_T = grads[6][None]
    dstate = (da_T, np.zeros_like(da_T)) if isinstance(state, tuple) else da_T
    _, dstate0 = model.rnn.backward(np.zeros_like(out), cache, dstate)
    dh0 = dstate0[0] if isinstance(dstate0, tuple) else dstate0
    np.testing.assert_allclose(grads[0], dh0[0], atol=1e-12)

    # and central differences on the initial state a<0>
    def loss(h0):
        s = (h0[None], np.zeros_like(h0[None])) if isinstance(state, tuple) else h0[None]
        _, st, _ = model.rnn.forward(emb, s)
        hT = st[0] if isinstance(st, tuple) else st
        return cross_entropy(model.head.forward(hT[0])[0], y, reduction="sum")[0]

    h0 = np.zeros((3, 5))
    numeric = np.zeros_like(h0)
    for idx in np.ndindex(h0.shape):
        plus, minus = h0.copy(), h0.copy()
        plus[idx] += 1e-6
        minus[idx] -= 1e-6
        numeric[idx] = (loss(plus) - loss(minus)) / 2e-6
    np.testing.assert_allclose(grads[0], numeric, atol=1e-7)


def test_gradient_norms_average_the_rows():
    g = [np.array([[3.0, 4.0], [0.0, 1.0]])]
    np.testing.assert_allclose(gradient_norms(g), [3.0])


def test_first_token_batch_puts_the_answer_first():
    ids, y = first_token_batch(np.random.default_rng(0), 10, 50, 6)
    assert ids.shape == (10, 50)
    np.testing.assert_array_equal(ids[0], y)
    assert ids[1:].min() >= 2  # the distractors are never class tokens


def test_table_steps():
    assert table_steps(100) == [1, 10, 25, 50, 75, 100]
    assert table_steps(20) == [1, 2, 5, 10, 15, 20]


def test_command_prints_the_table(capsys):
    argv = ["--seq-len", "20", "--hidden-size", "8", "--steps", "5", "--measure-size", "4"]
    assert cli_gradflow([*argv, "--no-plot"]) == 0
    out = capsys.readouterr().out
    assert "first-token task: T = 20" in out
    for row in ("      1 |", "     20 |", "  ratio |", "   acc. |"):
        assert row in out
    for col in ("rnn init", "rnn trained", "gru trained", "lstm init", "lstm trained"):
        assert col in out


def test_plot_is_written(tmp_path, capsys, durable_writes):
    pytest.importorskip("matplotlib")
    path = tmp_path / "plots" / "flow.png"
    argv = ["--seq-len", "12", "--hidden-size", "4", "--steps", "2", "--measure-size", "2"]
    assert cli_gradflow([*argv, "--plot", str(path)]) == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"plot saved to {path}" in capsys.readouterr().out
    assert durable_writes == [path]  # a temporary file, fsynced, then renamed into place
    assert [p.name for p in path.parent.iterdir()] == ["flow.png"]
    svg = tmp_path / "flow.svg"  # the format follows the name, as matplotlib's own savefig
    assert cli_gradflow([*argv, "--plot", str(svg)]) == 0
    assert b"<svg" in svg.read_bytes()[:1000]


@pytest.mark.parametrize(
    "argv", [["--cells", "rnn,transformer"], ["--hidden-size", "0"], ["--steps", "-1"]]
)
def test_bad_flags_are_one_line(argv, capsys):
    assert cli_gradflow([*argv, "--no-plot"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rnnkit gradflow: error:") and "\n" not in err


def test_training_that_cannot_go_on_is_one_line_and_exit_1(monkeypatch, capsys):
    def fail(config, log=None):
        raise TrainingError("loss became nan at step 3")

    monkeypatch.setattr(gradflow, "run_gradflow", fail)
    assert cli_gradflow(["--no-plot"]) == 1
    err = capsys.readouterr().err
    assert err == "rnnkit gradflow: error: loss became nan at step 3\n"


def test_help_exits_0(capsys):
    assert cli_gradflow(["--help"]) == 0
    assert "usage: rnnkit gradflow" in capsys.readouterr().out
