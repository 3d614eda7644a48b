"""The training loop: optimiser steps with clipping, validation, early stopping, checkpoints
that resume bit for bit, and a progress display.

What is trained on what is a *task*: an object with ``train_step(model) -> loss`` (forward,
loss, backward: gradients added into the model), ``evaluate(model) -> loss``, and
``state_dict() -> (arrays, meta)`` / ``load_state_dict(arrays, meta)`` for its position in the
data, its random generator and any state it carries between steps. :class:`StreamLMTask` and
:class:`LinesLMTask` train language models; :class:`BatchTask` wraps any other model. The two
language-model tasks also train on several processes (:mod:`rnnkit.distributed`): each has
``shard(rank, size)`` and ``count``, the targets its last loss averaged.
"""

from __future__ import annotations

import math
import numbers
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import parallel
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .data import IGNORE_INDEX, SequenceBatches, StreamBatches, lm_lines_batch, share
from .distributed import Communicator
from .losses import cross_entropy
from .module import (
    BEST,
    MODEL,
    Module,
    check_tensors,
    describe,
    evaluating,
    predicting,
    random_generators,
    restore_generators,
)
from .optim import (
    OPTIMIZERS,
    Optimizer,
    clip_grad_norm_,
    clip_grad_value_,
    constant_lr,
    grad_norm,
    warmup_cosine_lr,
)

CHECKPOINT_NAME = "checkpoint.safetensors"
MAX_STEPS = 1_000_000  # each step's loss is kept in the checkpoint's header (100 MB at most)
PROGRESS = ("auto", "bar", "line", "none")


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss or gradient); the last good checkpoint is kept."""


class ConfigError(ValueError):
    """A :class:`TrainConfig` field that cannot make a run; ``field`` names it and
    ``message`` says what is wrong with it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field} {message}")
        self.field, self.message = field, message

    def __reduce__(self):  # rebuilt from its fields, as another process unpickles it
        return type(self), (self.field, self.message)


@dataclass
class TrainConfig:
    """How to train; every field is saved in the checkpoint, and checked here (the one place
    training options are checked, for Python callers, the command line and resumed runs)."""

    steps: int = 1000  # optimiser steps in the whole run, at most MAX_STEPS
    optimizer: str = "adam"  # adam | adamw | sgd | adagrad | rmsprop
    lr: float = 2e-3  # peak learning rate
    lr_schedule: str = "constant"  # constant | cosine (with warm-up)
    warmup_steps: int = 0  # linear warm-up steps for the cosine schedule
    clip: float | None = 5.0  # norm bound (element bound with clip_mode "value"); 0/None: off
    clip_mode: str = "norm"  # norm: clip_grad_norm_; value: the course's element-wise clip
    eval_every: int = 0  # validate every this many steps (0: only at the end)
    patience: int = 0  # stop after this many validations without improvement (0: never)
    checkpoint_every: int = 0  # save every this many steps (0: only at the end)
    progress: str = "auto"  # auto (a bar on a terminal, else lines) | bar | line | none
    seed: int = 0  # reseeds the model's dropout at the start of a run (a stream of its own)
    restore_best: bool = False  # end with the weights of the best validation (as with patience)

    def __post_init__(self) -> None:
        _whole(self, "steps", 1, MAX_STEPS)
        _one_of(self, "optimizer", OPTIMIZERS)
        lr = self.lr
        if not _is_number(lr) or not 0 < lr < math.inf:
            raise ConfigError("lr", f"must be > 0 and finite, got {lr!r}")
        _one_of(self, "lr_schedule", ("constant", "cosine"))
        for name in ("warmup_steps", "eval_every", "patience", "checkpoint_every"):
            _whole(self, name, 0, note=" (0 turns it off)" if name != "warmup_steps" else "")
        clip = self.clip
        if clip is not None and (not _is_number(clip) or not 0 <= clip < math.inf):
            raise ConfigError(
                "clip", f"must be >= 0 and finite (0 turns clipping off), got {clip!r}"
            )
        _one_of(self, "clip_mode", ("norm", "value"))
        _one_of(self, "progress", PROGRESS)
        _whole(self, "seed", 0)
        if not isinstance(self.restore_best, bool):
            raise ConfigError("restore_best", f"must be True or False, got {self.restore_best!r}")


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _whole(
    config: TrainConfig, name: str, low: int, high: float = math.inf, note: str = ""
) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(name, f"must be a whole number, got {value!r}")
    if value < low:
        raise ConfigError(name, f"must be >= {low}{note}, got {value}")
    if value > high:
        raise ConfigError(name, f"must be <= {high:,} (each step's loss is saved), got {value:,}")


