"""The training record: what it holds, and that kills and resumes leave the record of an
uninterrupted run."""

from __future__ import annotations

import importlib
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from rnnkit.models import LanguageModel
from rnnkit.record import (
    RECORD_NAME,
    LanguageModelSamples,
    RecordError,
    TrainingRecord,
    held_out_text,
    read_record,
)
from rnnkit.text import Vocabulary
from rnnkit.train import LinesLMTask, TrainConfig, train

train_module = importlib.import_module("rnnkit.train")  # rnnkit.train is the function

NAMES = ["allosaurus", "brachiosaurus", "diplodocus", "stegosaurus", "triceratops", "raptor"]
NAMES += ["ankylosaurus", "iguanodon", "spinosaurus", "tyrannosaurus", "velociraptor", "troodon"]
VOCAB = Vocabulary.build(NAMES, "char")
LINES = [VOCAB.encode(n) for n in NAMES[:10]]
VAL = [VOCAB.encode(n) for n in NAMES[10:]]
STEPS, CHECKPOINT_EVERY = 30, 10


class Killed(Exception):
    """Stands for a kill: the process stops in the middle of a step, nothing more is saved."""


class KillingTask:
    """A task that dies (``Killed``) or gets Ctrl-C (SIGINT) in its ``at``-th step."""

    def __init__(self, task, at: int, how: str = "kill"):
        self.task, self.at, self.how, self.calls = task, at, how, 0

    def train_step(self, model):
        self.calls += 1
        if self.calls == self.at and self.how == "kill":
            raise Killed
        if self.calls == self.at:  # Ctrl-C: the loop finishes the step, saves, then stops
            os.kill(os.getpid(), signal.SIGINT)
        return self.task.train_step(model)

    def __getattr__(self, name):
        return getattr(self.task, name)


def run(folder, resume=False, kill_at=None, how="kill", recorder=True, **config):
    """A small character model on the names; returns (history, model)."""
    model = LanguageModel(len(VOCAB), 16, cell="lstm", dropout=0.1, rng=0)
    task = LinesLMTask(LINES, VAL, batch_size=4, eos_id=VOCAB.eos_id, rng=np.random.default_rng(1))
    if kill_at is not None:
        task = KillingTask(task, kill_at, how)
    samples = LanguageModelSamples(VOCAB, VOCAB.eos_id, VOCAB.eos_id, num=3, length=12)
    record = TrainingRecord(folder, {"data": "names"}, samples, grad_every=4) if recorder else None
    settings = {"steps": STEPS, "eval_every": 5, "checkpoint_every": CHECKPOINT_EVERY}
    settings |= {"clip": 0.28, "progress": "none", **config}
    history = train(model, task, TrainConfig(**settings), folder, resume, recorder=record)
    return history, model


def lines(folder) -> list[bytes]:
    return (folder / RECORD_NAME).read_bytes().splitlines(keepends=True)


def upto(folder, step: int) -> list[bytes]:
    """The record's lines up to ``step``."""
    return [line for line in lines(folder) if json.loads(line)["step"] <= step]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("uninterrupted")
    history, model = run(folder)
    return folder, history, model


def test_the_record_holds_every_step_evaluation_and_checkpoint(uninterrupted):
    folder, history, _ = uninterrupted
    record = read_record(folder)
    assert record.info == {"data": "names"}
    assert [s["step"] for s in record.steps] == list(range(1, STEPS + 1))
    assert [s["loss"] for s in record.steps] == history.train_loss
    assert all(s["lr"] == TrainConfig().lr for s in record.steps)
    assert [[e["step"], e["loss"]] for e in record.evals] == history.val_loss
    for e in record.evals:
        assert e["bits"] == pytest.approx(e["loss"] / math.log(2))
    assert [s["step"] for s in record.samples] == [10, 20, 30]
    assert all(len(s["samples"]) == 3 for s in record.samples)
    with_params = [s["step"] for s in record.steps if "grad_norms" in s]
    assert with_params == [1, 5, 9, 13, 17, 21, 25, 29]
    first = record.steps[0]
    total = math.sqrt(sum(v * v for v in first["grad_norms"].values()))
    assert total == pytest.approx(first["grad_norm"])  # per parameter, before clipping
    assert "rnn.weight_hh_l0" in first["grad_norms"]
    clipped = [s["clipped"] for s in record.steps]
    assert clipped == [s["grad_norm"] > 0.28 for s in record.steps]
    assert 0 < sum(clipped) < len(clipped)


