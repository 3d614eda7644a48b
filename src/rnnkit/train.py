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
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .data import IGNORE_INDEX, SequenceBatches, StreamBatches, lm_lines_batch, share
from .distributed import Communicator
from .losses import cross_entropy
from .module import Module, evaluating
from .optim import (
    OPTIMIZERS,
    Optimizer,
    clip_grad_norm_,
    clip_grad_value_,
    constant_lr,
    grad_norm,
    warmup_cosine_lr,
)
from .version import __version__

CHECKPOINT_NAME = "checkpoint.safetensors"


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss or gradient); the last good checkpoint is kept."""


@dataclass
class TrainConfig:
    """How to train; every field is saved in the checkpoint."""

    steps: int = 1000  # optimiser steps in the whole run
    optimizer: str = "adam"  # adam | adamw | sgd | adagrad | rmsprop
    lr: float = 2e-3  # peak learning rate
    lr_schedule: str = "constant"  # constant | cosine (with warm-up)
    warmup_steps: int = 0  # linear warm-up steps for the cosine schedule
    clip: float | None = 5.0  # global-norm bound (or element bound with clip_mode "value")
    clip_mode: str = "norm"  # norm: clip_grad_norm_; value: the course's element-wise clip
    eval_every: int = 0  # validate every this many steps (0: only at the end)
    patience: int = 0  # stop after this many validations without improvement (0: never)
    checkpoint_every: int = 0  # save every this many steps (0: only at the end)
    progress: str = "auto"  # auto | bar | line | none
    seed: int = 0  # reseeds the model's dropout at the start of a run (a stream of its own)

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        for name in ("warmup_steps", "eval_every", "patience", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0 turns it off), got {getattr(self, name)}")
        if self.clip is not None and self.clip < 0:
            raise ValueError(f"clip must be >= 0 or None, got {self.clip}")
        if self.clip_mode not in ("norm", "value"):
            raise ValueError(f"clip_mode must be 'norm' or 'value', got {self.clip_mode!r}")


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
    if config.optimizer not in OPTIMIZERS:
        raise ValueError(
            f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {config.optimizer!r}"
        )
    return OPTIMIZERS[config.optimizer](model, lr=config.lr)


def _learning_rate(config: TrainConfig, step: int) -> float:
    if config.lr_schedule == "cosine":
        return warmup_cosine_lr(step, config.lr, config.steps, config.warmup_steps)
    if config.lr_schedule == "constant":
        return constant_lr(step, config.lr)
    raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {config.lr_schedule!r}")


def model_generators(model: Module) -> list[np.random.Generator]:
    """Every distinct random generator the model's modules hold (for dropout), in a fixed
    order, so a checkpoint can save and restore them."""
    found: list[np.random.Generator] = []
    stack = [model]
    while stack:
        module = stack.pop(0)
        rng = getattr(module, "rng", None)
        if isinstance(rng, np.random.Generator) and all(rng is not g for g in found):
            found.append(rng)
        stack.extend(module.children.values())
    return found


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

    def evaluate(self, model) -> float:
        """Mean loss per token over the validation stream (train stream if there is none)."""
        loss, self.count = stream_loss(model, self.val or self.batches)
        return loss

    def state_dict(self) -> tuple[dict, dict]:
        """Data position and carried state."""
        arrays = {}
        if self.carry is not None:
            parts = self.carry if isinstance(self.carry, tuple) else (self.carry,)
            arrays = {f"carry.{i}": a for i, a in enumerate(parts)}
        return arrays, {"batches": self.batches.state_dict()}

    def load_state_dict(self, arrays: dict, meta: dict) -> None:
        """Continue from a checkpoint."""
        self.batches.load_state_dict(meta["batches"])
        parts = [arrays[f"carry.{i}"] for i in range(2) if f"carry.{i}" in arrays]
        self.carry = None if not parts else tuple(parts) if len(parts) == 2 else parts[0]


def stream_loss(model, batches: StreamBatches) -> tuple[float, int]:
    """``(mean loss per token, tokens)`` over one pass of a stream, state carried, eval mode
    (nan and 0 for a share without streams)."""
    total, count, carry = 0.0, 0, None
    with evaluating(model):
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
        # kept as given: lines read from a corpus on disk stay there
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

    def evaluate(self, model) -> float:
        """Mean loss per token over the validation lines (training lines if there are none)."""
        lines = self.val_lines if len(self.val_lines) else self.lines
        loss, self.count = lines_loss(model, lines[share(len(lines), *self.part)], self.eos_id)
        return loss

    def state_dict(self) -> tuple[dict, dict]:
        """Data position and the shuffling generator."""
        return {}, {"batches": self.batches.state_dict(), "rng": self.rng.bit_generator.state}

    def load_state_dict(self, arrays: dict, meta: dict) -> None:
        """Continue from a checkpoint."""
        self.batches.load_state_dict(meta["batches"])
        self.rng.bit_generator.state = meta["rng"]


def lines_loss(
    model, lines: Sequence[Sequence[int]], eos_id: int, batch_size: int = 64
) -> tuple[float, int]:
    """``(mean loss per token, tokens)`` over lines (``<eos>`` of each line included; nan and
    0 for no lines)."""
    total, count = 0.0, 0
    with evaluating(model):
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

    def evaluate(self, model) -> float:
        """The validation loss, in evaluation mode (nan without an ``eval_fn``)."""
        if self.eval_fn is None:
            return math.nan
        with evaluating(model):
            return float(self.eval_fn(model))

    def state_dict(self) -> tuple[dict, dict]:
        """Data position and the shuffling generator."""
        return {}, {"batches": self.batches.state_dict(), "rng": self.rng.bit_generator.state}

    def load_state_dict(self, arrays: dict, meta: dict) -> None:
        """Continue from a checkpoint."""
        self.batches.load_state_dict(meta["batches"])
        self.rng.bit_generator.state = meta["rng"]


# ---------------------------------------------------------------- progress


class Progress:
    """A one-line bar on a terminal; plain lines (about 20 a run) otherwise."""

    def __init__(self, mode: str, total: int, stream=None):
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "line"
        if mode not in ("bar", "line", "none"):
            raise ValueError(f"progress must be auto, bar, line or none, got {mode!r}")
        self.mode, self.total = mode, total
        self.every = max(1, total // 20)
        self.start = time.perf_counter()

    def update(self, step: int, loss: float, val: float | None = None) -> None:
        """Show the state after ``step``."""
        if self.mode == "none":
            return
        rate = step / max(time.perf_counter() - self.start, 1e-9)
        text = f"step {step}/{self.total} loss {loss:.4f}"
        if val is not None:
            text += f" val {val:.4f}"
        if self.mode == "bar":
            filled = int(30 * step / self.total)
            self.stream.write(
                f"\r[{'#' * filled}{'.' * (30 - filled)}] {text} ({rate:.1f} steps/s)\x1b[K"
            )
            if step == self.total:
                self.stream.write("\n")
        elif step % self.every == 0 or step == self.total or val is not None:
            self.stream.write(f"{text} ({rate:.1f} steps/s)\n")
        self.stream.flush()

    def close(self) -> None:
        """End a bar that stopped early."""
        if self.mode == "bar":
            self.stream.write("\n")
            self.stream.flush()


# ---------------------------------------------------------------- the loop


class _DeferredInterrupt:
    """Holds Ctrl-C until the current step is whole, so a checkpoint is never half a step."""

    def __init__(self):
        self.requested = False
        self.previous = None

    def __enter__(self):
        try:
            self.previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self.previous = None
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def _process_state(model: Module, task) -> tuple[dict, dict]:
    """What a checkpoint holds for each process: the task's data position and carried state,
    and the random state of dropout."""
    task_arrays, task_meta = task.state_dict()
    arrays = {f"task.{k}": v for k, v in task_arrays.items()}
    generators = [g.bit_generator.state for g in model_generators(model)]
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
    arrays = {f"model.{k}": v for k, v in model.named_parameters()}
    opt_state = opt.state_dict()
    arrays |= {f"optim.{k}": v for k, v in opt_state.pop("buffers").items()}
    arrays |= processes[0]
    if best is not None:
        arrays |= {f"best.{k}": v for k, v in best.items()}
    meta = {
        "format": "rnnkit-checkpoint-1",
        "library_version": __version__,
        "step": step,
        "config": asdict(config),
        "optimizer": opt_state,
        **processes[1],
        "history": asdict(history),
        **extra,
    }
    save_checkpoint(path, arrays, meta)


def _restore(
    arrays: dict, meta: dict, model: Module, opt: Optimizer, task, generators: list
) -> tuple[History, dict | None, int, int]:
    """Put a checkpoint back into the model, optimiser, task and generators."""
    model.load_state_dict({k[6:]: v for k, v in arrays.items() if k.startswith("model.")})
    opt_state = dict(meta["optimizer"])
    opt_state["buffers"] = {k[6:]: v for k, v in arrays.items() if k.startswith("optim.")}
    opt.load_state_dict(opt_state)
    task.load_state_dict(
        {k[5:]: v for k, v in arrays.items() if k.startswith("task.")}, meta["task"]
    )
    if len(meta["generators"]) != len(generators):
        raise ValueError("the model's random generators differ from the saved ones")
    for g, state in zip(generators, meta["generators"]):
        g.bit_generator.state = state
    best = {k[5:]: v for k, v in arrays.items() if k.startswith("best.")} or None
    return History(**meta["history"]), best, int(meta["step"]), int(meta.get("bad_evals", 0))


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
    comm: Communicator | None = None,
) -> History:
    """Train ``model`` on ``task`` for ``config.steps`` optimiser steps.

    Args:
        model: any :class:`Module` the task knows how to run.
        task: see the module docstring.
        config: the settings; saved in every checkpoint.
        out_dir: folder for ``checkpoint.safetensors`` (None: no checkpoints).
        resume: continue the run saved in ``out_dir`` up to ``config.steps``, restoring
            weights, optimiser, step, data position and random state; the result is
            bit-identical to an uninterrupted run.
        extra_metadata: JSON-friendly entries stored in each checkpoint (vocabulary, model
            configuration).
        on_checkpoint: called with the step after each checkpoint is written (on every
            process).
        comm: the processes that train the model together, an
            :class:`rnnkit.distributed.MPI` (default: this process alone). Each takes its
            share of every batch of ``task`` (built for the global batch, the same on every
            process); together they compute what one process computes on the whole batch.
            Rank 0 alone shows progress and writes checkpoints.

    Returns:
        The :class:`History`. With ``patience`` and early stopping, the best weights seen at a
        validation are restored before returning.

    Raises:
        TrainingError: a non-finite loss or gradient; the last checkpoint on disk is kept.
        KeyboardInterrupt: after Ctrl-C, once the current step is whole and (with ``out_dir``)
            a checkpoint of it has been written.
    """
    extra = dict(extra_metadata or {})
    comm = comm or Communicator()
    task = comm.shard(task)
    path = None
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        path = Path(out_dir) / CHECKPOINT_NAME
    opt = make_optimizer(config, model)
    generators = model_generators(model)
    history, step, best, bad_evals = History(), 0, None, 0
    if resume:
        if path is None:
            raise ValueError("resume needs out_dir")
        arrays, meta = comm.own_state(*comm.from_root(lambda: load_checkpoint(path)))
        try:
            history, best, step, bad_evals = _restore(arrays, meta, model, opt, task, generators)
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(
                f"checkpoint {path} cannot be resumed ({type(e).__name__}: {e})"
            ) from None
        if history.stopped_early:  # the run ended by early stopping: nothing left to do
            return history
    else:
        # Dropout draws from a stream of its own, never the one that drew the initial weights.
        dropout_state = np.random.default_rng(comm.dropout_seed(config.seed)).bit_generator.state
        for g in generators:
            g.bit_generator.state = dropout_state
    comm.broadcast_parameters(model)

    def save(at_step: int) -> None:
        if path is not None:
            processes = comm.gather_state(*_process_state(model, task))
            comm.from_root(
                lambda: _checkpoint(
                    path,
                    model,
                    opt,
                    processes,
                    at_step,
                    history,
                    best,
                    config,
                    {**extra, "bad_evals": bad_evals},
                )
            )
            if on_checkpoint is not None:
                on_checkpoint(at_step)

    progress = Progress(config.progress if comm.rank == 0 else "none", config.steps)
    model.train()
    with _DeferredInterrupt() as interrupt:
        while step < config.steps:
            opt.lr = _learning_rate(config, step)
            opt.zero_grad()
            loss = task.train_step(model)
            # the mean over the global batch; a Ctrl-C on any process stops all after this step
            loss, stop_asked = comm.reduce_step(model, loss, task, interrupt.requested)
            if not math.isfinite(loss):
                _diverged(progress, f"the loss became {loss}", step)
            norm = grad_norm(model)  # checked before clipping, which could hide an inf
            if not math.isfinite(norm):
                _diverged(progress, f"the gradient became non-finite (norm {norm})", step)
            if config.clip:
                if config.clip_mode == "value":
                    clip_grad_value_(model, config.clip)
                else:
                    clip_grad_norm_(model, config.clip)
            opt.step()
            if not all(np.isfinite(v).all() for _, v in model.named_parameters()):
                # never let a checkpoint of broken weights replace a good one
                _diverged(progress, "the weights became non-finite", step)
            step += 1
            history.train_loss.append(loss)
            val = None
            if (config.eval_every and step % config.eval_every == 0) or step == config.steps:
                val = comm.reduce_loss(task.evaluate(model), task)
                history.val_loss.append([step, val])
                if val < history.best_val:
                    history.best_val, history.best_step, bad_evals = val, step, 0
                    if config.patience:
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
                or stop_asked
            ):
                save(step)
            if stop_asked:
                progress.close()
                raise KeyboardInterrupt
            if stop:
                progress.close()
                break
    if best is not None and config.patience:
        model.load_state_dict(best)
        save(step)  # the saved run holds the weights it returns: the best ones
    return history