def _one_of(config: TrainConfig, name: str, choices) -> None:
    value = getattr(config, name)
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(name, f"must be one of {', '.join(choices)}, got {value!r}")


@dataclass
class History:
    """What a run did: the loss of every step and each validation."""

    train_loss: list = field(default_factory=list)  # one per step
    val_loss: list = field(default_factory=list)  # [step, loss] pairs
    best_val: float = math.inf
    best_step: int = 0
    stopped_early: bool = False


def make_optimizer(config: TrainConfig, model: Module) -> Optimizer:
    """The optimiser named in the config, on every parameter of ``model``."""
    return OPTIMIZERS[config.optimizer](model, lr=config.lr)


def _learning_rate(config: TrainConfig, step: int) -> float:
    if config.lr_schedule == "cosine":
        return warmup_cosine_lr(step, config.lr, config.steps, config.warmup_steps)
    return constant_lr(step, config.lr)


# ---------------------------------------------------------------- tasks


class StreamLMTask:
    """Language model on one long text: contiguous chunks, state carried from chunk to chunk
    (truncated backpropagation through time), reset at each epoch."""

    def __init__(
        self, train_ids: np.ndarray, val_ids: np.ndarray | None, batch_size: int, seq_len: int
    ):
        self.batches = StreamBatches(train_ids, batch_size, seq_len)
        self.val = None
        if val_ids is not None and len(val_ids) > 1:
            self.val = StreamBatches(val_ids, min(batch_size, len(val_ids) - 1), seq_len)
        self.carry = None
        self.count = 0  # tokens the last loss averaged

    def shard(self, rank: int, size: int) -> None:
        """Train on process ``rank``'s share of the parallel streams, and validate on its share
        of the validation streams (which may be none)."""
        self.batches.shard(rank, size)
        if self.val is not None:
            self.val.shard(rank, size, allow_empty=True)

    def train_step(self, model) -> float:
        """One chunk forward and backward; returns the mean loss per token."""
        x, y, new_epoch = self.batches.next()
        if new_epoch:
            self.carry = None
        logits, state, cache = model.forward(x, self.carry)
        loss, dlogits = cross_entropy(logits, y)
        self.count = y.size
        if not math.isfinite(loss):
            return loss  # the loop stops with TrainingError; no backward pass through nan
        model.backward(dlogits, cache)
        self.carry = state  # the arrays carry on; the gradient stops here
        return loss

    def evaluate(self, model) -> float | None:
        """Mean loss per token over the validation stream (this process's share of it: nan
        for a share without streams); None without one."""
        if self.val is None:
            return None
        loss, self.count = stream_loss(model, self.val)
        return loss

    def state_dict(self) -> tuple[dict, dict]:
        """Data position and carried state."""
        arrays = {}
        if self.carry is not None:
            parts = self.carry if isinstance(self.carry, tuple) else (self.carry,)
            arrays = {f"carry.{i}": a for i, a in enumerate(parts)}
        return arrays, {"batches": self.batches.state_dict()}

    def load_state_dict(self, arrays: dict, meta: dict) -> None:
        """Continue from a checkpoint; ValueError if its position or carried state is not
        one this task could have reached."""
        if not isinstance(meta, dict) or set(meta) != {"batches"}:
            raise ValueError('the task state must be {"batches": position}')
        self.batches.load_state_dict(meta["batches"])
        names = sorted(arrays)
        if names not in ([], ["carry.0"], ["carry.0", "carry.1"]):
            raise ValueError(f"the carried state must be carry.0 (and carry.1), got {names}")
        started = self.batches.epoch > 0 or self.batches.index > 0
        if started != bool(names):
            raise ValueError(
                "the carried state is missing" if started else "a state is carried before any step"
            )
        N = self.batches.streams
        parts = [arrays[n] for n in names]
        if any(p.ndim != 3 or p.shape != parts[0].shape or p.shape[1] != N for p in parts):
            shapes = [p.shape for p in parts]
            raise ValueError(f"the carried state must be (layers, {N}, hidden), got {shapes}")
        if not all(np.isfinite(p).all() for p in parts):
            raise ValueError("the carried state holds non-finite values")
        self.carry = None if not parts else tuple(parts) if len(parts) == 2 else parts[0]

    def check_state(self, model) -> None:
        """ValueError unless the carried state has the shape and dtype of ``model``'s."""
        if self.carry is None:
            return
        want = model.initial_state(self.batches.streams)
        want = want if isinstance(want, tuple) else (want,)
        got = self.carry if isinstance(self.carry, tuple) else (self.carry,)
        if [(a.shape, a.dtype) for a in got] != [(a.shape, a.dtype) for a in want]:
            raise ValueError(
                f"the carried state is {[(a.dtype.name, a.shape) for a in got]}, the model's "
                f"{[(a.dtype.name, a.shape) for a in want]}"
            )


