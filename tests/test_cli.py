"""The ``rnnkit`` command end to end, driven the way a user types it.

Every test runs the installed console script (or ``python -m rnnkit``) in a subprocess, in a
temporary folder, on small texts written here, with tiny models. The four runs of the
``runs`` fixture (char/word x stream/lines) are trained once and shared; tests that must change
a run work on a copy.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rnnkit import checkpoint as checkpoint_module
from rnnkit.checkpoint import load_checkpoint
from rnnkit.cli import train as cli_train
from rnnkit.optim import OPTIMIZERS
from rnnkit.text import Vocabulary, split_lines, tokenize
from rnnkit.train import History

RNNKIT = shutil.which("rnnkit", path=str(Path(sys.executable).parent)) or shutil.which("rnnkit")
CKPT = "checkpoint.safetensors"


def run_files(mode: str) -> list[str]:
    """What a run folder holds, sorted: its lock, checkpoint and record, and the text encoded
    beside them."""
    corpus = ["corpus.ids", "corpus.json"] + (["corpus.lines"] if mode == "lines" else [])
    return sorted([".lock", CKPT, "record.jsonl", *corpus])


# Several rnnkit processes may run at once (a killed run and the test's own NumPy): on a small
# machine OpenBLAS threads spinning against each other make everything many times slower.
ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
ENV.pop("COLUMNS", None)
TIMEOUT = 120

TINY = ["--hidden-size", "16", "--batch-size", "8", "--progress", "none"]
LOCK = ".lock"  # the lock file a training run holds in its folder


def command(args, module: bool = False) -> list[str]:
    """The command line: the console script, or ``python -m rnnkit``."""
    if module or RNNKIT is None:
        return [sys.executable, "-m", "rnnkit", *map(str, args)]
    return [RNNKIT, *map(str, args)]


def rnnkit(cwd, *args, module: bool = False, rc: int | None = 0) -> subprocess.CompletedProcess:
    """Run one command to its end; check its exit status (unless ``rc`` is None)."""
    result = subprocess.run(
        command(args, module),
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    if rc is not None:
        assert result.returncode == rc, (
            f"rnnkit {' '.join(map(str, args))}: exit {result.returncode}, expected {rc}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result


def start(cwd, *args) -> subprocess.Popen:
    """Start a command in the background, output piped."""
    return subprocess.Popen(
        command(args),
        cwd=cwd,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def fails(cwd, *args, rc: int = 2, started: bool = False) -> str:
    """Run a command that must fail cleanly: exit ``rc``, exactly one line on stderr, no
    traceback, and nothing on stdout (unless it ``started`` its work). Returns that line."""
    result = rnnkit(cwd, *args, rc=rc)
    err = result.stderr
    assert "Traceback" not in err, err
    assert err.endswith("\n") and len(err.splitlines()) == 1, f"not one line:\n{err}"
    if not started:
        assert result.stdout == "", result.stdout
    assert err.startswith("rnnkit"), err
    return err.strip()


def json_out(result: subprocess.CompletedProcess) -> dict:
    """stdout of a ``--json`` command: exactly one JSON object."""
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    return json.loads(lines[0])


def arrays_of(folder: Path) -> tuple[dict, dict]:
    return load_checkpoint(Path(folder) / CKPT)


def assert_same_arrays(a: dict, b: dict, prefixes=("model.", "optim.")) -> None:
    """The arrays under ``prefixes`` are equal bit for bit."""
    keys_a = sorted(k for k in a if k.startswith(prefixes))
    keys_b = sorted(k for k in b if k.startswith(prefixes))
    assert keys_a == keys_b and any(k.startswith("model.") for k in keys_a)
    for k in keys_a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), f"{k} differs"


# ---------------------------------------------------------------- data written by the tests

WORDS = (
    "the a cat dog bird sat ran flew on under over mat tree house red small big green "
    "quickly slowly and then"
).split()
RARE = ["zeppelin", "yodel", "xylophone"]  # each appears once: --min-count 2 reads them <unk>
SYLLABLES = "ka lo mi ra sa to ne ri du pa ve lu bo ga fi so".split()


def sentences(n: int = 150, seed: int = 0) -> str:
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 8))]
        lines.append(" ".join(words).capitalize() + rng.choice([".", "!", " ."]))
    for i, word in enumerate(RARE):
        lines[10 * i + 3] += f" {word}."
    return "\n".join(lines) + "\n"


def names(n: int = 160, seed: int = 1) -> str:
    rng = random.Random(seed)
    out = {
        "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))) + rng.choice(["", "n"])
        for _ in range(n)
    }
    return "\n".join(sorted(out)) + "\n"


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A folder with the texts every test reads."""
    d = tmp_path_factory.mktemp("cli")
    (d / "text.txt").write_text(sentences(), encoding="utf-8")
    (d / "names.txt").write_text(names(), encoding="utf-8")
    (d / "empty.txt").write_bytes(b"")
    (d / "blank.txt").write_text("  \n\n \t\n")
    (d / "few_lines.txt").write_text("kalo\nmira\nsato\n")
    (d / "short.txt").write_text("the cat sat on the mat\n")
    (d / "latin1.txt").write_bytes(sentences(40).encode() + "caf\u00e9 au lait\n".encode("latin-1"))
    (d / "file.txt").write_text("a regular file, not a folder\n")
    return d


