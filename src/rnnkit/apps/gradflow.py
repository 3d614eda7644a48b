"""Vanishing gradients made visible: how much of a loss's gradient reaches each earlier step.

For an RNN, a GRU and an LSTM of the same size, a loss is placed on the last step only
(T = 100) of a task whose answer is the *first* token, and backpropagation through time is run
by hand over the cells of :mod:`rnnkit.cells` (:mod:`rnnkit.gradflow`), recording
``|dL/da<t>|`` at every step::

    dL/da<t-1> = (da<t>/da<t-1>)^T dL/da<t>          (and for the LSTM through c<t> as well)

For the vanilla RNN each factor is ``W_aa^T diag(1 - a<t>^2)``, whose norm is below one, so
the gradient shrinks geometrically: the first token cannot be learned. The gated cells add an
additive path (``c<t> = Γf*c<t-1> + Γu*c̃<t>``, ``a<t> = Γu*c̃<t> + (1-Γu)*a<t-1>``) whose
factor is the gate itself; when the gates start by carrying (``--gate-bias``), the gradient
arrives almost whole and a few hundred steps of training solve the task.

Run as ``rnnkit gradflow``; prints the table and, when matplotlib is installed, draws it.
"""

from __future__ import annotations

import argparse
import io
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..checkpoint import atomic_write_bytes
from ..gates import LSTM_GATES, gate_slices
from ..gradflow import stack_forward, stack_state_gradients
from ..losses import cross_entropy
from ..models import SequenceClassifier
from ..module import predicting
from ..train import TrainConfig, train
from .baselines import accuracy
from .common import AppParser, entry_points, positive_float, positive_int

SUMMARY = "vanishing gradients: |dL/da<t>| over 100 steps for RNN, GRU and LSTM, before/after"
PROG = "rnnkit gradflow"
CELLS_SHOWN = ("rnn", "gru", "lstm")
TABLE_STEPS = (1, 10, 25, 50, 75, 100)
NUM_CLASSES = 2  # tokens 0 and 1 are the classes; the others are distractors
LABELS = {"rnn": "RNN (tanh)", "gru": "GRU", "lstm": "LSTM"}
COLORS = {"rnn": "#d62728", "gru": "#1f77b4", "lstm": "#2ca02c"}


@dataclass
class GradFlowConfig:
    """The experiment; every cell gets the same."""

    seq_len: int = 100  # T: the loss sits at step T, the answer at step 1
    hidden_size: int = 32  # H, the same for every cell
    vocab_size: int = 10  # 2 class tokens + 8 distractor tokens
    gate_bias: float = 4.0  # GRU carry_bias and LSTM forget_bias: the state starts carried
    input_bias: float = -1.0  # added to the LSTM's input-gate bias: distractors write less
    steps: int = 300  # Adam steps of training
    batch_size: int = 32  # sequences per training step
    lr: float = 0.01  # Adam's learning rate
    measure_size: int = 64  # sequences the gradient norms are averaged over
    eval_size: int = 1000  # fresh sequences for the accuracy after training
    cells: tuple[str, ...] = CELLS_SHOWN
    seed: int = 0


@dataclass
class CellResult:
    """One cell: its gradient norms (index t = 0..T, a<0> the initial state) before and after."""

    cell: str
    num_parameters: int
    init_norms: np.ndarray  # (T+1,)
    trained_norms: np.ndarray | None = None  # (T+1,)
    init_accuracy: float = math.nan
    trained_accuracy: float = math.nan
    final_loss: float = math.nan
    seconds: float = 0.0