def stream_loss(model, batches: StreamBatches) -> tuple[float, int]:
    """``(mean loss per token, tokens)`` over one pass of a stream, state carried, eval mode
    (nan and 0 for a share without streams)."""
    total, count, carry = 0.0, 0, None
    with predicting(model):
        for x, y in batches.all_chunks():
            logits, carry, _ = model.forward(x, carry)
            loss, _ = cross_entropy(logits, y, reduction="sum")
            total, count = total + loss, count + y.size
    return (total / count if count else math.nan), count


class LinesLMTask:
    """Language model on separate lines (names, sentences): each line is one sequence read as
    ``<eos> w1 .. wn`` predicting ``w1 .. wn <eos>``; padded batches with lengths."""

    def __init__(
        self,
        train_lines: Sequence[Sequence[int]],
        val_lines: Sequence[Sequence[int]] | None,
        batch_size: int,
        eos_id: int,
        rng: np.random.Generator,
    ):
        # kept as given: lines read from a corpus on disk (rnnkit.corpus.Lines) stay there
        self.lines, self.val_lines = train_lines, val_lines if val_lines is not None else []
        self.eos_id, self.rng = eos_id, rng
        self.batches = SequenceBatches(len(self.lines), batch_size, rng)
        self.part = (0, 1)  # (rank, size): which share of each batch this process takes
        self.count = 0  # tokens the last loss averaged

    def shard(self, rank: int, size: int) -> None:
        """Train on process ``rank``'s share of the lines of every batch, and validate on its
        share of the validation lines."""
        if self.batches.batch_size < size:
            raise ValueError(
                f"batch size {self.batches.batch_size} is smaller than the {size} processes: "
                f"each needs one line at least"
            )
        self.part = (rank, size)

    def train_step(self, model) -> float:
        """One batch of lines forward and backward; returns the mean loss per token."""
        idx = self.batches.next()
        idx = idx[share(len(idx), *self.part)]
        x, y, lengths = lm_lines_batch([self.lines[i] for i in idx], self.eos_id)
        logits, _, cache = model.forward(x, None, lengths)
        loss, dlogits = cross_entropy(logits, y, ignore_index=IGNORE_INDEX)
        self.count = int(lengths.sum())
        if not math.isfinite(loss):
            return loss  # the loop stops with TrainingError; no backward pass through nan
        model.backward(dlogits, cache)
        return loss

    def evaluate(self, model) -> float | None:
        """Mean loss per token over the validation lines (this process's share of them: nan
        for a share without lines); None without any."""
        if len(self.val_lines) == 0:
            return None
        lines = self.val_lines[share(len(self.val_lines), *self.part)]
        loss, self.count = lines_loss(model, lines, self.eos_id)
        return loss

    def state_dict(self) -> tuple[dict, dict]:
        """Data position and the shuffling generator."""
        return {}, {"batches": self.batches.state_dict(), "rng": self.rng.bit_generator.state}

    def load_state_dict(self, arrays: dict, meta: dict) -> None:
        """Continue from a checkpoint."""
        _load_shuffled(self.batches, self.rng, arrays, meta)


