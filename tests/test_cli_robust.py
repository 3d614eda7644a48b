"""The command line against what a tester would try: two writers in one run folder, extreme
numbers, files that are not files, texts that change, conflicting flags, signals, and the
weights a run keeps. Every refusal is one line, a non-zero exit, and nothing saved is lost.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_cli import (
    CKPT,
    ENV,
    TIMEOUT,
    command,
    fails,
    names,
    rnnkit,
    run_files,
    start,
    wait_for_step,
)

import rnnkit as rk
from rnnkit.checkpoint import load_checkpoint, save_checkpoint
from rnnkit.models import LanguageModel
from rnnkit.text import Vocabulary, split_lines
from rnnkit.train import lines_loss

SMALL = ["--hidden-size", "8", "--batch-size", "8", "--progress", "none"]


@pytest.fixture(scope="module")
def here(tmp_path_factory) -> Path:
    """A folder with a names file and one short finished run (``done``) whose validation
    loss rises before its end."""
    d = tmp_path_factory.mktemp("robust")
    (d / "names.txt").write_text(names(), encoding="utf-8")
    flags = ["--steps", "60", "--eval-every", "3", "--lr", "0.1"]  # noisy: best at step 54
    rnnkit(d, "train", "names.txt", "--out", "done", *SMALL, *flags)
    return d


def lines_of(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


# ---------------------------------------------------------------- one writer per folder


def test_two_trainers_into_one_folder_one_is_refused_naming_the_other(here, tmp_path):
    (tmp_path / "names.txt").write_text((here / "names.txt").read_text())
    flags = [*SMALL[:-2], "--progress", "line", "--steps", "100000", "--checkpoint-every", "1"]
    first = start(tmp_path, "train", "names.txt", "--out", "run", *flags)
    try:
        wait_for_step(first, 15)  # it holds the folder and writes a checkpoint every step
        for args in (
            ["train", "names.txt", "--out", "run", *SMALL],  # a fresh run
            ["train", "--out", "run", "--resume", "--progress", "none"],  # or a resumed one
            ["train", "names.txt", "--out", "run", "--resume", "--steps", "400"],
        ):
            err = fails(tmp_path, *args)
            assert f"run is in use by another process (pid {first.pid})" in err, err
        assert first.poll() is None
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=TIMEOUT)
    finally:
        first.kill()
    assert first.returncode == 130, err
    _, meta = load_checkpoint(tmp_path / "run" / CKPT)
    assert meta["options"]["steps"] == 100000 and meta["step"] >= 15  # the first run's own
    assert sorted(os.listdir(tmp_path / "run")) == run_files("lines")


def test_two_trainers_started_together_exactly_one_trains(here, tmp_path):
    (tmp_path / "names.txt").write_text((here / "names.txt").read_text())
    args = [
        "train",
        "names.txt",
        "--out",
        "run",
        *SMALL,
        "--steps",
        "200",
        "--checkpoint-every",
        "1",
    ]
    procs = [start(tmp_path, *args) for _ in range(2)]
    results = [(p.pid, *p.communicate(timeout=TIMEOUT), p.returncode) for p in procs]
    codes = sorted(r[3] for r in results)
    assert codes == [0, 2], results
    (loser,) = [r for r in results if r[3] == 2]
    (winner,) = [r for r in results if r[3] == 0]
    assert len(lines_of(loser[2])) == 1 and "Traceback" not in loser[2]
    assert f"pid {winner[0]}" in loser[2] or "already holds a training run" in loser[2]
    assert load_checkpoint(tmp_path / "run" / CKPT)[1]["step"] == 200


def test_a_resume_started_while_a_run_writes_changes_nothing(here, tmp_path):
    """--resume used to delete the running run's temporary file; now it is refused before it
    reads or removes anything, and the running run ends with the very weights of a run that
    was left alone."""
    (tmp_path / "names.txt").write_text((here / "names.txt").read_text())
    flags = ["--steps", "600", "--checkpoint-every", "1", "--seed", "4", "--dropout", "0.3"]
    rnnkit(tmp_path, "train", "names.txt", "--out", "alone", *SMALL, *flags)
    writer = start(
        tmp_path, "train", "names.txt", "--out", "run", *SMALL[:-2], *flags, "--progress", "line"
    )
    attempts = 0
    try:
        wait_for_step(writer, 10)
        while writer.poll() is None and attempts < 6:
            result = rnnkit(tmp_path, "train", "--out", "run", "--resume", rc=None)
            if writer.poll() is None or result.returncode == 2:  # (unless it ended meanwhile)
                assert result.returncode == 2 and f"pid {writer.pid}" in result.stderr
                assert len(result.stderr.splitlines()) == 1
                attempts += 1
        _, err = writer.communicate(timeout=TIMEOUT)
    finally:
        writer.kill()
    assert writer.returncode == 0, err
    assert attempts >= 2, "the run ended before the resumes could be tried"
    a, _ = load_checkpoint(tmp_path / "alone" / CKPT)
    b, _ = load_checkpoint(tmp_path / "run" / CKPT)
    assert sorted(a) == sorted(b) and all(a[k].tobytes() == b[k].tobytes() for k in a)


# ---------------------------------------------------------------- files that are not files


def test_a_fifo_or_a_device_as_the_text_is_refused_without_blocking(here, tmp_path):
    os.mkfifo(tmp_path / "pipe.txt")
    err = fails(tmp_path, "train", "pipe.txt", "--out", "run", *SMALL)
    assert "pipe.txt is a FIFO (named pipe), not a regular file" in err
    err = fails(tmp_path, "train", "/dev/zero", "--out", "run", *SMALL)
    assert "/dev/zero is a character device, not a regular file" in err
    err = fails(tmp_path, "eval", str(here / "done"), "pipe.txt")
    assert "FIFO" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("where", ["/dev/zero", "fifo", "folder", "missing"])
def test_a_checkpoint_naming_another_text_never_reads_it(here, tmp_path, where):
    """The text a resumed run reads (without FILE) is named by its checkpoint: a crafted one
    pointing at /dev/zero, a FIFO or a folder is refused before anything is read."""
    run = tmp_path / "run"
    run.mkdir()
    arrays, meta = load_checkpoint(here / "done" / CKPT)
    if where == "fifo":
        os.mkfifo(tmp_path / "pipe")
    (tmp_path / "folder").mkdir()
    meta["source"]["path"] = {
        "fifo": str(tmp_path / "pipe"),
        "folder": str(tmp_path / "folder"),
        "missing": str(tmp_path / "gone.txt"),
    }.get(where, where)
    save_checkpoint(run / CKPT, arrays, meta)
    before = (run / CKPT).read_bytes()
    err = fails(tmp_path, "train", "--out", "run", "--resume", "--steps", "20")
    assert "not a regular file" in err or "no such file" in err
    assert (run / CKPT).read_bytes() == before


def test_a_changed_text_is_refused_without_echoing_it(here, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    arrays, meta = load_checkpoint(here / "done" / CKPT)
    secret = tmp_path / "secret.txt"
    secret.write_text("the root password is hunter2\n" * 50)
    meta["source"]["path"] = str(secret)
    save_checkpoint(run / CKPT, arrays, meta)
    err = fails(tmp_path, "train", "--out", "run", "--resume", "--steps", "20")
    assert "secret.txt is not the text the run was trained on" in err
    assert "hunter2" not in err and "password" not in err


# ---------------------------------------------------------------- extreme input


@pytest.mark.parametrize(
    "flags, needles",
    [
        (["--epochs", "inf"], ["--epochs must be a finite number"]),
        (["--epochs", "nan"], ["--epochs must be a finite number"]),
        (["--epochs", "1e12"], ["steps, more than 1,000,000"]),
        (["--steps", "1000000000000"], ["--steps must be <= 1,000,000"]),
        (["--clip", "nan"], ["--clip must be >= 0 and finite"]),
        (["--clip", "inf"], ["--clip must be >= 0 and finite"]),
        (["--lr", "inf"], ["--lr must be > 0 and finite"]),
        (["--lr", "nan"], ["--lr must be > 0 and finite"]),
        (["--dropout", "nan"], ["--dropout must be a finite number"]),
        (["--val-frac", "-0.5"], ["--val-frac must be in [0, 1)"]),
        (["--seed", "-1"], ["--seed must be >= 0"]),
        (["--hidden-size", "100000"], ["needs about", "is available", "--hidden-size"]),
        (["--embedding-dim", "1000000000000"], ["needs about", "is available", "--embedding-dim"]),
        (["--num-layers", "1000000000"], ["needs about", "is available", "--num-layers"]),
        (["--hidden-size", "20000", "--batch-size", "1"], ["of weights", "5 times that"]),
        (["--batch-size", "100000"], ["fewer than one batch"]),
        (["--encoding", "base64"], ["--encoding", "'base64' is not a text encoding"]),
        (["--encoding", "rot13"], ["'rot13' is not a text encoding"]),
        (["--encoding", "no-such-codec"], ["unknown encoding 'no-such-codec'"]),
        (["--steps", "10", "--epochs", "2"], ["give --steps or --epochs, not both"]),
        (["--min-count", "5"], ["--min-count applies to word level only"]),
        (["--seq-len", "20"], ["--seq-len applies to stream mode only"]),
        (["--val-frac", "0", "--patience", "3"], ["--val-frac 0 means none"]),
        (["--val-frac", "0", "--eval-every", "5"], ["--val-frac 0 means none"]),
        (["--clip", "0", "--clip-mode", "value"], ["--clip 0 turns it off"]),
    ],
)
def test_extreme_or_conflicting_training_flags(here, flags, needles):
    err = fails(here, "train", "names.txt", "--out", "x", *SMALL, *flags)
    for needle in needles:
        assert needle in err, err
    assert not (here / "x").exists()


def test_batches_that_cannot_fit_in_memory_are_refused_up_front(tmp_path):
    (tmp_path / "long.txt").write_text("abcdefghij" * 20000 + "\n")
    flags = [
        "--mode",
        "stream",
        "--hidden-size",
        "20000",
        "--batch-size",
        "100",
        "--seq-len",
        "1000",
    ]
    err = fails(tmp_path, "train", "long.txt", "--out", "x", "--progress", "none", *flags)
    assert "needs about" in err and "is available" in err and "--batch-size, --seq-len" in err


@pytest.mark.parametrize(
    "flags, needles",
    [
        (["--num", "1000000000"], ["1,000,000,000 samples", "is available", "--num"]),
        (["--length", "1000000000000"], ["samples of up to", "is available"]),
        (["--greedy", "--temperature", "0.5"], ["--greedy", "--temperature has no use"]),
        (["--greedy", "--num", "2"], ["--greedy gives the same sample every time"]),
        (["--greedy", "--top-k", "3", "--top-p", "0.5"], ["--top-k, --top-p has no use"]),
        (["--temperature", "inf"], ["--temperature must be a finite number > 0"]),
        (["--temperature", "nan"], ["--temperature must be"]),
        (["--top-p", "nan"], ["--top-p"]),
    ],
)
def test_extreme_or_conflicting_sampling_flags(here, flags, needles):
    err = fails(here, "sample", "done", *flags)
    for needle in needles:
        assert needle in err, err


def test_a_byte_order_mark_is_dropped_and_line_breaks_are_read_as_newlines(tmp_path):
    text = "abc cab\r\nbca\rcba abc\n" * 40
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbf" + text.encode())
    flags = ["--mode", "stream", "--seq-len", "10", *SMALL, "--steps", "2"]
    rnnkit(tmp_path, "train", "bom.txt", "--out", "run", *flags)
    vocab = Vocabulary.from_json(load_checkpoint(tmp_path / "run" / CKPT)[1]["vocabulary"])
    assert sorted(vocab.tokens) == sorted(["<eos>", "\n", " ", "a", "b", "c"])
    assert "\\r\\n" in rnnkit(tmp_path, "train", "--help").stdout


def test_val_frac_0_means_no_validation_said_plainly(here, tmp_path):
    (tmp_path / "names.txt").write_text((here / "names.txt").read_text())
    out = rnnkit(
        tmp_path, "train", "names.txt", "--out", "run", *SMALL, "--steps", "3", "--val-frac", "0"
    ).stdout
    assert "no validation (--val-frac 0)" in out
    assert re.search(r"done: 3 steps, no validation: the last weights are kept", out)
    arrays, meta = load_checkpoint(tmp_path / "run" / CKPT)
    assert meta["history"]["val_loss"] == [] and not any(k.startswith("best.") for k in arrays)


# ---------------------------------------------------------------- signals and the weights kept


def test_sigterm_saves_a_checkpoint_and_exits_143(here, tmp_path):
    (tmp_path / "names.txt").write_text((here / "names.txt").read_text())
    flags = [*SMALL[:-2], "--progress", "line", "--steps", "3000", "--checkpoint-every", "100000"]
    proc = start(tmp_path, "train", "names.txt", "--out", "run", *flags)
    try:
        wait_for_step(proc, 150)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
    assert proc.returncode == 143 and "Traceback" not in err
    last = err.splitlines()[-1]
    assert "interrupted (SIGTERM): checkpoint saved in run; continue with --resume" in last
    _, meta = load_checkpoint(tmp_path / "run" / CKPT)
    assert 150 <= meta["step"] < 3000 and len(meta["history"]["train_loss"]) == meta["step"]


def test_the_run_keeps_its_best_weights_and_resumes_from_its_last(here, tmp_path):
    """As Keras's restore_best_weights and char-rnn's best checkpoint: sample, eval and score
    use the weights of the best validation; --resume continues from the last ones."""
    arrays, meta = load_checkpoint(here / "done" / CKPT)
    best = {k[5:]: v for k, v in arrays.items() if k.startswith("best.")}
    last = {k[6:]: v for k, v in arrays.items() if k.startswith("model.")}
    assert meta["history"]["best_step"] < meta["step"] == 60
    assert best.keys() == last.keys() and any((best[k] != last[k]).any() for k in best)
    model = rk.load(here / "done" / CKPT)  # the weights kept
    assert all(np.array_equal(v, best[k]) for k, v in model.named_parameters())
    text = "\n".join(split_lines((here / "names.txt").read_text())[:30]) + "\n"
    (tmp_path / "some.txt").write_text(text)
    got = json.loads(rnnkit(tmp_path, "eval", str(here / "done"), "some.txt", "--json").stdout)
    vocab = Vocabulary.from_json(meta["vocabulary"])
    ids = [vocab.encode(line) for line in split_lines(text)]
    assert got["loss"] == pytest.approx(lines_loss(model.eval(), ids, vocab.eos_id)[0], rel=1e-6)


def test_a_language_model_saved_from_python_works_with_sample_eval_and_score(here, tmp_path):
    text = (here / "names.txt").read_text()
    vocab = Vocabulary.build(split_lines(text), "char")
    model = LanguageModel(len(vocab), 8, rng=0)
    model.save(tmp_path / "lm.safetensors", vocabulary=vocab)
    out = rnnkit(tmp_path, "sample", "lm.safetensors", "--num", "3", "--length", "8").stdout
    assert (
        out.startswith("model: lm.safetensors: lstm x 1, hidden 8") and len(out.splitlines()) == 4
    )
    (tmp_path / "names.txt").write_text(text)
    assert json.loads(rnnkit(tmp_path, "eval", "lm.safetensors", "names.txt", "--json").stdout)
    rnnkit(tmp_path, "score", "lm.safetensors", "kalo")
    LanguageModel(len(vocab), 8, rng=0).save(tmp_path / "novocab.safetensors")
    err = fails(tmp_path, "sample", "novocab.safetensors")
    assert "holds no vocabulary" in err and "vocabulary=vocab" in err
    rk.SequenceClassifier(5, 2, 4, rng=0).save(tmp_path / "clf.safetensors")
    assert "holds a SequenceClassifier, not a language model" in fails(
        tmp_path, "sample", "clf.safetensors"
    )


def test_the_demo_leaves_nothing_behind_in_the_temporary_folder(tmp_path):
    """``rnnkit demo`` without --out trains in a temporary folder and removes it."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**ENV, "TMPDIR": str(tmp)}
    result = subprocess.run(
        command(["demo", "--progress", "none"]),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert out[0].startswith("demo: ") and out[1].startswith("data: ")
    assert out[-11].startswith("ten novel names") and "kept in" not in out[-11]
    names_ = out[-10:]
    bundled = Path(rk.__file__).parent / "resources" / "dinosaurs.txt"
    assert len(set(names_)) == 10 and not set(names_) & set(split_lines(bundled.read_text()))
    assert all(re.fullmatch(r"[a-z]+", n) for n in names_), names_
    assert os.listdir(tmp) == []


def test_an_application_error_goes_through_the_one_mapping(tmp_path):
    """`rnnkit app` and `gradflow` end like every command: their --help exits 0, a bad flag
    is one line with exit 2."""
    ok = subprocess.run(
        [sys.executable, "-m", "rnnkit", "gradflow", "--help"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=ENV,
    )
    assert ok.returncode == 0
    bad = subprocess.run(
        [sys.executable, "-m", "rnnkit", "gradflow", "--steps", "many"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=ENV,
    )
    assert bad.returncode == 2 and len(lines_of(bad.stderr)) == 1 and "Traceback" not in bad.stderr


@pytest.mark.parametrize(
    "change, needle",
    [
        ("tokens_fewer_than_the_model", "its vocabulary has 18 tokens, its model 19"),
        ("no_eos", "<eos>"),
        ("duplicate_tokens", "distinct"),
        ("unknown_mode", "--mode must be one of stream, lines"),
        ("level_disagrees", "disagree on the level"),
    ],
)
def test_a_vocabulary_or_options_that_do_not_fit_the_model_are_refused(
    here, tmp_path, change, needle
):
    """Sampling an id the vocabulary lacks was an IndexError; a mode nobody knows, a KeyError."""
    arrays, meta = load_checkpoint(here / "done" / CKPT)
    tokens = meta["vocabulary"]["tokens"]
    if change == "tokens_fewer_than_the_model":
        meta["vocabulary"]["tokens"] = tokens[:-1]
    elif change == "no_eos":
        meta["vocabulary"]["tokens"] = ["#", *tokens[1:]]
    elif change == "duplicate_tokens":
        meta["vocabulary"]["tokens"] = [*tokens[:-1], tokens[1]]
    elif change == "unknown_mode":
        meta["options"]["mode"] = "banana"
    else:
        meta["options"]["level"] = "word"
    save_checkpoint(tmp_path / CKPT, arrays, meta)
    for args in (["sample", CKPT], ["score", CKPT, "kalo"]):
        assert needle in fails(tmp_path, *args)