# level, mode -> (text, extra flags). The four runs also cover each cell, --num-layers,
# --dropout, --min-count, --val-frac, --eval-every, --checkpoint-every, --seed, --lr, --clip.
RUNS = {
    ("char", "stream"): (
        "text.txt",
        ["--cell", "gru", "--steps", "40", "--dropout", "0.1", "--seq-len", "20"],
    ),
    ("char", "lines"): ("names.txt", ["--cell", "lstm", "--steps", "40", "--lr", "0.01"]),
    ("word", "stream"): (
        "text.txt",
        ["--cell", "rnn", "--steps", "30", "--clip", "1", "--seq-len", "20"],
    ),
    (
        "word",
        "lines",
    ): (
        "text.txt",
        ["--steps", "30", "--num-layers", "2", "--min-count", "2", "--val-frac", "0.2"],
    ),
}
LEVEL_MODES = list(RUNS)
IDS = [f"{level}-{mode}" for level, mode in RUNS]


@pytest.fixture(scope="module")
def runs(work) -> dict:
    """The four trained runs: (level, mode) -> (folder name, stdout of train)."""
    out = {}
    for (level, mode), (text, extra) in RUNS.items():
        folder = f"run-{level}-{mode}"
        result = rnnkit(
            work,
            "train",
            text,
            "--out",
            folder,
            "--level",
            level,
            "--mode",
            mode,
            "--eval-every",
            "10",
            "--checkpoint-every",
            "10",
            "--seed",
            "3",
            *TINY,
            *extra,
        )
        out[level, mode] = (folder, result.stdout)
    return out


def expected_vocab(work: Path, level: str, mode: str) -> Vocabulary:
    text_file, extra = RUNS[level, mode]
    text = (work / text_file).read_text()
    min_count = int(extra[extra.index("--min-count") + 1]) if "--min-count" in extra else 1
    return Vocabulary.build(split_lines(text) if mode == "lines" else [text], level, min_count)


# ---------------------------------------------------------------- train


@pytest.mark.parametrize(("level", "mode"), LEVEL_MODES, ids=IDS)
def test_train_prints_what_it_resolved_and_saves(work, runs, level, mode):
    folder, stdout = runs[level, mode]
    text_file, extra = RUNS[level, mode]
    steps = int(extra[extra.index("--steps") + 1])
    lines = stdout.splitlines()
    heads = [line.split(":")[0] for line in lines]
    assert heads == ["data", "vocabulary", "model", "training", "done"]
    assert lines[0].startswith(f"data: {text_file} ({level} level, {mode} mode): ")
    text = (work / text_file).read_text()
    sizes = {k: int(v.replace(",", "")) for k, v in re.findall(r"(\w+ \w+) ([\d,]+)", lines[0])}
    vocab = expected_vocab(work, level, mode)
    if mode == "lines":
        assert sizes["train lines"] + sizes["val lines"] == len(split_lines(text))
        assert sizes["val lines"] > 0
    else:
        assert sizes["train tokens"] + sizes["val tokens"] == len(vocab.encode_stream(text))
    assert lines[1] == f"vocabulary: {len(vocab)} tokens"
    arrays, meta = arrays_of(work / folder)
    n_params = sum(a.size for k, a in arrays.items() if k.startswith("model."))
    assert f"{n_params:,} parameters" in lines[2]
    assert lines[3].startswith(f"training: {steps} steps (")
    best = meta["history"]["best_step"]
    assert re.fullmatch(
        rf"done: {steps} steps, best held-out loss \d+\.\d+ nats per token \(perplexity "
        rf"\d+\.\d+\) at step {best}, the weights kept; saved in {folder}",
        lines[4],
    )
    assert meta["step"] == steps and any(k.startswith("best.") for k in arrays)
    assert Vocabulary.from_json(meta["vocabulary"]) == vocab
    assert meta["options"]["level"] == level and meta["options"]["mode"] == mode
    assert sorted(os.listdir(work / folder)) == run_files(mode)  # no temporary files left


def test_word_min_count_reads_rare_words_as_unk(work, runs):
    vocab = Vocabulary.from_json(arrays_of(work / runs["word", "lines"][0])[1]["vocabulary"])
    assert "<unk>" in vocab.ids and not set(RARE) & set(vocab.ids)
    assert "cat" in vocab.ids
    folder = runs["word", "lines"][0]
    score = json_out(rnnkit(work, "score", folder, "the xylophone sat", "--json"))
    assert [t for t, _ in score["per_token"]] == ["the", "<unk>", "sat", "<eos>"]


def test_train_without_file_uses_the_bundled_names(tmp_path):
    out = rnnkit(tmp_path, "train", "--out", "dino", "--steps", "20", *TINY).stdout
    first = out.splitlines()[0]
    assert first.startswith("data: ") and "dinosaurs.txt (char level, lines mode)" in first
    assert "vocabulary: 27 tokens" in out  # a-z and <eos>
    assert arrays_of(tmp_path / "dino")[1]["step"] == 20


