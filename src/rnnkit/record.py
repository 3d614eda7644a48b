"""The training record: what a report needs, written beside the checkpoint as training goes.

``record.jsonl`` holds one JSON object per line, each with a ``kind`` and a ``step``::

    {"kind": "record", "format": "rnnkit-record-1", "step": 0, "info": {...}}     first line
    {"kind": "step", "step": 1, "loss": 3.29, "lr": 0.005, "grad_norm": 1.7, "clipped": false}
    {"kind": "step", "step": 11, ..., "grad_norms": {"rnn.weight_hh_l0": 0.4, ...}}
    {"kind": "eval", "step": 100, "loss": 2.01, "bits": 2.90}
    {"kind": "samples", "step": 100, "samples": ["saurus", ...]}

The gradient norms are taken before clipping; ``clipped`` says whether clipping changed them.
Every ``grad_every`` steps a step also carries each parameter's gradient norm. Evaluations give
the loss in nats and bits per token; each scheduled checkpoint adds a few samples.

Append-only and resume-safe. Each line goes to the file in one ``write`` of the whole line,
so a kill leaves at most one cut last line, which readers skip. Before every checkpoint the
file is fsynced: the record on disk always reaches the checkpoint's step. A run resumed from
step S first cuts the record back to step S (the steps after it are run again, bit for bit),
so a killed and resumed run ends with the record of an uninterrupted one, and a kill loses at
most the steps since the last checkpoint. Samples are drawn with a generator of their own,
seeded by the step, in evaluation mode: recording never changes what training does.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .checkpoint import CheckpointError, atomic_write_text
from .optim import grad_norm
from .sampling import generate
from .text import Vocabulary

RECORD_NAME = "record.jsonl"
FORMAT = "rnnkit-record-1"


class RecordError(CheckpointError):
    """A training record is missing, corrupt or not one of ours; the message says which line."""


def _line(entry: dict) -> bytes:
    """One JSON line; a non-finite number (a validation without data) is written as null."""
    clean = {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in entry.items()
    }
    return (json.dumps(clean, allow_nan=False, ensure_ascii=False) + "\n").encode("utf-8")


def _entries(path: Path) -> Iterator[tuple[int, dict]]:
    """``(end offset, entry)`` for each whole line of the record, after checking its header.
    A cut last line (a kill in the middle of a write) is skipped; any other bad line raises."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RecordError(f"{path} does not exist") from None
    except OSError as e:
        raise RecordError(f"cannot read {path}: {e.strerror}") from None
    offset = 0
    for number, raw in enumerate(data.splitlines(keepends=True), start=1):
        if not raw.endswith(b"\n"):
            return  # the last line was cut by a kill: not part of the record
        try:
            entry = json.loads(raw.decode("utf-8"))
            if not isinstance(entry, dict) or not isinstance(entry.get("step"), int):
                raise ValueError("not an object with a step")
        except ValueError as e:
            raise RecordError(f"{path}, line {number}, is not a record line ({e})") from None
        if number == 1 and (entry.get("kind") != "record" or entry.get("format") != FORMAT):
            raise RecordError(
                f"{path} is not an rnnkit training record (its first line is no {FORMAT} header)"
            )
        offset += len(raw)
        yield offset, entry


@dataclass
class Record:
    """A training record read back: the header's ``info`` and the entries by kind."""

    info: dict
    steps: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)

    def column(self, name: str) -> np.ndarray:
        """One field of every step entry, as an array (nan where a step lacks it)."""
        values = [np.nan if s.get(name) is None else s[name] for s in self.steps]
        return np.array(values, dtype=float)


def read_record(folder: str | os.PathLike) -> Record:
    """The record of the run in ``folder``.

    Raises:
        RecordError: it is missing, or a line other than a cut last one is broken, or it is
            not an rnnkit record; the message names the file and the line.
    """
    entries = [entry for _, entry in _entries(Path(folder) / RECORD_NAME)]
    if not entries:
        raise RecordError(f"{Path(folder) / RECORD_NAME} is empty")
    record = Record(info=entries[0].get("info") or {})
    lists = {"step": record.steps, "eval": record.evals, "samples": record.samples}
    for entry in entries[1:]:
        if entry.get("kind") in lists:
            lists[entry["kind"]].append(entry)
    return record


class LanguageModelSamples:
    """A few samples of a language model at a step: ``num`` sequences of up to ``length`` tokens,
    read from ``start_id``, ending at ``stop_id``; drawn from ``default_rng([seed, step])``."""

    def __init__(
        self,
        vocab: Vocabulary,
        start_id: int,
        stop_id: int | None,
        num: int = 5,
        length: int = 80,
        temperature: float = 1.0,
        seed: int = 0,
    ):
        self.vocab, self.start_id, self.stop_id = vocab, start_id, stop_id
        self.num, self.length, self.temperature, self.seed = num, length, temperature, seed

    def __call__(self, model, step: int) -> list[str]:
        """The samples of ``model`` after ``step`` steps, as text."""
        rng = np.random.default_rng([self.seed, step])
        ids = generate(
            model,
            self.length,
            rng,
            start_id=self.start_id,
            num=self.num,
            stop_id=self.stop_id,
            temperature=self.temperature,
        )
        return [self.vocab.decode(s) for s in ids]