def lines_loss(
    model, lines: Sequence[Sequence[int]], eos_id: int, batch_size: int = 64
) -> tuple[float, int]:
    """``(mean loss per token, tokens)`` over lines (``<eos>`` of each line included; nan and
    0 for no lines)."""
    total, count = 0.0, 0
    with predicting(model):
        for start in range(0, len(lines), batch_size):
            x, y, lengths = lm_lines_batch(lines[start : start + batch_size], eos_id)
            logits, _, _ = model.forward(x, None, lengths)
            loss, _ = cross_entropy(logits, y, ignore_index=IGNORE_INDEX, reduction="sum")
            total, count = total + loss, count + int(lengths.sum())
    return (total / count if count else math.nan), count


class BatchTask:
    """Any model: ``step_fn(model, indices) -> loss`` does forward, loss and backward on the
    examples ``indices``; ``eval_fn(model) -> loss`` scores the validation set."""

    def __init__(
        self,
        num_examples: int,
        batch_size: int,
        rng: np.random.Generator,
        step_fn: Callable,
        eval_fn: Callable | None = None,
    ):
        self.batches = SequenceBatches(num_examples, batch_size, rng)
        self.rng, self.step_fn, self.eval_fn = rng, step_fn, eval_fn

    def train_step(self, model) -> float:
        """One batch forward and backward."""
        return self.step_fn(model, self.batches.next())

    def evaluate(self, model) -> float | None:
        """The validation loss, in evaluation mode; None without an ``eval_fn``."""
        if self.eval_fn is None:
            return None
        with evaluating(model):  # eval_fn is the caller's: it may take gradients
            return float(self.eval_fn(model))

    def state_dict(self) -> tuple[dict, dict]:
        """Data position and the shuffling generator."""
        return {}, {"batches": self.batches.state_dict(), "rng": self.rng.bit_generator.state}

    def load_state_dict(self, arrays: dict, meta: dict) -> None:
        """Continue from a checkpoint."""
        _load_shuffled(self.batches, self.rng, arrays, meta)


def _load_shuffled(batches: SequenceBatches, rng, arrays: dict, meta: dict) -> None:
    """Restore shuffled batches and their generator; ValueError, changing nothing, if the
    state is not theirs."""
    if arrays or not isinstance(meta, dict) or set(meta) != {"batches", "rng"}:
        raise ValueError('the task state must be {"batches": position, "rng": state}')
    saved_rng = rng.bit_generator.state
    try:
        rng.bit_generator.state = meta["rng"]  # checked before the batches change
        batches.load_state_dict(meta["batches"])  # draws the epoch's order from rng again
        rng.bit_generator.state = meta["rng"]
    except (TypeError, ValueError, KeyError, OverflowError) as e:
        rng.bit_generator.state = saved_rng
        raise ValueError(f"the task state cannot be restored ({e})") from None


# ---------------------------------------------------------------- progress


class Progress:
    """A tqdm bar on a terminal; plain lines (about 20 a run) otherwise; or nothing.

    ``start`` is the step a resumed run begins at: the rate counts only the steps of this run.
    """

    def __init__(self, mode: str, total: int, start: int = 0, stream=None):
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "line"
        self.mode, self.total, self.first = mode, total, start
        self.every = max(1, total // 20)
        self.started = time.perf_counter()
        self.bar = None
        if mode == "bar":
            self.bar = tqdm(
                total=total,
                initial=start,
                file=self.stream,
                unit="step",
                dynamic_ncols=True,
                leave=True,
            )

    def update(self, step: int, loss: float, val: float | None = None) -> None:
        """Show the state after ``step``."""
        text = f"loss {loss:.4f}" + (f" val {val:.4f}" if val is not None else "")
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)
            self.bar.update(step - self.bar.n)
        elif self.mode == "line" and (
            step % self.every == 0 or step == self.total or val is not None
        ):
            rate = (step - self.first) / max(time.perf_counter() - self.started, 1e-9)
            self.stream.write(f"step {step}/{self.total} {text} ({rate:.1f} steps/s)\n")
            self.stream.flush()

    def close(self) -> None:
        """End the bar (also one that stopped early)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# ---------------------------------------------------------------- the loop


class Interrupted(KeyboardInterrupt):
    """Training was stopped by Ctrl-C (SIGINT) or SIGTERM after a whole step; ``signum``
    says which signal, ``checkpoint`` the file then saved (None without an ``out_dir``)."""

    def __init__(self, signum: int, checkpoint: Path | None = None):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.checkpoint = signum, checkpoint


class _DeferredInterrupt:
    """Holds Ctrl-C and SIGTERM (how schedulers stop a job) until the current step is whole,
    so a checkpoint is never half a step; the previous handlers come back afterwards."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum = None
        self.previous = {}

    def __enter__(self):
        try:
            for sig in self.SIGNALS:
                self.previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self.__exit__()
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}


