"""The skeleton every application shares: its command line (the training flags declared once,
each with its default, help and check), one way to train and report, one score table, and the
entry points ``run`` and ``main``.

An app module defines ``build_parser()`` (an :class:`AppParser` with
its :class:`TrainingFlags`) and ``body(args) -> dict`` (print the report, return the scores),
then ``run, main = entry_points(build_parser, body)``. Errors a user can cause (``DataError``,
``TextError``, ``TrainingError``, ``OSError``, Ctrl-C) propagate to the command line, which
turns each into one line and an exit status.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np

from ..losses import cross_entropy
from ..models import CELLS, SequenceClassifier
from ..module import Module
from ..optim import OPTIMIZERS
from ..train import BatchTask, History, TrainConfig, train

# ---------------------------------------------------------------- argparse types


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


positive_int = _int_at_least(1)  # argparse type: an integer >= 1
nonnegative_int = _int_at_least(0)  # argparse type: an integer >= 0


def _number_in(test: Callable[[float], bool], where: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"must {where}, got {value}")
        return value

    return parse


fraction = _number_in(lambda v: 0 < v < 1, "lie strictly between 0 and 1")  # (0, 1)
probability = _number_in(lambda v: 0 <= v < 1, "lie in [0, 1)")  # [0, 1)
positive_float = _number_in(lambda v: v > 0, "be > 0")  # > 0
nonnegative_float = _number_in(lambda v: v >= 0, "be >= 0")  # >= 0


# ---------------------------------------------------------------- the parser


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default, unless it is None or False (nothing worth saying); keeps the
    line breaks of a description made of paragraphs (an app's module docstring) and wraps any
    other."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n\n" not in text:
            return super()._fill_text(text, width, indent)
        return "".join(indent + line for line in text.splitlines(keepends=True))


class AppParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr, as everywhere in rnnkit; ``--help``
    shows each option's default and keeps the paragraphs of a docstring description."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Help)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        """Print ``message`` as one line on stderr and exit with status 2."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_data_flags(parser: argparse.ArgumentParser, holds: str, default: str) -> None:
    """``--data-dir`` (a folder holding ``holds``; ``default`` says where it is otherwise), and
    ``--encoding`` and ``--errors`` for reading its text files."""
    parser.add_argument(
        "--data-dir", type=Path, default=None, help=f"folder with {holds} (default: {default})"
    )
    parser.add_argument("--encoding", default="utf-8", help="text encoding of the data files")
    parser.add_argument(
        "--errors",
        choices=("strict", "replace"),
        default="strict",
        help="undecodable bytes: stop with an error, or replace them with U+FFFD",
    )


def add_split_flags(parser: argparse.ArgumentParser, test: bool = True) -> None:
    """``--test-fraction`` (unless the data has its own test split) and ``--val-fraction``."""
    if test:
        parser.add_argument(
            "--test-fraction", type=fraction, default=0.2, help="held out for the score"
        )
    parser.add_argument(
        "--val-fraction", type=fraction, default=0.1, help="of the rest, to validate"
    )


# ---------------------------------------------------------------- the training flags


@dataclass(frozen=True)
class TrainingFlags:
    """An app's training flags and their defaults: :meth:`add_to` declares them on a parser,
    :meth:`config` reads them back as a :class:`TrainConfig`, :meth:`describe` says in one line
    how the model will be trained. The defaults here are what most apps use."""

    steps: int  # --steps: most optimiser steps
    examples: str  # what a batch holds ("sentences"), for --help and the description
    batch_size: int = 32  # --batch-size
    lr: float = 3e-3  # --lr: peak learning rate
    optimizer: str = "adam"  # --optimizer
    lr_schedule: str = "cosine"  # --lr-schedule
    eval_every: int | None = None  # --eval-every; None: no validation set, so no such flag
    patience: int = 0  # --patience (only with eval_every)
    progress: str = "none"  # --progress: apps print their own lines

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        """Declare ``--steps``, ``--batch-size``, ``--lr``, ``--optimizer``, ``--lr-schedule``,
        ``--eval-every`` and ``--patience`` (when the app validates), ``--seed``, ``--progress``."""
        g = parser.add_argument_group("training")
        g.add_argument(
            "--steps", type=positive_int, default=self.steps, help="most optimiser steps"
        )
        g.add_argument(
            "--batch-size",
            type=positive_int,
            default=self.batch_size,
            help=f"{self.examples} per step",
        )
        g.add_argument("--lr", type=positive_float, default=self.lr, help="peak learning rate")
        g.add_argument(
            "--optimizer", choices=list(OPTIMIZERS), default=self.optimizer, help="optimiser"
        )
        g.add_argument(
            "--lr-schedule",
            choices=("constant", "cosine"),
            default=self.lr_schedule,
            help="cosine: decay to 0 over --steps",
        )
        if self.eval_every is not None:
            g.add_argument(
                "--eval-every",
                type=positive_int,
                default=self.eval_every,
                help="validate every N steps",
            )
            g.add_argument(
                "--patience",
                type=nonnegative_int,
                default=self.patience,
                help="stop after N validations without improvement, keeping the best weights "
                "(0: never)",
            )
        g.add_argument("--seed", type=int, default=0, help="seeds the data, weights and batches")
        g.add_argument(
            "--progress",
            choices=("auto", "bar", "line", "none"),
            default=self.progress,
            help="progress display (auto: a bar on a terminal)",
        )

    @staticmethod
    def config(args: argparse.Namespace, **fixed: object) -> TrainConfig:
        """The :class:`TrainConfig` of the flags of :meth:`add_to` (which validates them);
        ``fixed`` sets fields the app decides itself (``warmup_steps``, ``clip``), or
        overrides a flag (a baseline's own ``steps``)."""
        fields = {
            "steps": args.steps,
            "optimizer": args.optimizer,
            "lr": args.lr,
            "lr_schedule": args.lr_schedule,
            "eval_every": getattr(args, "eval_every", 0),
            "patience": getattr(args, "patience", 0),
            "seed": args.seed,
            "progress": args.progress,
        }
        return TrainConfig(**{**fields, **fixed})

    def describe(self, config: TrainConfig, batch: int) -> str:
        """One line: how the model will be trained, ``batch`` examples a step."""
        schedule = "cosine schedule" if config.lr_schedule == "cosine" else "constant"
        text = (
            f"training: up to {config.steps} {config.optimizer} steps of {batch} "
            f"{self.examples}, lr {config.lr:g} ({schedule}), clip {config.clip:g}"
        )
        if config.eval_every:
            text += f", validation every {config.eval_every} steps"
            if config.patience:
                text += f", patience {config.patience}"
        return text