def held_out_text(vocab: Vocabulary, data, mode: str, limit: int = 2000) -> str:
    """Up to ``limit`` characters of encoded data (an id stream, or id lines), as text."""
    if mode == "stream":
        return vocab.decode(list(data[:limit]))[:limit]
    lines, size = [], 0
    for ids in data:
        line = vocab.decode(ids)
        if size + len(line) > limit and lines:
            break
        lines.append(line)
        size += len(line) + 1
    return "\n".join(lines)


class TrainingRecord:
    """Writes ``record.jsonl`` in ``folder``; :func:`rnnkit.train.train` calls it.

    Args:
        folder: the run folder (where the checkpoint lives).
        info: JSON-friendly facts about the run for the header (data, sizes, held-out text).
        samples: ``samples(model, step) -> list[str]`` called at each scheduled checkpoint
            (for example a :class:`LanguageModelSamples`); None records none.
        grad_every: record each parameter's gradient norm every this many steps.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        info: dict | None = None,
        samples: Callable[[object, int], Sequence[str]] | None = None,
        grad_every: int = 10,
    ):
        if grad_every < 1:
            raise ValueError(f"grad_every must be >= 1, got {grad_every}")
        self.path = Path(folder) / RECORD_NAME
        self.info, self.samples, self.grad_every = dict(info or {}), samples, grad_every
        self.config = None
        self.sampled_at = 0  # the last step whose samples are in the record

    # ------------------------------------------------------------ hooks train() calls

    def begin(self, config, step: int) -> None:
        """The run starts at ``step`` (0, or the checkpoint's on resume): a new record, or the
        old one cut back to ``step``."""
        self.config, self.sampled_at = config, step
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keep = 0  # bytes of the old record that stay: its lines up to step
        if step > 0 and self.path.exists():
            for end, entry in _entries(self.path):
                if entry["step"] > step:
                    break
                keep = end
        if keep == 0:  # a new run, or one whose record was lost
            header = {"kind": "record", "format": FORMAT, "step": 0, "info": self.info}
            atomic_write_text(self.path, _line(header).decode("utf-8"))
            return
        with open(self.path, "r+b") as f:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())

    def step(self, step: int, loss: float, lr: float, norm: float, model) -> None:
        """After the backward pass of ``step`` (counted from 1), before clipping."""
        entry = {
            "kind": "step",
            "step": step,
            "loss": float(loss),
            "lr": float(lr),
            "grad_norm": float(norm),
            "clipped": self._clipped(norm, model),
        }
        if (step - 1) % self.grad_every == 0:
            entry["grad_norms"] = {k: grad_norm({k: g}) for k, g in model.named_grads()}
        self._append(entry)

    def evaluation(self, step: int, loss: float) -> None:
        """A validation after ``step``: the loss per token in nats, and in bits."""
        bits = loss / math.log(2)
        self._append({"kind": "eval", "step": step, "loss": float(loss), "bits": bits})

    def checkpoint(self, step: int, model, interrupted: bool = False) -> None:
        """Before the checkpoint of ``step`` is written: samples (unless Ctrl-C forced this
        checkpoint off the schedule, where an uninterrupted run has none), then fsync."""
        c = self.config
        on_schedule = step == c.steps or bool(c.checkpoint_every and step % c.checkpoint_every == 0)
        if self.samples is not None and (on_schedule or not interrupted) and step > self.sampled_at:
            texts = list(self.samples(model, step))
            self._append({"kind": "samples", "step": step, "samples": texts})
            self.sampled_at = step
        with open(self.path, "rb+") as f:
            os.fsync(f.fileno())

    # ------------------------------------------------------------ helpers

    def _clipped(self, norm: float, model) -> bool:
        clip = self.config.clip
        if not clip:
            return False
        if self.config.clip_mode == "value":
            return any(np.abs(g).max(initial=0) > clip for _, g in model.named_grads())
        return norm > clip

    def _append(self, entry: dict) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, _line(entry))  # one write of the whole line
        finally:
            os.close(fd)


def language_model_record(
    folder: str | os.PathLike,
    vocab: Vocabulary,
    mode: str,
    start_id: int,
    train_data,
    val_data,
    sizes: dict,
    seed: int,
) -> TrainingRecord:
    """The record of a language model run (as ``rnnkit train`` makes it): its header keeps the
    data sizes and the start of the held-out text (of the training text where none is held
    out); each checkpoint adds five samples read from ``start_id``."""
    held_out = val_data if len(val_data) else train_data
    info = {
        "sizes": sizes,
        "held_out": held_out_text(vocab, held_out, mode),
        "held_out_is_validation": bool(len(val_data)),
    }
    length = 40 if mode == "lines" or vocab.level == "word" else 150
    stop = vocab.eos_id if mode == "lines" else None
    samples = LanguageModelSamples(vocab, start_id, stop, length=length, seed=seed)
    return TrainingRecord(folder, info, samples)