def _process_state(model: Module, task) -> tuple[dict, dict]:
    """What a checkpoint holds for each process (:data:`rnnkit.distributed.PROCESS_KEYS`):
    the task's data position and carried state, and the random state of dropout."""
    task_arrays, task_meta = task.state_dict()
    arrays = {f"task.{k}": v for k, v in task_arrays.items()}
    generators = [g.bit_generator.state for g in random_generators(model)]
    return arrays, {"task": task_meta, "generators": generators}


def _checkpoint(
    path: Path,
    model: Module,
    opt: Optimizer,
    processes: tuple[dict, dict],
    step: int,
    history: History,
    best: dict | None,
    config: TrainConfig,
    extra: dict,
) -> None:
    arrays = {MODEL + k: v for k, v in model.named_parameters()}  # the last weights
    opt_state = opt.state_dict()
    arrays |= {f"optim.{k}": v for k, v in opt_state.pop("buffers").items()}
    arrays |= processes[0]  # every process's own state (see _process_state)
    if best is not None:
        arrays |= {BEST + k: v for k, v in best.items()}
    meta = {
        **describe(model),
        "step": step,
        "config": asdict(config),
        "optimizer": opt_state,
        **processes[1],
        "history": asdict(history),
        **extra,
    }
    save_checkpoint(path, arrays, meta)


def _saved_history(meta: dict, step: int) -> History:
    """The History a checkpoint at ``step`` holds; ValueError if it is not one a run makes."""
    saved = meta.get("history")
    names = [f.name for f in fields(History)]
    if not isinstance(saved, dict) or sorted(saved) != sorted(names):
        raise ValueError(f"history must hold {', '.join(names)}")
    h = History(**saved)
    if not (isinstance(h.train_loss, list) and len(h.train_loss) == step):
        raise ValueError(f"history must hold one training loss for each of the {step} steps")
    if not all(_is_number(x) and math.isfinite(x) for x in h.train_loss):
        raise ValueError("the training losses must be finite numbers")
    pairs = isinstance(h.val_loss, list) and all(
        isinstance(v, list)
        and len(v) == 2
        and isinstance(v[0], int)
        and _is_number(v[1])
        and 0 < v[0] <= step
        for v in h.val_loss
    )
    if not pairs:
        raise ValueError("the validation losses must be [step, loss] pairs up to the saved step")
    if not (_is_number(h.best_val) and isinstance(h.best_step, int) and 0 <= h.best_step <= step):
        raise ValueError("best_val must be a number and best_step a step up to the saved one")
    if not isinstance(h.stopped_early, bool):
        raise ValueError("stopped_early must be true or false")
    return h


def _restore(
    path: Path, arrays: dict, meta: dict, model: Module, opt: Optimizer, task, config: TrainConfig
) -> tuple[History, dict | None, int, int]:
    """Put a checkpoint back into the model, optimiser, task and generators, after checking
    that it is a state this run could have reached; ValueError (or CheckpointError) if not."""
    step, bad_evals = meta.get("step"), meta.get("bad_evals")
    saved = meta.get("config")
    if not isinstance(saved, dict) or set(saved) != {f.name for f in fields(TrainConfig)}:
        raise ValueError("it holds no training configuration (TrainConfig's fields)")
    saved = TrainConfig(**saved)  # types and ranges
    if isinstance(step, bool) or not isinstance(step, int) or not 1 <= step <= saved.steps:
        raise ValueError(f"step must be a whole number in [1, {saved.steps}], got {step!r}")
    if step > config.steps:
        raise ValueError(f"it is at step {step}, past the {config.steps} steps asked for")
    if isinstance(bad_evals, bool) or not isinstance(bad_evals, int) or bad_evals < 0:
        raise ValueError(f"bad_evals must be a whole number >= 0, got {bad_evals!r}")
    history = _saved_history(meta, step)
    if history.stopped_early and not (saved.patience and bad_evals >= saved.patience):
        raise ValueError("it says it stopped early, which its patience does not allow")
    last = {k[len(MODEL) :]: v for k, v in arrays.items() if k.startswith(MODEL)}
    best = {k[len(BEST) :]: v for k, v in arrays.items() if k.startswith(BEST)} or None
    check_tensors(path, model, last, MODEL)
    if best is not None:
        check_tensors(path, model, best, BEST)
    model.load_state_dict(last)
    opt_state = meta.get("optimizer")
    if not isinstance(opt_state, dict):
        raise ValueError("it holds no optimiser state")
    opt_state = {
        **opt_state,
        "buffers": {k[6:]: v for k, v in arrays.items() if k.startswith("optim.")},
    }
    opt.load_state_dict(opt_state)
    if opt.step_count != step:
        raise ValueError(f"the optimiser took {opt.step_count} steps, the run {step}")
    task.load_state_dict(
        {k[5:]: v for k, v in arrays.items() if k.startswith("task.")}, meta.get("task")
    )
    check = getattr(task, "check_state", None)
    if check is not None:
        check(model)
    restore_generators(path, model, meta.get("generators"))
    return history, best, step, bad_evals