def first_token_batch(
    rng: np.random.Generator, T: int, N: int, vocab_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """``ids (T, N)``, ``y (N,)``: the first token is the class (0 or 1), the T - 1 tokens after
    it are distractors drawn from the rest of the vocabulary."""
    ids = rng.integers(NUM_CLASSES, vocab_size, (T, N))
    y = rng.integers(0, NUM_CLASSES, N)
    ids[0] = y
    return ids, y


def build_model(cell: str, config: GradFlowConfig, rng: np.random.Generator) -> SequenceClassifier:
    """A float64 many-to-one classifier (embedding, one recurrent layer, linear head).

    ``gate_bias`` b makes the gated cells start by carrying their state: the GRU keeps
    1 - Γu = σ(b) of it each step (``carry_bias``), the LSTM Γf = σ(b) (``forget_bias``).
    ``input_bias`` lowers the LSTM's input gate (Γu = σ(input_bias) at the start), so that 99
    distractors do not fill its memory cell; the GRU's Γu does both jobs at once. Both 0 is
    PyTorch's initialisation.
    """
    b = config.gate_bias
    options = {"gru": {"carry_bias": b}, "lstm": {"forget_bias": b}}.get(cell, {})
    model = SequenceClassifier(
        config.vocab_size,
        NUM_CLASSES,
        config.hidden_size,
        cell=cell,
        rnn_options=options,
        rng=rng,
        dtype=np.float64,
    )
    if cell == "lstm" and config.input_bias:
        cols = gate_slices(LSTM_GATES, config.hidden_size)["i"]
        model.rnn.params["bias_ih_l0"][cols] += config.input_bias
    return model


def hidden_gradients(model: SequenceClassifier, ids: np.ndarray, y: np.ndarray) -> list:
    """``[dL/da<0>, dL/da<1>, ..., dL/da<T>]``, each ``(N, H)``, for the loss at step T.

    ``L`` is the cross-entropy of each sequence summed over the batch (so row n of each array is
    the gradient of sequence n's own loss), computed from the final hidden state a<T> through
    the model's head. BPTT runs over the cell's step functions (:mod:`rnnkit.gradflow`) so
    that the gradient reaching every a<t> can be recorded; it matches the layer's own
    backward (whose initial-state gradient is dL/da<0>).
    """
    rnn = model.rnn
    if rnn.num_layers != 1 or rnn.num_directions != 1:
        raise ValueError("hidden_gradients needs a one-layer, one-direction recurrent layer")
    emb, _ = model.embedding.forward(ids)  # (T, N, E)
    layers = stack_forward(rnn, emb)
    final = layers[0].outputs[-1]  # a<T>, (N, H)
    w, b = model.head.params["weight"], model.head.params["bias"]
    _, dlogits = cross_entropy(final @ w.T + b, y, reduction="sum")
    dout = np.zeros_like(layers[0].outputs)
    dout[-1] = dlogits @ w  # dL/da<T>
    return list(stack_state_gradients(layers, dout)[0])


def gradient_norms(grads: list) -> np.ndarray:
    """``(T+1,)``: for each step, the mean over sequences of ``|dL/da<t>|`` (L2 norm)."""
    return np.array([np.linalg.norm(g, axis=1).mean() for g in grads])


class FirstTokenTask:
    """The training task for :func:`rnnkit.train.train`: fresh batches every step."""

    def __init__(self, config: GradFlowConfig, rng: np.random.Generator):
        self.config, self.rng = config, rng
        self.val = first_token_batch(rng, config.seq_len, 256, config.vocab_size)

    def train_step(self, model: SequenceClassifier) -> float:
        """One fresh batch forward and backward; returns its loss."""
        c = self.config
        ids, y = first_token_batch(self.rng, c.seq_len, c.batch_size, c.vocab_size)
        logits, cache = model.forward(ids)
        loss, dlogits = cross_entropy(logits, y)
        model.backward(dlogits, cache)
        return loss

    def evaluate(self, model: SequenceClassifier) -> float:
        """The loss on a fixed batch of 256 sequences, in evaluation mode."""
        with predicting(model):
            logits, _ = model.forward(self.val[0])
        return cross_entropy(logits, self.val[1])[0]

    def state_dict(self) -> tuple[dict, dict]:
        """No arrays; the batch generator's state."""
        return {}, {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, arrays: dict, meta: dict) -> None:
        """Continue from :meth:`state_dict`."""
        self.rng.bit_generator.state = meta["rng"]


def run_gradflow(
    config: GradFlowConfig, log: Callable[[str], None] | None = None
) -> list[CellResult]:
    """Measure, train, measure again, for each cell of ``config.cells``; ``log`` gets one line
    per cell.

    Every cell sees the same measurement batch, the same training batches and the same
    evaluation batch (each stream seeded from ``config.seed``). With ``config.steps == 0``
    only the initial norms are measured.
    """
    seeds = np.random.SeedSequence(config.seed).spawn(4)
    measure = first_token_batch(
        np.random.default_rng(seeds[0]), config.seq_len, config.measure_size, config.vocab_size
    )
    held_out = first_token_batch(
        np.random.default_rng(seeds[1]), config.seq_len, config.eval_size, config.vocab_size
    )
    results = []
    for cell in config.cells:
        model = build_model(cell, config, np.random.default_rng(seeds[2]))
        result = CellResult(
            cell,
            model.num_parameters(),
            gradient_norms(hidden_gradients(model, *measure)),
            init_accuracy=_accuracy(model, *held_out),
        )
        if config.steps:
            start = time.perf_counter()
            task = FirstTokenTask(config, np.random.default_rng(seeds[3]))
            history = train(
                model,
                task,
                TrainConfig(
                    steps=config.steps, lr=config.lr, clip=5.0, seed=config.seed, progress="none"
                ),
            )
            result.seconds = time.perf_counter() - start
            result.final_loss = float(np.mean(history.train_loss[-20:]))
            result.trained_norms = gradient_norms(hidden_gradients(model, *measure))
            result.trained_accuracy = _accuracy(model, *held_out)
        if log is not None:
            log(_cell_line(result, config))
        results.append(result)
    return results


def _accuracy(model: SequenceClassifier, ids: np.ndarray, y: np.ndarray) -> float:
    """Accuracy on ``(ids, y)``, in evaluation mode."""
    with predicting(model):
        return accuracy(model.predict(ids), y)


def _cell_line(r: CellResult, config: GradFlowConfig) -> str:
    text = f"{r.cell}: {r.num_parameters:,} parameters"
    if r.trained_norms is not None:
        text += (
            f", {config.steps} steps in {r.seconds:.1f} s, training loss {r.final_loss:.3f}, "
            f"accuracy {100 * r.init_accuracy:.1f}% -> {100 * r.trained_accuracy:.1f}%"
        )
    return text


def table_steps(T: int) -> list[int]:
    """The steps the table shows: 1, 10, 25, 50, 75, 100 scaled to T (always 1 and T)."""
    steps = sorted({max(1, min(T, round(s * T / 100))) for s in TABLE_STEPS} | {1, T})
    return steps


def format_table(results: list[CellResult], config: GradFlowConfig) -> str:
    """The norms at :func:`table_steps`, one column per cell and moment, then their ratios
    and the accuracies."""
    T = config.seq_len
    cols: list[tuple[str, np.ndarray, float]] = []
    for r in results:
        cols.append((f"{r.cell} init", r.init_norms, r.init_accuracy))
        if r.trained_norms is not None:
            cols.append((f"{r.cell} trained", r.trained_norms, r.trained_accuracy))
    width = max(12, *(len(c[0]) + 1 for c in cols))
    head = f"{'t':>7} |" + "".join(f"{name:>{width}}" for name, _, _ in cols)
    lines = [
        f"|dL/da<t>|, mean over {config.measure_size} sequences, loss at t = {T} only:",
        head,
        "-" * len(head),
    ]
    for t in table_steps(T):
        lines.append(f"{t:>7} |" + "".join(f"{n[t]:>{width}.2e}" for _, n, _ in cols))
    lines.append("-" * len(head))
    lines.append(f"{'ratio':>7} |" + "".join(f"{_ratio(n, T):>{width}.1e}" for _, n, _ in cols))
    lines.append(f"{'acc.':>7} |" + "".join(f"{100 * a:>{width - 1}.1f}%" for _, _, a in cols))
    lines.append(
        f"ratio = |dL/da<{T}>| / |dL/da<1>|; acc. = accuracy on {config.eval_size:,} new "
        f"sequences (chance 50%)"
    )
    return "\n".join(lines)


def _ratio(norms: np.ndarray, T: int) -> float:
    return float(norms[T] / norms[1]) if norms[1] > 0 else math.inf


def save_plot(results: list[CellResult], path: Path, config: GradFlowConfig) -> bool:
    """Draw ``|dL/da<t>| / |dL/da<T>|`` against t, log scale, one colour per cell, dashed at
    initialisation and solid after training, into ``path`` (written atomically; the format
    follows its extension, PNG without one). Returns False when matplotlib is missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    T = config.seq_len
    t = np.arange(1, T + 1)
    fig = Figure(figsize=(8, 5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for r in results:
        color, label = COLORS.get(r.cell), LABELS.get(r.cell, r.cell)
        ax.plot(
            t,
            r.init_norms[1:] / r.init_norms[T],
            "--",
            color=color,
            lw=1.8,
            label=f"{label}, at initialisation",
        )
        if r.trained_norms is not None:
            ax.plot(
                t,
                r.trained_norms[1:] / r.trained_norms[T],
                "-",
                color=color,
                lw=2.2,
                label=f"{label}, after {config.steps} steps "
                f"(accuracy {100 * r.trained_accuracy:.0f}%)",
            )
    ax.set_yscale("log")
    ax.set_xlim(1, T)
    ax.set_xlabel(f"time step t  (the loss is at t = {T}; the answer is the token at t = 1)")
    ax.set_ylabel(
        r"$\|\partial L/\partial a^{\langle t\rangle}\|\ /\ "
        rf"\|\partial L/\partial a^{{\langle {T}\rangle}}\|$  (log scale)"
    )
    ax.set_title(
        f"Vanishing gradients: the share of the gradient at t = {T} that reaches step t\n"
        f"hidden size {config.hidden_size}, gate bias {config.gate_bias:g}, "
        f"LSTM input bias {config.input_bias:g}, mean over {config.measure_size} sequences",
        fontsize=10,
    )
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="lower right", fontsize=9)
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format=path.suffix[1:].lower() or None)  # PNG unless the name says
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, image.getvalue())
    return True


def build_parser() -> AppParser:
    """The command line of ``rnnkit gradflow``."""
    p = AppParser(
        prog=PROG,
        description=(
            "Vanishing gradients made visible. For a vanilla RNN, a GRU and an LSTM of the same "
            "size, put a loss at the last of T steps on a task whose answer is the first token, "
            "and measure |dL/da<t>| at every step, at initialisation and after a short "
            "training. Prints the table; saves a plot when matplotlib is installed."
        ),
    )
    p.add_argument("--seq-len", type=positive_int, default=100, help="T, the number of steps")
    p.add_argument("--hidden-size", type=positive_int, default=32, help="H of every cell")
    p.add_argument(
        "--gate-bias",
        type=float,
        default=4.0,
        help="start the gated cells carrying their state: GRU carry_bias and LSTM forget_bias "
        "(0 is PyTorch's initialisation)",
    )
    p.add_argument(
        "--input-bias",
        type=float,
        default=-1.0,
        help="added to the LSTM's input-gate bias, so distractors write less",
    )
    p.add_argument("--steps", type=int, default=300, help="training steps (0: only measure)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="sequences per step")
    p.add_argument("--lr", type=positive_float, default=0.01, help="Adam's learning rate")
    p.add_argument(
        "--distractors", type=positive_int, default=8, help="distinct tokens after the first"
    )
    p.add_argument("--measure-size", type=positive_int, default=64, help="sequences averaged over")
    p.add_argument(
        "--cells",
        default=",".join(CELLS_SHOWN),
        help="comma-separated cells among rnn, gru, lstm",
    )
    p.add_argument("--plot", default="gradflow.png", help="the PNG to write")
    p.add_argument("--no-plot", action="store_true", help="do not draw")
    p.add_argument("--seed", type=int, default=0, help="seeds weights and data")
    return p


def _run(args: argparse.Namespace) -> int:
    cells = tuple(c.strip() for c in args.cells.split(",") if c.strip())
    bad = [c for c in cells if c not in CELLS_SHOWN]
    if bad or not cells:
        print(
            f"{PROG}: error: --cells takes rnn, gru and/or lstm, got {args.cells!r}",
            file=sys.stderr,
        )
        return 2
    if args.steps < 0:
        print(f"{PROG}: error: --steps must be >= 0, got {args.steps}", file=sys.stderr)
        return 2
    config = GradFlowConfig(
        seq_len=args.seq_len,
        hidden_size=args.hidden_size,
        vocab_size=NUM_CLASSES + args.distractors,
        gate_bias=args.gate_bias,
        input_bias=args.input_bias,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        measure_size=args.measure_size,
        cells=cells,
        seed=args.seed,
    )
    print(
        f"first-token task: T = {config.seq_len}, class token 0 or 1 at t = 1, then "
        f"{config.seq_len - 1} tokens from {args.distractors} distractors; hidden size "
        f"{config.hidden_size}; gate bias {config.gate_bias:g} (LSTM input bias "
        f"{config.input_bias:g}); "
        + (
            f"{config.steps} Adam steps of {config.batch_size} sequences, lr {config.lr:g}; "
            if config.steps
            else "no training; "
        )
        + f"seed {config.seed}",
        flush=True,
    )
    results = run_gradflow(config, log=lambda s: print(s, flush=True))
    print()
    print(format_table(results, config))
    if not args.no_plot:
        path = Path(args.plot)
        if save_plot(results, path, config):
            print(f"plot saved to {path}")
        else:
            print("matplotlib is not installed: no plot (pip install matplotlib)", file=sys.stderr)
    return 0


_, main = entry_points(build_parser, _run)  # rnnkit gradflow [options]