def add_model_flags(
    parser: argparse.ArgumentParser,
    hidden: int,
    *,
    cell: str | None = None,
    embedding: int | None = None,
    layers: int | None = None,
) -> None:
    """The model's shape, each flag with the app's default: ``--hidden-size``, and when given
    a default, ``--cell``, ``--embedding-dim``, ``--num-layers``."""
    if cell is not None:
        parser.add_argument("--cell", choices=CELLS, default=cell, help="recurrent cell")
    parser.add_argument(
        "--hidden-size",
        type=positive_int,
        default=hidden,
        help="H, units of each layer and direction",
    )
    if embedding is not None:
        parser.add_argument(
            "--embedding-dim", type=positive_int, default=embedding, help="vector size of a token"
        )
    if layers is not None:
        parser.add_argument(
            "--num-layers", type=positive_int, default=layers, help="stacked recurrent layers"
        )


def add_vocabulary_flags(
    parser: argparse.ArgumentParser, min_count: int, word_dropout: float, unknown: str
) -> None:
    """A word-level model's vocabulary: ``--min-count`` (rarer training words read as
    ``unknown``) and ``--word-dropout`` (a training word read as ``unknown`` by chance, a
    regulariser), each with the app's default."""
    parser.add_argument(
        "--min-count",
        type=positive_int,
        default=min_count,
        help=f"rarer training words read as {unknown}",
    )
    parser.add_argument(
        "--word-dropout",
        type=probability,
        default=word_dropout,
        help=f"chance that a training word reads as {unknown}, a regulariser",
    )


def model_options(args: argparse.Namespace) -> dict:
    """The values of the flags :func:`add_model_flags` declared, as a model's keyword
    arguments: ``cell``, ``hidden_size``, ``embedding_dim``, ``num_layers``."""
    names = ("cell", "hidden_size", "embedding_dim", "num_layers")
    return {name: getattr(args, name) for name in names if hasattr(args, name)}


def add_classifier_flags(parser: argparse.ArgumentParser, hidden: int, pooling: str) -> None:
    """The flags of a bidirectional classifier of vector sequences (:func:`vector_classifier`):
    ``--cell``, ``--hidden-size``, ``--unidirectional``, ``--pooling``."""
    add_model_flags(parser, hidden, cell="gru")
    parser.add_argument("--unidirectional", action="store_true", help="read forwards only")
    parser.add_argument(
        "--pooling", choices=("last", "mean", "max"), default=pooling, help="what the head reads"
    )


def vector_classifier(
    args: argparse.Namespace, input_size: int, num_classes: int, rng: np.random.Generator
) -> tuple[SequenceClassifier, str]:
    """The :class:`SequenceClassifier` of :func:`add_classifier_flags`, and its name."""
    bidirectional = not args.unidirectional
    model = SequenceClassifier(
        None,
        num_classes,
        args.hidden_size,
        cell=args.cell,
        bidirectional=bidirectional,
        input_size=input_size,
        pooling=args.pooling,
        rng=rng,
    )
    return model, f"{'bidirectional ' if bidirectional else ''}{args.cell.upper()}"


# ---------------------------------------------------------------- training and reporting