def test_recording_changes_nothing_in_training(uninterrupted, tmp_path):
    _, history, model = uninterrupted
    plain_history, plain = run(tmp_path, recorder=False)
    assert plain_history.train_loss == history.train_loss
    for (name, a), (_, b) in zip(model.named_parameters(), plain.named_parameters()):
        assert np.array_equal(a, b), name
    assert not (tmp_path / RECORD_NAME).exists()


@pytest.mark.parametrize("kill_at", [17, 20, 21, 1])
def test_a_killed_and_resumed_run_has_the_uninterrupted_record(uninterrupted, tmp_path, kill_at):
    """Killed in the middle of step ``kill_at``: the record on disk has every step before it
    (a kill loses at most the steps since the last checkpoint); the resumed run cuts it back to
    the checkpoint and ends with the uninterrupted record, byte for byte."""
    reference = uninterrupted[0]
    with pytest.raises(Killed):
        run(tmp_path, kill_at=kill_at)
    last_checkpoint = (kill_at - 1) // CHECKPOINT_EVERY * CHECKPOINT_EVERY
    assert upto(tmp_path, kill_at - 1) == upto(reference, kill_at - 1)
    with open(tmp_path / RECORD_NAME, "ab") as f:  # and a line cut by the kill
        f.write(b'{"kind": "step", "step": 99, "lo')
    if last_checkpoint == 0:  # no checkpoint yet: the run starts again
        run(tmp_path)
    else:
        assert read_record(tmp_path).steps[-1]["step"] == kill_at - 1  # the cut line is skipped
        run(tmp_path, resume=True)
    assert lines(tmp_path) == lines(reference)


def test_a_kill_between_the_record_and_the_checkpoint(uninterrupted, tmp_path, monkeypatch):
    """The record is on disk (samples of step 20 included) when the checkpoint of step 20 is
    lost with the process: resuming from step 10 cuts those lines off and writes them again."""
    real = train_module._checkpoint

    def dies_at_20(path, model, opt, task, step, *args):
        if step == 20:
            raise Killed
        real(path, model, opt, task, step, *args)

    monkeypatch.setattr(train_module, "_checkpoint", dies_at_20)
    with pytest.raises(Killed):
        run(tmp_path)
    assert [s["step"] for s in read_record(tmp_path).samples] == [10, 20]
    monkeypatch.setattr(train_module, "_checkpoint", real)
    run(tmp_path, resume=True)
    assert lines(tmp_path) == lines(uninterrupted[0])


@pytest.mark.parametrize("at", [14, 20])  # off the checkpoint schedule, and on it
def test_ctrl_c_then_resume_gives_the_uninterrupted_record(uninterrupted, tmp_path, at):
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, kill_at=at, how="sigint")
    assert read_record(tmp_path).steps[-1]["step"] == at  # the step was finished and saved
    run(tmp_path, resume=True)
    assert lines(tmp_path) == lines(uninterrupted[0])


def test_value_clipping_is_flagged_where_an_entry_exceeds_the_bound(tmp_path):
    run(tmp_path, clip=0.05, clip_mode="value", steps=6, checkpoint_every=0)
    record = read_record(tmp_path)
    assert all(s["clipped"] for s in record.steps)  # first steps: some entries above 0.05
    run(tmp_path, clip=100.0, clip_mode="value", steps=6, checkpoint_every=0)
    assert not any(s["clipped"] for s in read_record(tmp_path).steps)