def test_epochs_sets_the_number_of_steps(work, tmp_path):
    shutil.copy(work / "names.txt", tmp_path)
    out = rnnkit(tmp_path, "train", "names.txt", "--out", "ep", "--epochs", "2", *TINY).stdout
    n_lines = len(split_lines((work / "names.txt").read_text()))
    train_lines = n_lines - round(0.1 * n_lines)
    steps = 2 * (train_lines // 8)
    assert f"training: {steps} steps (2.00 epochs)" in out
    assert arrays_of(tmp_path / "ep")[1]["step"] == steps
    out = rnnkit(tmp_path, "train", "names.txt", "--out", "ep2", "--epochs", "0.5", *TINY).stdout
    half = round(0.5 * (train_lines // 8))
    assert f"training: {half} steps ({half / (train_lines // 8):.2f} epochs)" in out


def test_every_optimizer_and_progress_display(work, tmp_path):
    shutil.copy(work / "names.txt", tmp_path)
    names_ = sorted(set(OPTIMIZERS) | {"adam", "sgd", "adagrad", "rmsprop"})
    displays = ["bar", "line", "auto", "none"]
    for i, opt in enumerate(names_):
        progress = displays[i % len(displays)]
        flags = [*TINY[:-2], "--progress", progress, "--steps", "20", "--optimizer", opt]
        result = rnnkit(tmp_path, "train", "names.txt", "--out", f"o-{opt}", *flags)
        assert f", {opt} lr " in result.stdout
        meta = arrays_of(tmp_path / f"o-{opt}")[1]
        assert meta["config"]["optimizer"] == opt and meta["step"] == 20
        if progress == "bar":  # tqdm's bar (text mode reads its carriage returns as breaks)
            assert "20/20" in result.stderr and "loss" in result.stderr
        elif progress in ("line", "auto"):  # auto: no terminal here, so plain lines
            assert "\r" not in result.stderr and "step 20/20 loss" in result.stderr
        else:
            assert result.stderr == ""


def second_step(tmp_path: Path, clip_mode: str, c: float) -> np.ndarray:
    """Every weight's change in the second step of plain SGD at lr 1 (so the change is minus
    the clipped gradient): a 2-step run minus a 1-step run, which are the same until then."""
    flags = [*TINY, "--optimizer", "sgd", "--lr", "1", "--clip-mode", clip_mode, "--clip", str(c)]
    one, two = f"{clip_mode}-1", f"{clip_mode}-2"
    rnnkit(tmp_path, "train", "names.txt", "--out", one, "--steps", "1", *flags)
    rnnkit(tmp_path, "train", "names.txt", "--out", two, "--steps", "2", *flags)
    (a, meta), (b, _) = arrays_of(tmp_path / one), arrays_of(tmp_path / two)
    assert meta["config"]["clip_mode"] == clip_mode and meta["config"]["clip"] == c
    keys = sorted(k for k in a if k.startswith("model."))
    return np.concatenate([(b[k].astype(np.float64) - a[k]).ravel() for k in keys])


def test_clip_mode_value_clips_each_entry(work, tmp_path):
    """The course's element-wise clip: every entry of the gradient is cut to [-c, c], so many
    weights move by c exactly; the default global-norm clip bounds the norm of the whole step."""
    shutil.copy(work / "names.txt", tmp_path)
    c = 1e-3
    tol = 1e-6  # float32 weights of order 0.1: their spacing is about 1e-8
    value = np.abs(second_step(tmp_path, "value", c))
    assert value.max() <= c + tol
    assert np.sum(value > c - tol) >= 20  # clipped entries hit the bound
    norm = second_step(tmp_path, "norm", c)
    assert np.linalg.norm(norm) <= c * (1 + 1e-3)
    assert np.sum(np.abs(norm) > c - tol) <= 1


def test_train_refuses_a_folder_that_holds_a_run(work, runs):
    folder = work / runs["char", "lines"][0]
    before = (folder / CKPT).read_bytes()
    mtime = (folder / CKPT).stat().st_mtime_ns
    err = fails(work, "train", "names.txt", "--out", folder.name, *TINY)
    assert "already holds a training run" in err and "--resume" in err
    assert (folder / CKPT).read_bytes() == before
    assert (folder / CKPT).stat().st_mtime_ns == mtime
    assert sorted(os.listdir(folder)) == run_files("lines")


# ---------------------------------------------------------------- sample


@pytest.mark.parametrize(("level", "mode"), LEVEL_MODES, ids=IDS)
def test_sample(work, runs, level, mode):
    folder = runs[level, mode][0]
    vocab = expected_vocab(work, level, mode)
    args = ["sample", folder, "--num", "4", "--length", "30"]
    first = rnnkit(work, *args, "--seed", "1").stdout
    header, *samples = first.splitlines()
    assert header.startswith(f"model: {folder}: ") and f"({level} level, {mode} mode)" in header
    assert f"vocabulary {len(vocab)} tokens" in header
    assert "<eos>" not in first
    if mode == "lines":  # one sample a line: stopped at <eos>, no line break inside
        assert len(samples) == 4
        if level == "char":
            assert all(len(s) <= 30 for s in samples)
    # the same seed gives the same samples, another seed others
    assert rnnkit(work, *args, "--seed", "1").stdout == first
    assert rnnkit(work, *args, "--seed", "2").stdout != first
    # --top-k 1 is greedy decoding, whatever the seed; --greedy gives one sample
    one = ["sample", folder, "--length", "30"]
    greedy = rnnkit(work, *one, "--greedy").stdout
    assert rnnkit(work, *one, "--num", "1", "--top-k", "1", "--seed", "7").stdout == greedy
    top1 = rnnkit(work, *args, "--top-k", "1", "--seed", "7").stdout.splitlines()[1:]
    if mode == "lines":  # one line: one sample
        assert len(greedy.splitlines()) == 2 and top1 == greedy.splitlines()[1:] * 4


def test_sample_options(work, runs):
    folder = runs["char", "lines"][0]
    base = ["sample", folder, "--num", "3", "--length", "12", "--seed", "5"]
    for extra in (["--temperature", "0.5"], ["--top-p", "0.9"], ["--top-p", "1"], ["--top-k", "3"]):
        out = rnnkit(work, *base, *extra).stdout.splitlines()
        assert len(out) == 4 and all(len(s) <= 12 for s in out[1:])
    # --top-p 1 keeps every token: the same as plain sampling
    assert rnnkit(work, *base, "--top-p", "1").stdout == rnnkit(work, *base).stdout
    # a prime: every sample starts with it
    out = rnnkit(work, *base, "--prime", "ka").stdout.splitlines()[1:]
    assert len(out) == 3 and all(s.startswith("ka") for s in out)


def test_sample_word_prime(work, runs):
    folder = runs["word", "stream"][0]
    out = rnnkit(work, "sample", folder, "--prime", "the cat", "--num", "2", "--length", "5")
    samples = out.stdout.splitlines()[1:]
    assert samples and samples[0].startswith("the cat")


def test_python_m_rnnkit_is_the_same_command(work, runs):
    folder = runs["char", "stream"][0]
    args = ["sample", folder, "--num", "2", "--length", "20", "--seed", "4"]
    assert rnnkit(work, *args, module=True).stdout == rnnkit(work, *args).stdout
    version = rnnkit(work, "--version", module=True).stdout
    assert re.fullmatch(r"rnnkit \d+\.\d+\.\d+\S*\n", version)


# ---------------------------------------------------------------- eval / score


def tokens_and_chars(vocab: Vocabulary, mode: str, text: str) -> tuple[int, int]:
    """What ``eval`` counts: tokens predicted and characters covered."""
    if mode == "lines":
        lines = split_lines(text)
        return sum(len(vocab.encode(x)) + 1 for x in lines), sum(len(x) + 1 for x in lines)
    return len(vocab.encode_stream(text)), len(text)


@pytest.mark.parametrize(("level", "mode"), LEVEL_MODES, ids=IDS)
def test_eval(work, runs, level, mode):
    folder = runs[level, mode][0]
    text_file = RUNS[level, mode][0]
    result = rnnkit(work, "eval", folder, text_file, "--json")
    got = json_out(result)
    assert set(got) == {"loss", "perplexity", "bits_per_char", "tokens"}
    assert result.stderr.startswith(f"model: {folder}: ")  # stdout is kept for the JSON
    vocab = expected_vocab(work, level, mode)
    tokens, chars = tokens_and_chars(vocab, mode, (work / text_file).read_text())
    assert got["tokens"] == tokens
    assert 0 < got["loss"] < math.log(len(vocab)) + 0.5  # it learned something, or nearly
    assert got["perplexity"] == pytest.approx(math.exp(got["loss"]), rel=1e-12)
    bits = got["loss"] * tokens / chars / math.log(2)
    assert got["bits_per_char"] == pytest.approx(bits, rel=1e-12)
    if level == "char":
        assert chars == tokens
        assert got["bits_per_char"] == pytest.approx(got["loss"] / math.log(2), rel=1e-12)
    # the human-readable form says the same
    text = rnnkit(work, "eval", folder, text_file).stdout
    lines = text.splitlines()
    assert lines[0].startswith("model: ") and lines[1].startswith(f"data: {text_file}: ")
    assert lines[2] == (
        f"{text_file}: {tokens:,} tokens, loss {got['loss']:.4f} nats/token, perplexity "
        f"{got['perplexity']:.3f}, {got['bits_per_char']:.4f} bits/char"
    )


SCORED = {"char": "ralosa", "word": "The cat sat on the mat ."}


@pytest.mark.parametrize(("level", "mode"), LEVEL_MODES, ids=IDS)
def test_score(work, runs, level, mode):
    folder = runs[level, mode][0]
    text = SCORED[level]
    got = json_out(rnnkit(work, "score", folder, text, "--json"))
    per = got["per_token"]
    toks = [t for t, _ in per]
    expected = tokenize(text, level) + (["<eos>"] if mode == "lines" else [])
    assert toks == expected and got["tokens"] == len(expected)
    assert all(p < 0 for _, p in per)
    assert got["log_prob"] == pytest.approx(sum(p for _, p in per), rel=1e-12)
    assert got["log_prob_per_token"] == pytest.approx(got["log_prob"] / len(per), rel=1e-12)
    if mode == "lines":  # the same number as eval on a one-line file of that text
        one = work / f"one-{level}.txt"
        one.write_text(text + "\n")
        ev = json_out(rnnkit(work, "eval", folder, one.name, "--json"))
        assert ev["tokens"] == got["tokens"]
        assert got["log_prob"] == pytest.approx(-ev["loss"] * ev["tokens"], rel=1e-6)
    out = rnnkit(work, "score", folder, text).stdout.splitlines()
    assert out[0].startswith(f"model: {folder}: ")
    assert out[1] == (
        f"log P = {got['log_prob']:.4f} nats over {len(per)} tokens "
        f"({got['log_prob_per_token']:.4f} per token)"
    )
    assert len(out) == 2 + len(per)


# ---------------------------------------------------------------- demo and help


def test_demo_prints_novel_names(tmp_path):
    out = rnnkit(tmp_path, "demo", "--out", "demo", "--progress", "none").stdout.splitlines()
    assert out[0].startswith("demo: ")
    assert out[1].startswith("data: ") and "dinosaurs.txt" in out[1]
    assert out[2] == "vocabulary: 27 tokens"
    assert any(line.startswith("done: ") for line in out)
    found = out[-10:]
    assert out[-11].startswith("ten novel names")
    bundled = Path(checkpoint_module.__file__).parent / "resources" / "dinosaurs.txt"
    known = set(split_lines(bundled.read_text()))
    assert len(set(found)) == 10
    assert all(re.fullmatch(r"[a-z]+", name) for name in found), found
    assert not set(found) & known
    assert arrays_of(tmp_path / "demo")[1]["step"] > 0


FLAGS = {
    "train": """--out --level char word --mode stream lines --cell lstm gru rnn --hidden-size
        --num-layers --dropout --seq-len --batch-size --steps --epochs --optimizer adam sgd
        adagrad rmsprop --lr --clip --clip-mode value --val-frac --eval-every --checkpoint-every
        --seed --min-count --encoding --errors strict replace --progress auto bar line none
        --resume FILE""",
    "sample": "--num --length --temperature --top-k --top-p --greedy --prime --seed DIR",
    "eval": "--json --encoding --errors DIR FILE",
    "score": "--json DIR TEXT",
    "demo": "--out --progress",
}


def test_help_mentions_every_flag(tmp_path):
    top = rnnkit(tmp_path, "--help", module=True).stdout
    for cmd in FLAGS:
        assert re.search(rf"^\s+{cmd}\s+\S", top, re.M), f"{cmd} not explained in --help"
    for cmd, flags in FLAGS.items():
        text = rnnkit(tmp_path, cmd, "--help").stdout
        for flag in flags.split():
            if flag.isupper():  # a positional argument: argparse prints it lower case
                flag = flag.lower()
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), (cmd, flag)


def test_help_explains_every_flag():
    """Every option of every command has a help text of its own (checked on the parser)."""
    from rnnkit.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.choices and "train" in a.choices)
    for name, p in sub.choices.items():
        for action in p._actions:
            if action.dest == "help":
                continue
            assert action.help and len(action.help) > 3, (name, action.dest)


# ---------------------------------------------------------------- bad input


def test_missing_empty_and_too_small_texts(work):
    err = fails(work, "train", "nope.txt", "--out", "new1", *TINY)
    assert "nope.txt" in err and "no such file" in err
    for empty in ("empty.txt", "blank.txt"):
        err = fails(work, "train", empty, "--out", "new1", *TINY)
        assert f"{empty} is empty" in err
    err = fails(work, "train", "few_lines.txt", "--out", "new1", "--batch-size", "8")
    assert "2 training lines" in err and "--batch-size 8" in err and "smaller --batch-size" in err
    flags = ["--mode", "stream", "--batch-size", "8", "--seq-len", "20"]
    err = fails(work, "train", "short.txt", "--out", "new1", *flags)
    assert "too few for one batch" in err and "8 x --seq-len 20 + 1 = 161" in err
    assert "smaller --batch-size or --seq-len" in err
    err = fails(work, "train", ".", "--out", "new1")
    assert "is a folder" in err
    assert not (work / "new1").exists()  # bad input leaves nothing behind


def test_invalid_utf8(work, runs):
    offset = len(sentences(40).encode()) + 3  # "caf" then the latin-1 é
    err = fails(work, "train", "latin1.txt", "--out", "new2", *TINY)
    assert f"latin1.txt: byte {offset} (0xe9) is not valid utf-8" in err
    assert "--encoding" in err and "--errors replace" in err
    err = fails(work, "eval", runs["char", "stream"][0], "latin1.txt")
    assert f"byte {offset}" in err
    err = fails(work, "train", "latin1.txt", "--out", "new2", "--encoding", "no-such-codec")
    assert "unknown encoding 'no-such-codec'" in err
    assert not (work / "new2").exists()
    # both ways out work
    flags = [*TINY, "--steps", "5", "--mode", "stream"]
    out = rnnkit(work, "train", "latin1.txt", "--out", "new2", "--errors", "replace", *flags)
    assert "done:" in out.stdout
    vocab = Vocabulary.from_json(arrays_of(work / "new2")[1]["vocabulary"])
    assert "\ufffd" in vocab.ids
    rnnkit(work, "train", "latin1.txt", "--out", "new3", "--encoding", "latin-1", *flags)
    vocab = Vocabulary.from_json(arrays_of(work / "new3")[1]["vocabulary"])
    assert "\u00e9" in vocab.ids and "\ufffd" not in vocab.ids


def test_prime_the_model_never_saw(work, runs):
    err = fails(work, "sample", runs["char", "lines"][0], "--prime", "kaQ€xQ")
    assert "never saw" in err and "'Q', '€', 'x'" in err
    err = fails(work, "sample", runs["word", "stream"][0], "--prime", "the wombat and gnu")
    assert "never saw" in err and "'wombat', 'gnu'" in err


@pytest.mark.parametrize(
    ("flags", "needles"),
    [
        (["--temperature", "0"], ["--temperature must be > 0", "--greedy"]),
        (["--temperature", "-1.5"], ["--temperature must be > 0", "--greedy"]),
        (["--top-p", "0"], ["--top-p", "(0, 1]"]),
        (["--top-p", "1.01"], ["--top-p", "(0, 1]"]),
        (["--top-p", "-0.5"], ["--top-p", "(0, 1]"]),
        (["--top-k", "0"], ["--top-k"]),
        (["--num", "0"], ["--num"]),
        (["--length", "0"], ["--length"]),
        (["--temperature", "hot"], ["--temperature", "invalid float value", "--help"]),
    ],
)
def test_bad_sampling_options(work, runs, flags, needles):
    err = fails(work, "sample", runs["char", "stream"][0], *flags)
    for needle in needles:
        assert needle in err


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["train", "--out", "x", "--level", "byte"], ["--level", "invalid choice"]),
        (["train", "--out", "x", "--hidden-size", "many"], ["--hidden-size", "invalid int"]),
        (["train", "--out", "x", "--hidden-size", "0"], ["--hidden-size must be >= 1"]),
        (["train", "--out", "x", "--steps", "0"], ["--steps must be >= 1"]),
        (["train", "--out", "x", "--epochs", "0"], ["--epochs must be > 0"]),
        (["train", "--out", "x", "--dropout", "1"], ["--dropout must be in [0, 1)"]),
        (["train", "--out", "x", "--val-frac", "1"], ["--val-frac"]),
        (["train", "--out", "x", "--lr", "0"], ["--lr must be > 0"]),
        (["train", "--out", "x", "--clip", "-1"], ["--clip must be >= 0"]),
        (["train", "--out", "x", "--embedding-dim", "-3"], ["--embedding-dim must be >= 1"]),
        (["train", "--out", "x", "--embedding-dim", "0"], ["--embedding-dim must be >= 1"]),
        (["train", "--out", "x", "--patience", "-1"], ["--patience must be >= 0"]),
        (["train", "--out", "x", "--eval-every", "-5"], ["--eval-every must be >= 0"]),
        (["train", "--out", "x", "--checkpoint-every", "-1"], ["--checkpoint-every must be >="]),
        (["train"], ["--out"]),
        (["sample"], ["dir"]),
        (["nosuchcommand"], ["invalid choice"]),
        (["sample", "no-such-run"], ["no-such-run is not a folder"]),
        (["sample", "."], ["holds no checkpoint.safetensors", "rnnkit train"]),
        (["eval", ".", "text.txt"], ["holds no checkpoint.safetensors"]),
        (["score", "no-such-run", "abc"], ["no-such-run is not a folder"]),
    ],
)
def test_bad_flags_and_folders(work, args, needles):
    err = fails(work, *args)
    for needle in needles:
        assert needle in err
    assert not (work / "x").exists()