def vector_classifier_task(
    x: np.ndarray,
    lengths: np.ndarray,
    y: np.ndarray,
    train_i: np.ndarray,
    val_i: np.ndarray,
    batch_size: int,
    rng: np.random.Generator,
    augment: Callable[[np.ndarray], np.ndarray] | None = None,
) -> BatchTask:
    """Many-to-one on vectors: a :class:`SequenceClassifier` reads ``x[:, i] (T, D)`` up to
    ``lengths[i]`` and is trained with cross-entropy on the examples ``train_i``; the
    validation loss on ``val_i`` decides early stopping. ``augment(xb)``, when given, changes
    each training batch ``(T, B, D)`` afresh (a regulariser)."""

    def step(m, batch):  # batch: positions in train_i
        idx = train_i[batch]
        xb = x[:, idx] if augment is None else augment(x[:, idx])
        logits, cache = m.forward(xb, lengths[idx])
        loss, dlogits = cross_entropy(logits, y[idx])
        m.backward(dlogits, cache)
        return loss

    def val_loss(m):
        logits, _ = m.forward(x[:, val_i], lengths[val_i])
        return cross_entropy(logits, y[val_i])[0]

    return BatchTask(len(train_i), batch_size, rng, step, val_loss if len(val_i) else None)


def predict_classes(
    model: SequenceClassifier, x: np.ndarray, lengths: np.ndarray, batch: int = 512
) -> np.ndarray:
    """The class :class:`SequenceClassifier` ``model`` gives each sequence of ``x (T, N, D)``,
    ``(N,)``, in evaluation mode."""
    return np.concatenate(
        [
            model.predict(x[:, i : i + batch], lengths[i : i + batch])
            for i in range(0, x.shape[1], batch)
        ]
    )


def fit(model: Module, task, config: TrainConfig) -> tuple[History, float]:
    """:func:`rnnkit.train.train`, timed and reported in one line; returns
    ``(history, seconds)``."""
    start = time.perf_counter()
    history = train(model, task, config)
    seconds = time.perf_counter() - start
    if config.eval_every and np.isfinite(history.best_val):
        stop = f", stopped early at step {len(history.train_loss)}" if history.stopped_early else ""
        kept = "weights of that step kept" if config.patience else "last weights kept"
        print(
            f"trained in {seconds:.1f} s{stop}; best validation loss {history.best_val:.4f} at "
            f"step {history.best_step} ({kept})"
        )
    else:
        tail = history.train_loss[-50:]
        print(
            f"trained in {seconds:.1f} s; training loss (mean of the last {len(tail)} steps) "
            f"{np.mean(tail):.4f}"
        )
    return history, seconds


def percent(value: float | None) -> str:
    """``0.8`` -> ``"80.00%"``; None -> ``"-"``."""
    return "-" if value is None else f"{100 * value:.2f}%"


def format_table(
    rows: Sequence[Sequence[object]], header: Sequence[str] | None = None, notes: bool = False
) -> str:
    """Rows of cells as aligned text, indented by two spaces: the first column to the left,
    the others (scores) to the right, and with ``notes`` the last one to the left again;
    cells are printed with ``str`` (format numbers first)."""
    cells = [[str(c) for c in row] for row in ([header] if header else []) + list(rows)]
    widths = [max(len(row[j]) for row in cells) for j in range(len(cells[0]))]
    last = len(widths) - 1
    lines = []
    for row in cells:
        parts = [
            c.ljust(w) if j == 0 or (notes and j == last) else c.rjust(w)
            for j, (c, w) in enumerate(zip(row, widths))
        ]
        lines.append("  " + "  ".join(parts).rstrip())
    return "\n".join(lines)


def print_scores(
    title: str,
    rows: Sequence[Sequence[object]],
    header: Sequence[str] | None = None,
    notes: bool = False,
) -> None:
    """The score table: a blank line, ``title:``, then :func:`format_table` of the rows."""
    print(f"\n{title}:")
    print(format_table(rows, header, notes), flush=True)


# ---------------------------------------------------------------- entry points


def entry_points(
    build_parser: Callable[[], argparse.ArgumentParser],
    body: Callable[[argparse.Namespace], dict],
) -> tuple[Callable[..., dict], Callable[..., int]]:
    """``(run, main)`` of an app.

    ``run(argv) -> dict`` parses ``argv`` as the command line does, runs the app (it prints
    its report) and returns its scores. ``main(argv) -> int`` is ``rnnkit app NAME``: 0 after
    a run (or the status the body returns instead of scores) or ``--help``, 2 after a bad flag
    (one line on stderr). In both, errors raised by the
    app propagate; ``rnnkit.cli`` turns them into one line and an exit status.
    """

    def run(argv: Sequence[str] | None = None) -> dict:
        return body(build_parser().parse_args(argv))

    def main(argv: Sequence[str] | None = None) -> int:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as e:  # --help (0) or a bad flag (2, already printed)
            return e.code if isinstance(e.code, int) else 2
        result = body(args)
        sys.stdout.flush()
        return result if isinstance(result, int) else 0  # a body may return an exit status

    run.__doc__ = "Run the app on ``argv`` and return its scores (see ``entry_points``)."
    main.__doc__ = "``rnnkit app NAME [options]``: run the app; returns the exit status."
    return run, main
