"""The options of ``rnnkit train``: each declared once (default, help, check), resolved
against a resumed run's saved options, and checked together for conflicts.

The training loop's own options (steps, optimiser, learning rate, clipping, validation and
checkpoint intervals, seed, progress) are checked by :class:`~rnnkit.train.TrainConfig`, the one
place they are checked; the others here, by their flag's check.
"""

from __future__ import annotations

from ..models import CELLS
from ..optim import OPTIMIZERS
from ..text import LEVELS, TextError, check_codec
from ..train import MAX_STEPS, PROGRESS, TrainConfig
from .core import Flag, UsageError, above_zero, at_least, in_unit_interval


def _codec_problem(name: str) -> str | None:
    try:
        check_codec(name)
    except TextError as e:
        return f"names no text encoding ({e})"
    return None


TRAIN_FLAGS = (
    Flag("level", "char", "tokens are characters or words", choices=LEVELS, fixed=True),
    Flag(
        "mode",
        "lines",
        "stream: one long text cut into windows, the state carried from one window to the "
        "next (truncated BPTT); lines: each line is one sequence ending in <eos>",
        choices=("stream", "lines"),
        fixed=True,
    ),
    Flag("cell", "lstm", "recurrent cell", choices=CELLS, fixed=True),
    Flag("hidden_size", 128, "hidden units H", int, check=at_least(1), fixed=True),
    Flag("num_layers", 1, "stacked layers", int, check=at_least(1), fixed=True),
    Flag(
        "embedding_dim",
        None,
        "embedding size (none: the hidden size)",
        int,
        check=at_least(1),
        fixed=True,
    ),
    Flag(
        "dropout",
        0.2,
        "dropout between layers and before the output",
        float,
        check=in_unit_interval,
        fixed=True,
    ),
    Flag(
        "seq_len",
        50,
        "stream mode: time steps per window, the span of truncated BPTT",
        int,
        check=at_least(1),
        fixed=True,
    ),
    Flag("batch_size", 32, "sequences per step", int, check=at_least(1), fixed=True),
    Flag(
        "steps", 2000, f"optimiser steps in the whole run (at most {MAX_STEPS:,})", int, config=True
    ),
    Flag(
        "epochs",
        None,
        "train this many passes over the data instead of --steps",
        float,
        check=above_zero,
    ),
    Flag("optimizer", "adam", "the optimiser", choices=tuple(OPTIMIZERS), config=True, fixed=True),
    Flag("lr", 0.005, "learning rate", float, config=True),
    Flag("clip", 5.0, "gradient clipping bound; 0 turns clipping off", float, config=True),
    Flag(
        "clip_mode",
        "norm",
        "norm: scale all gradients to global norm <= --clip; value: clip each entry to "
        "[-clip, clip] as in the course",
        choices=("norm", "value"),
        config=True,
    ),
    Flag(
        "val_frac",
        0.1,
        "fraction held out for validation; 0 means no validation (the last weights are kept)",
        float,
        check=in_unit_interval,
        fixed=True,
    ),
    Flag(
        "eval_every",
        100,
        "validate every N steps and at the end; the weights of the best validation are the "
        "ones the run keeps (sample, eval and score use them; --resume continues from the last)",
        int,
        config=True,
    ),
    Flag(
        "patience", 0, "stop after N validations without improvement (0: never)", int, config=True
    ),
    Flag("checkpoint_every", 100, "save every N steps, and at the end", int, config=True),
    Flag("seed", 0, "seed for weights, data order and dropout", int, config=True, fixed=True),
    Flag(
        "min_count",
        1,
        "word level: words seen fewer times become <unk>",
        int,
        check=at_least(1),
        fixed=True,
    ),
    Flag(
        "encoding",
        "utf-8",
        "text encoding of FILE; a UTF-8 byte-order mark is dropped, and line breaks \\r\\n "
        "and \\r are read as \\n",
        check=_codec_problem,
        fixed=True,
    ),
    Flag(
        "errors",
        "strict",
        "undecodable bytes: stop with an error, or replace them",
        choices=("strict", "replace"),
        fixed=True,
    ),
    Flag(
        "progress",
        "auto",
        "auto: a bar on a terminal, lines otherwise",
        choices=PROGRESS,
        config=True,
    ),
)
FLAGS = {f.name: f for f in TRAIN_FLAGS}
DEFAULTS = {f.name: f.default for f in TRAIN_FLAGS}


def given_flags(args) -> dict:
    """The options given on the command line (the others are None there)."""
    return {name: getattr(args, name) for name in FLAGS if getattr(args, name) is not None}


def check_options(opts: dict, given: dict) -> None:
    """UsageError for an option that cannot make a run, or options that contradict each
    other; ConfigError (from TrainConfig) for the training loop's options."""
    for flag in TRAIN_FLAGS:
        problem = None if flag.config else flag.problem(opts[flag.name])
        if problem:
            raise UsageError(f"{flag.option} {problem}")
    conflicts = [
        ("steps" in given and "epochs" in given, "give --steps or --epochs, not both"),
        (
            opts["level"] == "char" and opts["min_count"] != 1,
            "--min-count applies to word level only (at char level every character is kept)",
        ),
        (
            opts["mode"] == "lines" and "seq_len" in given,
            "--seq-len applies to stream mode only (lines mode reads each line whole)",
        ),
        (
            opts["val_frac"] == 0 and (opts["patience"] or "eval_every" in given),
            "--patience and --eval-every need validation data, and --val-frac 0 means none",
        ),
        (
            not opts["clip"] and "clip_mode" in given,
            "--clip-mode needs clipping, and --clip 0 turns it off",
        ),
    ]
    for clash, message in conflicts:
        if clash:
            raise UsageError(message)
    train_config(opts, opts["steps"], validating=True)  # the loop's options, by TrainConfig


def saved_problem(saved: object) -> str | None:
    """What is wrong with the options a checkpoint holds, or None."""
    if not isinstance(saved, dict) or set(saved) != set(FLAGS):
        return "its options are not those of rnnkit train"
    for flag in TRAIN_FLAGS:
        problem = flag.problem(saved[flag.name])
        if problem:
            return f"its option {flag.option} {problem}"
    return None


def resolve(given: dict, saved: dict | None) -> dict:
    """The options of a run: the saved ones (resuming) or the defaults, then those given. A
    run's length given as --steps replaces a saved --epochs."""
    opts = {**(saved or DEFAULTS), **given}
    if "steps" in given:
        opts["epochs"] = None
    return opts


def train_config(opts: dict, steps: int, validating: bool) -> TrainConfig:
    """The training loop's settings (checked by TrainConfig). With validation the run keeps
    the weights of its best validation."""
    return TrainConfig(
        steps=steps,
        optimizer=opts["optimizer"],
        lr=opts["lr"],
        clip=opts["clip"],
        clip_mode=opts["clip_mode"],
        eval_every=opts["eval_every"] if validating else 0,
        patience=opts["patience"],
        checkpoint_every=opts["checkpoint_every"],
        seed=opts["seed"],
        progress=opts["progress"],
        restore_best=validating,
    )