def test_bad_eval_and_score_input(work, runs):
    folder = runs["char", "lines"][0]
    err = fails(work, "eval", folder, "nope.txt")
    assert "nope.txt: no such file" in err
    err = fails(work, "eval", folder, "empty.txt")
    assert "empty.txt is empty" in err
    err = fails(work, "eval", folder, "text.txt")  # capitals and spaces: unseen characters
    assert "never saw" in err and "'T'" in err
    err = fails(work, "score", folder, "kaQ")
    assert "never saw" in err and "'Q'" in err
    err = fails(work, "score", folder, "   ")
    assert "empty" in err


def test_unwritable_output_folder(work):
    before = (work / "file.txt").read_bytes()
    err = fails(work, "train", "names.txt", "--out", "file.txt/out", *TINY)
    assert "cannot write to output folder file.txt/out" in err and "--out" in err
    err = fails(work, "train", "names.txt", "--out", "file.txt", *TINY)
    assert "cannot write to output folder file.txt" in err
    assert (work / "file.txt").read_bytes() == before
    err = fails(work, "demo", "--out", "file.txt/demo", "--progress", "none")
    assert "cannot write" in err


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_diverging_run_stops_in_one_line_keeping_a_finite_checkpoint(work, tmp_path, optimizer):
    shutil.copy(work / "names.txt", tmp_path)
    # SGD at 1e30: the readable loop (RNNKIT_COMPILED=0) kept a finite loss of 6e29 nats;
    # Adam at 1e30 too; at 1e38 it diverged in its first step, before a checkpoint
    lr = "1e38" if optimizer == "sgd" else "1e37"
    flags = ["--lr", lr, "--clip", "0", "--optimizer", optimizer, "--checkpoint-every", "1"]
    err = fails(tmp_path, "train", "names.txt", "--out", "nan", *TINY, *flags, rc=1, started=True)
    assert "--lr" in err and "checkpoint was kept" in err
    arrays, meta = arrays_of(tmp_path / "nan")
    assert 1 <= meta["step"] < 40
    assert all(np.isfinite(a).all() for k, a in arrays.items() if k.startswith("model."))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_damaged_checkpoint(work, runs, tmp_path, damage):
    run = tmp_path / "run"
    shutil.copytree(work / runs["char", "lines"][0], run)
    shutil.copy(work / "names.txt", tmp_path)
    ckpt = run / CKPT
    data = ckpt.read_bytes()
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "garbage":
        data = bytes(random.Random(0).randrange(256) for _ in range(4000))
    else:
        data = b""
    ckpt.write_bytes(data)
    for args in (
        ["sample", "run"],
        ["eval", "run", "names.txt"],
        ["score", "run", "kalo"],
        ["train", "names.txt", "--out", "run", "--resume"],
    ):
        err = fails(tmp_path, *args)
        assert f"run/{CKPT}" in err and "truncated or corrupt" in err, err
        assert ckpt.read_bytes() == data  # the file is left as it is
    err = fails(tmp_path, "train", "names.txt", "--out", "run", *TINY)
    assert "already holds" in err
    assert ckpt.read_bytes() == data and sorted(os.listdir(run)) == run_files("lines")