def _diverged(progress: Progress, what: str, step: int) -> None:
    progress.close()
    raise TrainingError(
        f"{what} at step {step + 1}; training stopped and the last checkpoint was kept. "
        f"Try a lower learning rate (--lr) or gradient clipping (--clip)"
    )


def train(
    model: Module,
    task,
    config: TrainConfig,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    extra_metadata: dict | None = None,
    on_checkpoint: Callable[[int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    recorder=None,
    comm: Communicator | None = None,
) -> History:
    """Train ``model`` on ``task`` for ``config.steps`` optimiser steps.

    Args:
        model: any :class:`Module` the task knows how to run.
        task: see the module docstring; a task whose ``evaluate`` returns None has no
            validation data (no validation, no best weights, no early stopping).
        config: the settings; saved in every checkpoint.
        out_dir: folder for ``checkpoint.safetensors`` (None: no checkpoints). The
            checkpoint holds the last weights (``model.*``, what a resumed run continues
            from) and, with ``config.restore_best`` or ``patience``, the best ones
            (``best.*``, which :func:`rnnkit.load` takes).
        resume: continue the run saved in ``out_dir`` up to ``config.steps``, restoring
            weights, optimiser, step, data position and random state; the result is
            bit-identical to an uninterrupted run. The saved state is checked first (a step
            within the run's length, the optimiser's buffers and the data position present
            and consistent, the task's carried state fitting the model).
        extra_metadata: JSON-friendly entries stored in each checkpoint (vocabulary, options).
        on_checkpoint: called with the step after each checkpoint is written (on every
            process).
        on_start: called with the step training starts from (0, or the step a resumed run
            is at), once the saved state has been checked and restored (on every process).
        recorder: a :class:`rnnkit.record.TrainingRecord` (or an object with its ``begin``,
            ``step``, ``evaluation`` and ``checkpoint``), told of each step as it happens
            (on rank 0 alone).
        comm: the processes that train the model together, an
            :class:`rnnkit.distributed.MPI` (default: this process alone). Each takes its
            share of every batch of ``task`` (built for the global batch, the same on every
            process); together they compute what one process computes on the whole batch.
            Rank 0 alone shows progress, keeps the record and writes checkpoints, which hold
            every process's data position and random state: a run resumes under the same
            number of processes only.

    Returns:
        The :class:`History`. With ``restore_best`` or ``patience``, the weights of the best
        validation are in the model on return.

    Raises:
        TrainingError: a non-finite loss or gradient; the last checkpoint on disk is kept.
        CheckpointError: ``resume`` from a checkpoint that is damaged or not a state of this
            run; the file is left as it is.
        Interrupted: (a KeyboardInterrupt) after Ctrl-C or SIGTERM, once the current step is
            whole and (with ``out_dir``) a checkpoint of it has been written.

    Signals: during the call, SIGINT and SIGTERM are held until the step in progress is whole
    (the caller's handlers are put back on return).
    """
    extra = dict(extra_metadata or {})
    comm = comm or Communicator()
    task = comm.shard(task)
    recorder = recorder if comm.rank == 0 else None
    path = None
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        path = Path(out_dir) / CHECKPOINT_NAME
    opt = make_optimizer(config, model)
    history, step, best, bad_evals = History(), 0, None, 0
    keep_best = config.restore_best or bool(config.patience)
    if resume:
        if path is None:
            raise ValueError("resume needs out_dir")
        saved = comm.from_root(lambda: load_checkpoint(path))

        def restore():
            try:
                arrays, meta = comm.own_state(*saved)
                return _restore(path, arrays, meta, model, opt, task, config)
            except CheckpointError:
                raise
            except (KeyError, TypeError, ValueError, OverflowError) as e:
                raise CheckpointError(f"checkpoint {path} cannot be resumed: {e}") from None

        history, best, step, bad_evals = comm.collective(restore)
    else:
        # Dropout draws from a stream of its own, never the one that drew the initial weights.
        dropout_seed = comm.dropout_seed(config.seed)
        dropout_state = np.random.default_rng(dropout_seed).bit_generator.state
        for g in random_generators(model):
            g.bit_generator.state = dropout_state
    comm.broadcast_parameters(model)
    if on_start is not None:
        on_start(step)
    if recorder is not None:
        recorder.begin(config, step)  # a resumed run cuts the record back to its checkpoint
    if history.stopped_early:  # a resumed run that ended by early stopping: nothing to do
        if best is not None:
            model.load_state_dict(best)
        return history

    def save(at_step: int, interrupted: bool = False) -> None:
        processes = comm.gather_state(*_process_state(model, task)) if path else None

        def write() -> None:  # on rank 0
            if recorder is not None:  # the record reaches at_step on disk before the checkpoint
                recorder.checkpoint(at_step, model, interrupted)
            if path is not None:
                state = {**extra, "bad_evals": bad_evals}
                _checkpoint(path, model, opt, processes, at_step, history, best, config, state)

        comm.from_root(write)
        if path is not None and on_checkpoint is not None:
            on_checkpoint(at_step)

    progress = Progress(config.progress if comm.rank == 0 else "none", config.steps, start=step)
    model.train()
    # NumPy's BLAS on one thread for the whole loop: a product or dot outside the layers (the
    # gradient norm's) would leave OpenBLAS's worker spinning on the core the next step needs.
    with _DeferredInterrupt() as interrupt, parallel.region():
        while step < config.steps:
            opt.lr = _learning_rate(config, step)
            opt.zero_grad()
            loss = task.train_step(model)
            # the mean over the global batch; a signal to any process stops all after this step
            loss, signum = comm.reduce_step(model, loss, task, interrupt.signum or 0)
            if not math.isfinite(loss):
                _diverged(progress, f"the loss became {loss}", step)
            norm = grad_norm(model)  # checked before clipping, which could hide an inf
            if not math.isfinite(norm):
                _diverged(progress, f"the gradient became non-finite (norm {norm})", step)
            if recorder is not None:  # before clipping: the norms as the backward pass left them
                recorder.step(step + 1, loss, opt.lr, norm, model)
            if config.clip:
                if config.clip_mode == "value":
                    clip_grad_value_(model, config.clip)
                else:
                    clip_grad_norm_(model, config.clip, norm)
            opt.step()
            if not all(np.isfinite(v).all() for _, v in model.named_parameters()):
                # never let a checkpoint of broken weights replace a good one
                _diverged(progress, "the weights became non-finite", step)
            step += 1
            history.train_loss.append(loss)
            val = None
            if (config.eval_every and step % config.eval_every == 0) or step == config.steps:
                val = task.evaluate(model)
            if val is not None:
                val = comm.reduce_loss(val, task)
                history.val_loss.append([step, val])
                if recorder is not None:
                    recorder.evaluation(step, val)
                if val < history.best_val:
                    history.best_val, history.best_step, bad_evals = val, step, 0
                    if keep_best:
                        best = {k: v.copy() for k, v in model.named_parameters()}
                else:
                    bad_evals += 1
            progress.update(step, loss, val)
            stop = config.patience and bad_evals >= config.patience
            if stop:
                history.stopped_early = True
            if (
                (config.checkpoint_every and step % config.checkpoint_every == 0)
                or step == config.steps
                or stop
                or signum
            ):
                save(step, bool(signum))
            if signum:
                progress.close()
                raise Interrupted(signum, path)
            if stop:
                break
    progress.close()
    if best is not None:
        model.load_state_dict(best)  # the checkpoint keeps the last weights too, for --resume
    return history