def test_a_broken_or_foreign_record_is_one_clear_error(tmp_path):
    path = tmp_path / RECORD_NAME
    with pytest.raises(RecordError, match="does not exist"):
        read_record(tmp_path)
    path.write_text('{"kind": "something", "step": 0}\n')
    with pytest.raises(RecordError, match="not an rnnkit training record"):
        read_record(tmp_path)
    run(tmp_path, steps=4)
    good = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(good[:2]) + b"not json\n" + b"".join(good[2:]))
    with pytest.raises(RecordError, match=r"line 3, is not a record line"):
        read_record(tmp_path)
    with pytest.raises(RecordError, match="line 3"):  # a resume refuses it too, keeping it
        run(tmp_path, resume=True, steps=8)
    assert path.read_bytes().count(b"not json") == 1


def test_held_out_text_keeps_whole_lines_and_a_stream_cut():
    assert held_out_text(VOCAB, LINES, "lines", limit=25) == "allosaurus\nbrachiosaurus"
    stream = VOCAB.encode("diplodocus")
    assert held_out_text(VOCAB, stream, "stream", limit=4) == "dipl"


def test_samples_depend_on_the_step_only(uninterrupted):
    _, _, model = uninterrupted
    samples = LanguageModelSamples(VOCAB, VOCAB.eos_id, VOCAB.eos_id, num=4, length=12)
    assert samples(model, 7) == samples(model, 7)
    assert samples(model, 7) != samples(model, 8)


# ---------------------------------------------------------------- the real thing


def rnnkit_train(folder, *extra) -> list[str]:
    return [
        sys.executable,
        "-m",
        "rnnkit",
        "train",
        "--out",
        str(folder),
        "--hidden-size",
        "16",
        "--steps",
        "300",
        "--batch-size",
        "16",
        "--eval-every",
        "10",
        "--checkpoint-every",
        "20",
        "--progress",
        "none",
        *extra,
    ]


def test_sigkill_during_rnnkit_train_then_resume(tmp_path):
    """A real ``kill -9`` of ``rnnkit train`` past its first checkpoint; ``--resume`` ends with
    the record of an uninterrupted run."""
    subprocess.run(rnnkit_train(tmp_path / "whole"), check=True, capture_output=True)
    folder = tmp_path / "killed"
    proc = subprocess.Popen(rnnkit_train(folder), stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:  # until the record is past step 45
            if (folder / RECORD_NAME).exists() and b'"step": 45,' in b"".join(lines(folder)):
                break
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    recorded = read_record(folder).steps[-1]["step"]
    assert 45 <= recorded < 300, "the kill came too late to test anything"
    checkpoint = recorded // 20 * 20  # the last one before the kill
    assert upto(folder, checkpoint) == upto(tmp_path / "whole", checkpoint)
    whole = [line for line in lines(folder) if line.endswith(b"\n")]  # a cut last line aside
    assert whole == lines(tmp_path / "whole")[: len(whole)]  # all that was written is right
    done = subprocess.run(rnnkit_train(folder, "--resume"), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert lines(folder) == lines(tmp_path / "whole")


@pytest.mark.parametrize("lost", ["missing", "empty"])
def test_a_resume_whose_record_was_lost_starts_a_new_one(uninterrupted, tmp_path, lost):
    with pytest.raises(Killed):
        run(tmp_path, kill_at=15)
    if lost == "missing":
        (tmp_path / RECORD_NAME).unlink()
    else:
        (tmp_path / RECORD_NAME).write_bytes(b"")
    run(tmp_path, resume=True)
    record = read_record(tmp_path)
    assert [s["step"] for s in record.steps] == list(range(11, STEPS + 1))  # from the checkpoint
    assert lines(tmp_path)[1:] == upto(uninterrupted[0], STEPS)[len(upto(uninterrupted[0], 10)) :]