def test_resume_with_other_flags_or_text_is_refused(work, runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(work / runs["char", "stream"][0], run)
    shutil.copy(work / "text.txt", tmp_path)
    before = (run / CKPT).read_bytes()
    err = fails(tmp_path, "train", "text.txt", "--out", "run", "--resume", "--hidden-size", "32")
    assert "--hidden-size 32 (saved: 16)" in err
    err = fails(tmp_path, "train", "text.txt", "--out", "run", "--resume", "--cell", "lstm")
    assert "--cell lstm (saved: gru)" in err
    err = fails(tmp_path, "train", "text.txt", "--out", "run", "--resume", "--level", "word")
    assert "--level word (saved: char)" in err
    # another text, even one byte more or one with the very same characters: refused by its
    # SHA-256, without echoing any of it
    secret = "Price: 5€ (or 6€) PASSWORD\n"
    text = (work / "text.txt").read_text()
    (tmp_path / "more.txt").write_text(text + secret)
    (tmp_path / "shuffled.txt").write_text("".join(sorted(text)))
    for other in ("more.txt", "shuffled.txt"):
        err = fails(tmp_path, "train", other, "--out", "run", "--resume")
        assert f"{other} is not the text the run was trained on" in err and "SHA-256" in err
        assert "PASSWORD" not in err and "€" not in err
    (tmp_path / "less.txt").write_text("the cat sat on the mat\n" * 200)
    err = fails(tmp_path, "train", "less.txt", "--out", "run", "--resume")
    assert "less.txt is not the text the run was trained on" in err
    assert (run / CKPT).read_bytes() == before and sorted(os.listdir(run)) == run_files("stream")
    # a folder without a run
    err = fails(tmp_path, "train", "text.txt", "--out", "nothing-here", "--resume")
    assert "holds no checkpoint.safetensors" in err and "drop --resume" in err


def test_resume_continues_to_a_longer_run_from_any_folder(work, runs, tmp_path):
    """--steps may grow on --resume; without FILE the saved text is read, even from elsewhere."""
    run = tmp_path / "run"
    shutil.copytree(work / runs["word", "lines"][0], run)
    (tmp_path / "elsewhere").mkdir()
    out = rnnkit(tmp_path / "elsewhere", "train", "--out", "../run", "--resume", "--steps", "35")
    assert "resuming at step 30" in out.stdout and "done: 35 steps" in out.stdout
    assert arrays_of(run)[1]["step"] == 35


# ---------------------------------------------------------------- interruptions

# Long enough to be interrupted at several points; dropout and a carried stream state make the
# random state and the data position matter.
KILL_RUNS = {
    "stream": [
        "text.txt",
        "--mode",
        "stream",
        "--cell",
        "lstm",
        "--seq-len",
        "20",
        "--steps",
        "300",
    ],
    "lines": ["names.txt", "--mode", "lines", "--cell", "gru", "--steps", "200"],
}
KILL_FLAGS = [
    "--hidden-size",
    "16",
    "--batch-size",
    "8",
    "--dropout",
    "0.3",
    "--eval-every",
    "25",
    "--seed",
    "11",
    "--progress",
    "line",
]


def kill_args(mode: str, out: str, checkpoint_every: int = 5) -> list[str]:
    return [
        "train",
        *KILL_RUNS[mode],
        *KILL_FLAGS,
        "--checkpoint-every",
        str(checkpoint_every),
        "--out",
        out,
    ]


@pytest.fixture(scope="module")
def references(work) -> dict:
    """Uninterrupted runs: mode -> (arrays, eval numbers)."""
    out = {}
    for mode in KILL_RUNS:
        folder = f"ref-{mode}"
        rnnkit(work, *kill_args(mode, folder))
        evaluated = json_out(rnnkit(work, "eval", folder, KILL_RUNS[mode][0], "--json"))
        out[mode] = (arrays_of(work / folder)[0], evaluated)
    return out


def wait_for_step(proc: subprocess.Popen, step: int) -> None:
    """Read the progress lines (``--progress line``) until one reports ``step`` or later."""
    for line in proc.stderr:
        m = re.match(r"step (\d+)/", line)
        if m and int(m.group(1)) >= step:
            return
    raise AssertionError(f"the run ended before step {step}: exit {proc.wait()}")


def kill_at(work: Path, mode: str, folder: str, point: str, rng: random.Random) -> str:
    """Start the run, SIGKILL it at ``point``; returns a description for failure messages."""
    proc = start(work, *kill_args(mode, folder))
    ckpt = work / folder / CKPT
    try:
        if point == "first-checkpoint":
            deadline = time.monotonic() + 60
            while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.001)
            what = "right after the first checkpoint appeared"
        elif point == "random":
            proc.stdout.readline()  # the first line: imports done, data read
            delay = rng.uniform(0.0, 0.25)
            time.sleep(delay)
            what = f"{delay:.3f} s after it started"
        elif point == "mid-write":  # while a checkpoint is being written over a good one
            wait_for_step(proc, 20)
            deadline = time.monotonic() + 60
            while proc.poll() is None and time.monotonic() < deadline:
                if any(n.endswith(".tmp") for n in os.listdir(ckpt.parent)):
                    break
            what = "while a checkpoint was being written"
        else:
            total = int(KILL_RUNS[mode][-1])
            wait_for_step(proc, total * 2 // 3)
            what = f"after step {total * 2 // 3} (later phase)"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate(timeout=TIMEOUT)
    assert proc.returncode in (-signal.SIGKILL, 0), proc.returncode
    return what


@pytest.mark.parametrize("mode", list(KILL_RUNS))
def test_sigkill_then_resume_gives_the_same_weights(work, references, mode):
    ref_arrays, ref_eval = references[mode]
    rng = random.Random()
    text = KILL_RUNS[mode][0]
    for i, point in enumerate(["first-checkpoint", "random", "mid-write", "later"]):
        folder = f"kill-{mode}-{i}"
        what = kill_at(work, mode, folder, point, rng)
        if (work / folder / CKPT).exists():
            _, meta = arrays_of(work / folder)  # never half written: it loads
            killed_at = meta["step"]
        else:
            killed_at = None
        leftovers = [n for n in os.listdir(work / folder) if n.endswith(".tmp")]
        print(f"{mode}: killed {what}, checkpoint at step {killed_at}, {leftovers}")
        if point == "later":  # kill the resumed run too before letting one finish
            proc = start(work, "train", "--out", folder, "--resume", "--progress", "line")
            wait_for_step(proc, int(KILL_RUNS[mode][-1]) * 5 // 6)
            proc.kill()
            proc.communicate(timeout=TIMEOUT)
        if killed_at is None:  # killed before its first checkpoint
            err = fails(work, "train", text, "--out", folder, "--resume")
            assert "holds no checkpoint.safetensors" in err
            rnnkit(work, *kill_args(mode, folder))
        else:
            result = rnnkit(work, *kill_args(mode, folder), "--resume")
            assert "resuming at step" in result.stdout
        arrays, meta = arrays_of(work / folder)
        assert meta["step"] == int(KILL_RUNS[mode][-1])
        assert sorted(os.listdir(work / folder)) == run_files(mode), "temporary files left"
        try:
            assert_same_arrays(arrays, ref_arrays)
        except AssertionError as e:
            raise AssertionError(f"killed {what} (step {killed_at}): {e}") from None
        assert json_out(rnnkit(work, "eval", folder, text, "--json")) == ref_eval, what


def test_killed_before_the_first_checkpoint(work, references):
    """--resume says there is nothing to resume; a fresh start then works (stale temporary
    files of a killed write are cleared)."""
    proc = start(work, *kill_args("lines", "early"))
    proc.kill()  # before Python has even imported numpy
    proc.communicate(timeout=TIMEOUT)
    assert not (work / "early" / CKPT).exists()
    err = fails(work, "train", "names.txt", "--out", "early", "--resume")
    assert "holds no checkpoint.safetensors" in err and "drop --resume" in err
    (work / "early").mkdir(exist_ok=True)
    for name in (CKPT, "corpus.ids", "corpus.lines"):  # writes cut short
        (work / "early" / f".{name}.half.tmp").write_bytes(b"\0" * 100)
    err = fails(work, "train", "names.txt", "--out", "early", "--resume")
    assert "holds no checkpoint.safetensors" in err
    rnnkit(work, *kill_args("lines", "early"))
    assert sorted(os.listdir(work / "early")) == run_files("lines")
    assert_same_arrays(arrays_of(work / "early")[0], references["lines"][0])


def test_ctrl_c_saves_a_checkpoint_and_exits_130(work, references):
    """SIGINT mid-run: the step in progress finishes, a checkpoint of it is written (although
    --checkpoint-every is never reached), exit 130; --resume then ends where an uninterrupted
    run ends."""
    folder = "ctrl-c"
    proc = start(work, *kill_args("stream", folder, checkpoint_every=100000))
    try:
        header = [proc.stdout.readline() for _ in range(4)]
        assert header[0].startswith("data: ") and header[3].startswith("training: 300 steps")
        wait_for_step(proc, 15)  # a few steps done, none saved yet
        assert not (work / folder / CKPT).exists()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    last = err.splitlines()[-1]
    assert "interrupted" in last and "checkpoint saved" in last and "--resume" in last
    assert "done:" not in out
    _, meta = arrays_of(work / folder)
    assert isinstance(meta["step"], int) and 15 <= meta["step"] < 300
    assert len(meta["history"]["train_loss"]) == meta["step"]  # a whole number of steps
    result = rnnkit(work, "train", "--out", folder, "--resume", "--progress", "none")
    assert f"resuming at step {meta['step']}" in result.stdout
    assert "done: 300 steps" in result.stdout
    assert_same_arrays(arrays_of(work / folder)[0], references["stream"][0])
    # a finished run resumed again does nothing and changes nothing
    before = (work / folder / CKPT).read_bytes()
    rnnkit(work, "train", "--out", folder, "--resume", "--progress", "none")
    assert (work / folder / CKPT).read_bytes() == before


# Under a file-size limit a write may stop short without an error: Python would leave cut
# bytecode caches, and Numba cut compiler caches, behind for every later run to trip on.
FULL_DISK_ENV = {"RNNKIT_COMPILED": "0", "PYTHONDONTWRITEBYTECODE": "1"}


def fill_the_disk_at(limit: int):
    """A full disk for the process: files may grow to ``limit`` bytes, and a write past it
    fails with EFBIG (SIGXFSZ ignored) as ENOSPC would on a full disk."""

    def preexec():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


def test_a_full_disk_keeps_the_previous_checkpoint_and_names_the_folder(work, tmp_path):
    """Checkpoints grow with the run (each step's loss is kept): with files limited to the
    size of the first one, a later save fails. One line names the folder and the space needed,
    exit 1, the last checkpoint that fitted is whole, and the run continues with --resume
    once there is room."""
    shutil.copy(work / "names.txt", tmp_path)
    flags = [*TINY, "--checkpoint-every", "1", "--eval-every", "5"]
    rnnkit(tmp_path, "train", "names.txt", "--out", "probe", *flags, "--steps", "1")
    limit = (tmp_path / "probe" / CKPT).stat().st_size + 200  # room for a few more steps
    env = {**ENV, **FULL_DISK_ENV}
    result = subprocess.run(
        command(["train", "names.txt", "--out", "run", *flags, "--steps", "40"]),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        preexec_fn=fill_the_disk_at(limit),
    )
    assert result.returncode == 1, result.stderr
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert f"cannot write {CKPT} in run:" in err and "it needs" in err and "free" in err, err
    assert "was left as it is" in err and "--resume" in err
    _, meta = arrays_of(tmp_path / "run")  # the previous checkpoint loads
    assert 1 <= meta["step"] < 40
    assert sorted(os.listdir(tmp_path / "run")) == run_files("lines")
    result = rnnkit(tmp_path, "train", "--out", "run", "--resume", "--progress", "none")
    assert f"resuming at step {meta['step']}" in result.stdout and "done: 40 steps" in result.stdout


def test_a_full_disk_while_the_text_is_encoded_leaves_no_run_behind(work, tmp_path):
    """The encoded corpus is written before the first checkpoint: a disk too full for it ends
    in one line saying to run the command again (there is no run to resume yet)."""
    shutil.copy(work / "names.txt", tmp_path)
    result = subprocess.run(
        command(["train", "names.txt", "--out", "run", *TINY, "--steps", "2"]),
        cwd=tmp_path,
        env={**ENV, **FULL_DISK_ENV},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        preexec_fn=fill_the_disk_at(500),  # smaller than corpus.ids
    )
    assert result.returncode == 1, result.stderr
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "cannot write corpus.ids in run:" in err and "free some space and run it again" in err
    assert sorted(os.listdir(tmp_path / "run")) == [LOCK]
    rnnkit(tmp_path, "train", "names.txt", "--out", "run", *TINY, "--steps", "2")
    assert sorted(os.listdir(tmp_path / "run")) == run_files("lines")


def test_a_finished_run_with_an_enormous_loss_reports_an_infinite_perplexity():
    """A run that ends with a finite loss past 709 nats (as the readable loop did at a
    learning rate of 1e30) must still print its last line, not an OverflowError."""
    history = History()
    history.best_val, history.best_step, history.train_loss = 5.7e29, 900, [1e30] * 3
    line = cli_train.done_line(Path("run"), history, validating=True)
    assert "perplexity inf" in line and "step 900" in line
