"""The ``rnnkit`` command: train a language model on any text, sample, evaluate, score.

Every failure a user can cause ends in one line on stderr and a non-zero exit: 2 for bad
input or flags, 1 when training cannot go on, 130 after Ctrl-C (once a checkpoint is saved).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np

from . import apps, corpus, distributed
from .allocator import keep_freed_memory
from .apps.datasets import DataError
from .checkpoint import CheckpointError, load_checkpoint
from .data import StreamBatches
from .models import CELLS, LanguageModel
from .optim import OPTIMIZERS
from .sampling import check_sampling_options, generate
from .text import TextError, Vocabulary, read_text, split_lines
from .train import (
    CHECKPOINT_NAME,
    LinesLMTask,
    StreamLMTask,
    TrainConfig,
    TrainingError,
    lines_loss,
    stream_loss,
    train,
)
from .version import __version__

NAMES_FILE = "dinosaurs.txt"


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


# ---------------------------------------------------------------- shared helpers


def bundled_names() -> Path:
    """The dinosaur names shipped inside the package (see its NOTICE)."""
    return Path(str(resources.files("rnnkit") / "resources" / NAMES_FILE))


def say(text: str) -> None:
    """What the command resolved or found, on stdout."""
    print(text, flush=True)


def print_to(stream):
    """``say`` on another stream."""
    return lambda text: print(text, file=stream, flush=True)


def check_writable(folder: Path) -> None:
    """Create ``folder`` if needed and prove a file can be written there."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise UsageError(
            f"cannot write to output folder {folder}: {e.strerror or e}; choose another --out"
        ) from None


def remove_stale_temporaries(folder: Path) -> None:
    """Temporary files of a write that was killed half-way are useless: remove them."""
    for tmp in folder.glob(f".{CHECKPOINT_NAME}.*.tmp"):
        tmp.unlink(missing_ok=True)


def load_run(folder: str) -> tuple[LanguageModel, Vocabulary, dict, dict]:
    """The model, vocabulary, metadata and arrays of the run saved in ``folder``."""
    path = Path(folder)
    if not path.is_dir():
        raise UsageError(f"{path} is not a folder; give the --out folder of a training run")
    ckpt = path / CHECKPOINT_NAME
    if not ckpt.exists():
        raise UsageError(
            f"{path} holds no {CHECKPOINT_NAME}; train a model there first "
            f"(rnnkit train FILE --out {path})"
        )
    try:
        arrays, meta = load_checkpoint(ckpt)
        vocab = Vocabulary.from_json(meta["vocabulary"])
        model = build_model(meta["model"])
        model.load_state_dict({k[6:]: v for k, v in arrays.items() if k.startswith("model.")})
        if meta["options"]["mode"] not in ("stream", "lines"):
            raise ValueError(f"unknown mode {meta['options']['mode']!r}")
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(
            f"checkpoint {ckpt} does not hold an rnnkit language model ({type(e).__name__}: {e})"
        ) from None
    model.eval()
    return model, vocab, meta, arrays


def describe_run(folder: str, model: LanguageModel, vocab: Vocabulary, meta: dict) -> str:
    """One line: what was loaded from ``folder``."""
    spec, opts = meta["model"], meta["options"]
    return (
        f"model: {folder}: {spec['cell']} x {spec['num_layers']}, hidden {spec['hidden_size']}, "
        f"{model.num_parameters():,} parameters; vocabulary {len(vocab):,} tokens "
        f"({vocab.level} level, {opts['mode']} mode); trained {meta.get('step', '?')} steps"
    )


def build_model(spec: dict) -> LanguageModel:
    """A language model from the ``model`` entry of a checkpoint."""
    return LanguageModel(
        spec["vocab_size"],
        spec["hidden_size"],
        spec["num_layers"],
        spec["cell"],
        spec["embedding_dim"],
        spec["dropout"],
        rng=spec["seed"],
        dtype=np.dtype(spec["dtype"]),
    )


# ---------------------------------------------------------------- train


TRAIN_DEFAULTS = {
    "level": "char",
    "mode": "lines",
    "cell": "lstm",
    "hidden_size": 128,
    "num_layers": 1,
    "embedding_dim": None,
    "dropout": 0.0,
    "seq_len": 50,
    "batch_size": 32,
    "steps": 2000,
    "epochs": None,
    "optimizer": "adam",
    "lr": 0.005,
    "clip": 5.0,
    "clip_mode": "norm",
    "val_frac": 0.1,
    "eval_every": 200,
    "checkpoint_every": 100,
    "seed": 0,
    "min_count": 1,
    "encoding": "utf-8",
    "errors": "strict",
    "progress": "auto",
    "patience": 0,
}
# Flags that decide the model or the data a run sees: --resume refuses to change them.
FIXED_FLAGS = (
    "level",
    "mode",
    "cell",
    "hidden_size",
    "num_layers",
    "embedding_dim",
    "dropout",
    "min_count",
    "seed",
    "val_frac",
    "batch_size",
    "seq_len",
    "optimizer",
)


def resolve(args: argparse.Namespace) -> dict:
    """Flags given, defaults for the rest."""
    return {
        k: (getattr(args, k) if getattr(args, k) is not None else v)
        for k, v in TRAIN_DEFAULTS.items()
    }


def validate_train(opts: dict) -> None:
    """Numbers that cannot make a run."""
    positive = ("hidden_size", "num_layers", "seq_len", "batch_size", "min_count")
    for key in positive:
        if opts[key] < 1:
            raise UsageError(f"--{key.replace('_', '-')} must be >= 1, got {opts[key]}")
    if opts["steps"] < 1:
        raise UsageError(f"--steps must be >= 1, got {opts['steps']}")
    if opts["epochs"] is not None and opts["epochs"] <= 0:
        raise UsageError(f"--epochs must be > 0, got {opts['epochs']}")
    if not 0 <= opts["dropout"] < 1:
        raise UsageError(f"--dropout must be in [0, 1), got {opts['dropout']}")
    if not 0 <= opts["val_frac"] < 1:
        raise UsageError(f"--val-frac must be in [0, 1), got {opts['val_frac']}")
    if not opts["lr"] > 0:
        raise UsageError(f"--lr must be > 0, got {opts['lr']}")
    if opts["clip"] < 0:
        raise UsageError(f"--clip must be >= 0 (0 turns clipping off), got {opts['clip']}")
    if opts["embedding_dim"] is not None and opts["embedding_dim"] < 1:
        raise UsageError(f"--embedding-dim must be >= 1, got {opts['embedding_dim']}")
    for key in ("eval_every", "checkpoint_every", "patience"):
        if opts[key] < 0:
            raise UsageError(
                f"--{key.replace('_', '-')} must be >= 0 (0 turns it off), got {opts[key]}"
            )


def vocabulary_change(built: Vocabulary, saved: Vocabulary) -> str:
    """What differs between two vocabularies, in a few words."""
    if built.level != saved.level:
        return f"{built.level} level instead of {saved.level}"
    new = [t for t in built.tokens if t not in saved.ids]
    gone = [t for t in saved.tokens if t not in built.ids]
    parts = []
    for what, toks in (("new", new), ("missing", gone)):
        if toks:
            more = f" and {len(toks) - 10} more" if len(toks) > 10 else ""
            parts.append(f"{what}: {', '.join(repr(t) for t in toks[:10])}{more}")
    return "; ".join(parts)


def held_out(total: int, opts: dict) -> int:
    """How many of ``total`` lines (lines mode) or tokens (stream mode) are held out."""
    frac = opts["val_frac"]
    if opts["mode"] == "lines":
        n_val = int(round(total * frac))
        return max(1, n_val) if frac > 0 and total > 1 else n_val
    return int(total * frac)


def check_data(tokens: int, lines: int, opts: dict) -> None:
    """Enough text for one batch (``tokens`` of a stream, or ``lines``)."""
    if opts["mode"] == "lines":
        if not lines:
            raise UsageError("the text has no non-empty line to train on")
        n_train = lines - held_out(lines, opts)
        if n_train < opts["batch_size"]:
            raise UsageError(
                f"the text has {n_train} training lines, fewer than one batch of "
                f"--batch-size {opts['batch_size']}; use a smaller --batch-size or a longer text"
            )
        return
    n_train, need = tokens - held_out(tokens, opts), opts["batch_size"] * opts["seq_len"] + 1
    if n_train < need:
        raise UsageError(
            f"the text has {n_train} training tokens, too few for one batch: "
            f"--batch-size {opts['batch_size']} x --seq-len {opts['seq_len']} + 1 = {need}; "
            f"use a smaller --batch-size or --seq-len, or a longer text"
        )


def prepare_data(encoded: corpus.Corpus, opts: dict):
    """Split the encoded corpus into training and validation data, both read from its map.

    Returns ``(train, val, sizes)`` where train/val are id streams (stream mode) or
    :class:`rnnkit.corpus.Lines` (lines mode).
    """
    if opts["mode"] == "lines":
        n_lines = int(encoded.info["lines"])
        order = np.random.default_rng(opts["seed"]).permutation(n_lines)
        n_val = held_out(n_lines, opts)
        train, val = encoded.lines(order[n_val:]), encoded.lines(order[:n_val])
        # <eos> included; counted from the smaller share, without a copy per training line
        train_tokens = int(encoded.info["tokens"]) - int(val.lengths().sum()) + len(train)
        sizes = {"train_lines": len(train), "val_lines": len(val), "train_tokens": train_tokens}
    else:
        ids = encoded.ids
        n_val = held_out(len(ids), opts)
        train, val = ids[: len(ids) - n_val], ids[len(ids) - n_val :]
        sizes = {"train_tokens": len(train), "val_tokens": len(val)}
    return train, val, sizes


def cmd_train(args: argparse.Namespace) -> int:
    try:  # one process, or one of those mpiexec started
        comm = distributed.for_command()
    except distributed.MPIUnavailable as e:
        raise UsageError(f"started by mpiexec as one of several processes, but {e}") from None
    with comm.job(shared=(TrainingError, CheckpointError, KeyboardInterrupt)):
        # rank 0 checks the flags, the run and the text, and encodes the corpus; then every
        # process maps it and trains
        opts, meta, source, vocab = comm.from_root(lambda: prepare_train(args, comm))
        return run_train(args, comm, opts, meta, source, vocab)


def prepare_train(args: argparse.Namespace, comm: distributed.Communicator):
    """Everything checked and prepared before training: ``(options, the saved run's metadata
    or None, the text's path, its vocabulary)``; the corpus is encoded in ``--out``."""
    opts = resolve(args)
    validate_train(opts)
    out = Path(args.out)
    meta = None
    if args.resume:
        if not (out / CHECKPOINT_NAME).exists():
            raise UsageError(
                f"--resume: {out} holds no {CHECKPOINT_NAME} to continue; "
                f"drop --resume to start a new run there"
            )
        _, meta = load_checkpoint(out / CHECKPOINT_NAME)
        saved = meta.get("options")
        if not (
            isinstance(saved, dict)
            and isinstance(meta.get("vocabulary"), dict)
            and isinstance(meta.get("step"), int)
        ):
            raise CheckpointError(
                f"checkpoint {out / CHECKPOINT_NAME} was not written by rnnkit train, "
                f"so it cannot be resumed"
            )
        clash = [
            f"--{k.replace('_', '-')} {getattr(args, k)} (saved: {saved.get(k)})"
            for k in FIXED_FLAGS
            if getattr(args, k) is not None and getattr(args, k) != saved.get(k)
        ]
        if clash:
            raise UsageError(
                f"--resume: the flags differ from the run saved in {out}: "
                f"{', '.join(clash)}; drop them or train into a new --out"
            )
        comm.own_state({}, meta)  # a run of another number of processes stops here
        given = {k: getattr(args, k) for k in TRAIN_DEFAULTS if getattr(args, k) is not None}
        opts = {**TRAIN_DEFAULTS, **saved, **given}
        validate_train(opts)
    elif (out / CHECKPOINT_NAME).exists():
        raise UsageError(
            f"{out} already holds a training run; continue it with --resume or "
            f"choose another --out (nothing was changed)"
        )
    if args.file:
        source = Path(args.file)
    else:
        source = Path(meta["source"]) if meta else bundled_names()

    if opts["batch_size"] < comm.size:
        raise UsageError(
            f"--batch-size {opts['batch_size']} is smaller than the {comm.size} processes: each "
            f"needs one sequence of every batch at least"
        )
    encoding = {"encoding": opts["encoding"], "errors": opts["errors"]}
    saved_text = (meta or {}).get("corpus")
    if saved_text:  # the text a run started on is the text it resumes on, byte for byte
        sha256 = corpus.file_digest(source)
        if sha256 != saved_text["sha256"]:
            raise UsageError(
                f"--resume: {source} changed since the run in {out} started (its SHA-256 "
                f"differs); resume with the text it started on, or train into a new --out"
            )
        vocab = Vocabulary.from_json(meta["vocabulary"])
    else:
        scanned = corpus.scan(source, opts["level"], opts["mode"], opts["min_count"], **encoding)
        if scanned.blank:
            raise UsageError(f"{source} is empty: there is nothing to train on")
        vocab, sha256 = scanned.vocabulary, scanned.sha256
        if meta:  # a run saved before texts were hashed: the vocabulary must agree
            saved_vocab = Vocabulary.from_json(meta["vocabulary"])
            if vocab != saved_vocab:  # before encoding: unseen characters cannot be encoded
                raise UsageError(
                    f"--resume: the vocabulary of {source} ({len(vocab)} tokens) differs "
                    f"from the run saved in {out} ({len(saved_vocab)} tokens; "
                    f"{vocabulary_change(vocab, saved_vocab)}); resume with the same text "
                    f"and --level/--min-count"
                )
        check_data(scanned.tokens, scanned.lines, opts)
    check_writable(out)  # only now: bad input must not leave an empty folder behind
    remove_stale_temporaries(out)
    corpus.encode(source, vocab, opts["mode"], out, sha256=sha256, **encoding)
    return opts, meta, source, vocab


def run_train(args, comm, opts: dict, meta: dict | None, source: Path, vocab: Vocabulary) -> int:
    """Train, on every process, what :func:`prepare_train` prepared."""
    out = Path(args.out)
    encoded = corpus.open_corpus(out)
    train_data, val_data, sizes = prepare_data(encoded, opts)
    model_spec = {
        "vocab_size": len(vocab),
        "hidden_size": opts["hidden_size"],
        "num_layers": opts["num_layers"],
        "cell": opts["cell"],
        "embedding_dim": opts["embedding_dim"],
        "dropout": opts["dropout"],
        "seed": opts["seed"],
        "dtype": "float32",
    }
    model = build_model(model_spec)
    task_rng = np.random.default_rng(opts["seed"] + 1)
    if opts["mode"] == "stream":
        task = StreamLMTask(train_data, val_data, opts["batch_size"], opts["seq_len"])
        per_epoch = task.batches.chunks_per_epoch
    else:
        task = LinesLMTask(train_data, val_data, opts["batch_size"], vocab.eos_id, task_rng)
        per_epoch = task.batches.batches_per_epoch
    steps = opts["steps"]
    if opts["epochs"] is not None:
        steps = max(1, int(round(opts["epochs"] * per_epoch)))
    config = TrainConfig(
        steps=steps,
        optimizer=opts["optimizer"],
        lr=opts["lr"],
        clip=opts["clip"] or None,
        clip_mode=opts["clip_mode"],
        eval_every=opts["eval_every"],
        patience=opts["patience"],
        checkpoint_every=opts["checkpoint_every"],
        seed=opts["seed"],
        progress=opts["progress"],
    )

    sizes_text = ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in sizes.items())
    say(f"data: {source} ({opts['level']} level, {opts['mode']} mode): {sizes_text}")
    if comm.size > 1:
        say(f"processes: {comm.size}, each with a share of every batch of {opts['batch_size']}")
    say(f"vocabulary: {len(vocab)} tokens")
    say(
        f"model: {opts['cell']} x {opts['num_layers']}, hidden {opts['hidden_size']}, "
        f"{model.num_parameters():,} parameters"
    )
    say(
        f"training: {steps} steps ({steps / max(per_epoch, 1):.2f} epochs), "
        f"{opts['optimizer']} lr {opts['lr']}, batch {opts['batch_size']}"
        + (f", seq-len {opts['seq_len']}" if opts["mode"] == "stream" else "")
        + (f", resuming at step {meta['step']}" if meta else "")
    )
    extra = {
        "vocabulary": vocab.to_json(),
        "model": model_spec,
        "options": opts,
        "source": str(source.resolve()),  # so --resume works from any folder
        "corpus": {"sha256": encoded.info["sha256"], "bytes": encoded.info["bytes"]},
    }
    try:
        # A diverging run overflows on its way to a non-finite loss: that is reported below as
        # one line, not as a screen of RuntimeWarnings.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            history = train(
                model, task, config, out, resume=bool(meta), extra_metadata=extra, comm=comm
            )
    except KeyboardInterrupt:
        print(f"interrupted: checkpoint saved in {out}; continue with --resume", file=sys.stderr)
        return 130
    steps_done = len(history.train_loss)
    val = history.best_val if config.patience else history.val_loss[-1][1]
    which = "held-out" if task_has_validation(task) else "training"
    stopped = " (stopped early; the best weights were kept)" if history.stopped_early else ""
    say(
        f"done: {steps_done} steps{stopped}, {which} loss {val:.4f} nats "
        f"per token (perplexity {math.exp(val):.2f}); saved in {out}"
    )
    return 0


# ---------------------------------------------------------------- sample / eval / score


def start_id(vocab: Vocabulary, mode: str) -> int:
    """What the model reads before a new sequence: ``<eos>``, or a line break in a char stream."""
    if mode == "stream" and vocab.level == "char" and "\n" in vocab.ids:
        return vocab.ids["\n"]
    return vocab.eos_id


def cmd_sample(args: argparse.Namespace) -> int:
    if args.greedy:
        sampling = {"greedy": True}
    else:
        try:
            check_sampling_options(args.temperature, args.top_k, args.top_p)
        except ValueError as e:
            raise UsageError(
                str(e)
                .replace("top_k", "--top-k")
                .replace("top_p", "--top-p")
                .replace("temperature", "--temperature")
            ) from None
        sampling = {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p}
    if args.num < 1 or args.length < 1:
        raise UsageError("--num and --length must be >= 1")
    model, vocab, meta, _ = load_run(args.dir)
    mode = meta["options"]["mode"]
    prime = []
    if args.prime:
        unknown = vocab.unknown(args.prime)
        if unknown:
            kind = "characters" if vocab.level == "char" else "words"
            raise UsageError(
                f"--prime has {kind} the model never saw: "
                f"{', '.join(repr(u) for u in unknown)}; use only {kind} of the training text"
            )
        prime = vocab.encode(args.prime)
    say(describe_run(args.dir, model, vocab, meta))
    first = [start_id(vocab, mode)] + prime
    rng = np.random.default_rng(args.seed)
    stop = vocab.eos_id if mode == "lines" else None
    samples = generate(model, args.length, rng, prime=first, num=args.num, stop_id=stop, **sampling)
    sep = " " if vocab.level == "word" and prime else ""
    for ids in samples:
        say((args.prime or "") + sep + vocab.decode(ids))
    return 0


def evaluate_text(model, vocab: Vocabulary, mode: str, encoded: corpus.Corpus) -> tuple[float, int]:
    """``(total nats, tokens)`` of an encoded text under the model."""
    if mode == "lines":
        loss, tokens = lines_loss(model, encoded.lines(), vocab.eos_id)
    else:
        loss, tokens = stream_loss(model, StreamBatches(encoded.ids, 1, 256))
    return loss * tokens, tokens


def check_known(vocab: Vocabulary, text: str, what: str) -> None:
    """Characters (char level) the model never saw cannot be scored: list them."""
    unknown = vocab.unknown(text)
    if unknown and vocab.level == "char":
        shown = ", ".join(repr(u) for u in unknown[:20])
        raise UsageError(f"{what} has characters the model never saw: {shown}")


def cmd_eval(args: argparse.Namespace) -> int:
    model, vocab, meta, _ = load_run(args.dir)
    mode = meta["options"]["mode"]
    with tempfile.TemporaryDirectory(prefix="rnnkit-eval-") as folder:
        # encoded on disk and read in windows: a text of any size fits; lines mode reads
        # stripped lines, whose breaks and edge spaces are never tokens
        prefix = [start_id(vocab, mode)] if mode == "stream" else []
        encoded = corpus.encode(
            args.file, vocab, mode, folder, "eval", args.encoding, args.errors, prefix=prefix
        )
        if encoded.info["blank"]:
            raise UsageError(f"{args.file} is empty: there is nothing to evaluate")
        note = print_to(sys.stderr if args.json else sys.stdout)
        note(describe_run(args.dir, model, vocab, meta))
        note(f"data: {args.file}: {encoded.info['characters']:,} characters")
        nats, tokens = evaluate_text(model, vocab, mode, encoded)
        chars = encoded.info["characters"]
        del encoded  # its map, before the folder goes
    result = {
        "loss": nats / tokens,
        "perplexity": math.exp(nats / tokens),
        "bits_per_char": nats / chars / math.log(2),
        "tokens": tokens,
    }
    if args.json:
        say(json.dumps(result))
    else:
        say(
            f"{args.file}: {tokens:,} tokens, loss {result['loss']:.4f} nats/token, perplexity "
            f"{result['perplexity']:.3f}, {result['bits_per_char']:.4f} bits/char"
        )
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    model, vocab, meta, _ = load_run(args.dir)
    if not args.text.strip():
        raise UsageError("TEXT is empty: give the sentence or name to score")
    check_known(vocab, args.text, "TEXT")
    note = print_to(sys.stderr if args.json else sys.stdout)
    note(describe_run(args.dir, model, vocab, meta))
    ids = vocab.encode(args.text) + ([vocab.eos_id] if meta["options"]["mode"] == "lines" else [])
    logp = model.sequence_log_prob(np.asarray(ids), start_id(vocab, meta["options"]["mode"]))
    result = {
        "log_prob": float(logp.sum()),
        "tokens": len(ids),
        "log_prob_per_token": float(logp.mean()),
        "per_token": [[vocab.tokens[i], float(p)] for i, p in zip(ids, logp)],
    }
    if args.json:
        say(json.dumps(result))
    else:
        say(
            f"log P = {result['log_prob']:.4f} nats over {len(ids)} tokens "
            f"({result['log_prob_per_token']:.4f} per token)"
        )
        for tok, p in result["per_token"]:
            say(f"  {tok!r:>12} {p:9.4f}")
    return 0


# ---------------------------------------------------------------- demo


# Chosen on the held-out names: past about 300 steps (8 epochs) the model memorises.
DEMO = {
    "level": "char",
    "mode": "lines",
    "cell": "lstm",
    "hidden_size": 128,
    "dropout": 0.2,
    "steps": 300,
    "batch_size": 32,
    "lr": 0.005,
    "seed": 0,
    "eval_every": 100,
    "checkpoint_every": 100,
}


def cmd_demo(args: argparse.Namespace) -> int:
    folder = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="rnnkit-demo-"))
    if (folder / CHECKPOINT_NAME).exists():
        raise UsageError(f"{folder} already holds a training run; choose another --out")
    check_writable(folder)  # before the first line is printed: a bad --out is one error line
    argv = ["train", "--out", str(folder), "--progress", args.progress]
    for key, value in DEMO.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    say(f"demo: a character-level LSTM learns {NAMES_FILE} (bundled) and invents new names")
    code = main(argv)
    if code != 0:
        return code
    model, vocab, meta, _ = load_run(str(folder))
    known = set(split_lines(read_text(bundled_names())))
    rng = np.random.default_rng(1)
    novel: list[str] = []
    for _ in range(20):  # names the list already holds are not novel: draw until ten are
        for ids in generate(
            model, 40, rng, prime=[vocab.eos_id], num=20, stop_id=vocab.eos_id, temperature=0.8
        ):
            name = vocab.decode(ids).strip()
            if name and name not in known and name not in novel:
                novel.append(name)
        if len(novel) >= 10:
            break
    say(f"ten novel names, none of them in the list (temperature 0.8; run kept in {folder}):")
    for name in novel[:10]:
        say(name)
    return 0


# ---------------------------------------------------------------- applications

DATA_APPS = ("sentiment", "dna", "ner", "music")  # the apps whose data a package manager brings


def task_has_validation(task) -> bool:
    """Whether the task scores held-out data (else it scores its training data)."""
    return bool(getattr(task, "val", None) or getattr(task, "val_lines", None))


def cmd_data(args: argparse.Namespace) -> int:
    module = apps.load(args.name)
    cache = apps.data_cache()
    say(f"fetching the {args.name} data into {cache}")
    path = module.get_data(cache)
    say(f"ready: {path}")
    return 0


# ---------------------------------------------------------------- argument parsing


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr like every other bad input."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of every command."""
    p = Parser(
        prog="rnnkit",
        description=(
            "Recurrent language models from the equations: train on any text, sample novel "
            "sequences, evaluate and score."
        ),
    )
    p.add_argument("--version", action="version", version=f"rnnkit {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser(
        "train",
        help="train a language model on a text file",
        description="Train a language model; the run is saved in --out and can "
        "be continued with --resume.",
    )
    t.add_argument(
        "file", nargs="?", help="UTF-8 text to learn (default: the bundled dinosaur names)"
    )
    t.add_argument("--out", required=True, help="folder for the checkpoint")
    d = TRAIN_DEFAULTS
    t.add_argument(
        "--level",
        choices=["char", "word"],
        help=f"tokens are characters or words (default {d['level']})",
    )
    t.add_argument(
        "--mode",
        choices=["stream", "lines"],
        help=(
            "stream: one long text in windows with state carried between them; lines: each line "
            f"is one sequence ending in <eos> (default {d['mode']})"
        ),
    )
    t.add_argument("--cell", choices=list(CELLS), help=f"recurrent cell (default {d['cell']})")
    t.add_argument("--hidden-size", type=int, help=f"hidden units H (default {d['hidden_size']})")
    t.add_argument("--num-layers", type=int, help=f"stacked layers (default {d['num_layers']})")
    t.add_argument("--embedding-dim", type=int, help="embedding size (default: hidden size)")
    t.add_argument(
        "--dropout",
        type=float,
        help=f"dropout between layers and before the output (default {d['dropout']})",
    )
    t.add_argument(
        "--seq-len",
        type=int,
        help=(
            f"time steps per window in stream mode, the span of truncated BPTT (default "
            f"{d['seq_len']})"
        ),
    )
    t.add_argument("--batch-size", type=int, help=f"sequences per step (default {d['batch_size']})")
    t.add_argument("--steps", type=int, help=f"optimiser steps (default {d['steps']})")
    t.add_argument("--epochs", type=float, help="train this many passes instead of --steps")
    t.add_argument("--optimizer", choices=list(OPTIMIZERS), help=f"(default {d['optimizer']})")
    t.add_argument("--lr", type=float, help=f"learning rate (default {d['lr']})")
    t.add_argument(
        "--clip",
        type=float,
        help=(f"gradient clipping bound; 0 turns it off (default {d['clip']})"),
    )
    t.add_argument(
        "--clip-mode",
        choices=["norm", "value"],
        help=(
            "norm: scale all gradients to global norm <= --clip; value: clip each entry to "
            "[-clip, clip] as in the course (default norm)"
        ),
    )
    t.add_argument(
        "--val-frac",
        type=float,
        help=(f"fraction held out for validation (default {d['val_frac']})"),
    )
    t.add_argument(
        "--eval-every",
        type=int,
        help=(f"validate every N steps, and at the end (default {d['eval_every']})"),
    )
    t.add_argument(
        "--patience",
        type=int,
        help=(
            "stop after N validations without improvement and keep the best weights (default: "
            "never)"
        ),
    )
    t.add_argument(
        "--checkpoint-every",
        type=int,
        help=(f"save every N steps, and at the end (default {d['checkpoint_every']})"),
    )
    t.add_argument(
        "--seed", type=int, help=f"seed for weights, data order and dropout (default {d['seed']})"
    )
    t.add_argument(
        "--min-count",
        type=int,
        help=("word level: words seen fewer times become <unk> (default 1)"),
    )
    t.add_argument("--encoding", help="text encoding of FILE (default utf-8)")
    t.add_argument(
        "--errors",
        choices=["strict", "replace"],
        help="undecodable bytes: stop with an error, or replace them (default strict)",
    )
    t.add_argument(
        "--progress",
        choices=["auto", "bar", "line", "none"],
        help="progress display (default auto: a bar on a terminal)",
    )
    t.add_argument(
        "--resume",
        action="store_true",
        help=(
            "continue the run saved in --out up to its configured length, restoring optimiser, "
            "step, data position and random state"
        ),
    )
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("sample", help="sample novel sequences from a trained model")
    s.add_argument("dir", help="the --out folder of a training run")
    s.add_argument("--num", type=int, default=5, help="how many samples (default 5)")
    s.add_argument(
        "--length",
        type=int,
        default=200,
        help=("most tokens per sample; lines mode also stops at <eos> (default 200)"),
    )
    s.add_argument(
        "--temperature",
        type=float,
        default=1.0,
        help=("divide the logits by this: < 1 is more conservative, > 1 more random (default 1)"),
    )
    s.add_argument("--top-k", type=int, help="sample among the k most likely tokens only")
    s.add_argument(
        "--top-p",
        type=float,
        help=("sample among the most likely tokens whose probability adds up to p (nucleus)"),
    )
    s.add_argument("--greedy", action="store_true", help="always take the most likely token")
    s.add_argument("--prime", help="text the samples start from")
    s.add_argument(
        "--seed", type=int, default=0, help="seed; the same seed gives the same samples (default 0)"
    )
    s.set_defaults(func=cmd_sample)

    e = sub.add_parser("eval", help="loss, perplexity and bits per character on a text")
    e.add_argument("dir", help="the --out folder of a training run")
    e.add_argument("file", help="text to evaluate, read like the training text")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--encoding", default="utf-8", help="text encoding of FILE (default utf-8)")
    e.add_argument(
        "--errors",
        choices=["strict", "replace"],
        default="strict",
        help="undecodable bytes: error (default) or replace",
    )
    e.set_defaults(func=cmd_eval)

    c = sub.add_parser("score", help="log P(TEXT) under the model, in total and per token")
    c.add_argument("dir", help="the --out folder of a training run")
    c.add_argument("text", help="the sentence or name to score")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.set_defaults(func=cmd_score)

    m = sub.add_parser("demo", help="train on the bundled dinosaur names and print new ones")
    m.add_argument("--out", help="keep the run in this folder (default: a temporary folder)")
    m.add_argument(
        "--progress",
        choices=["auto", "bar", "line", "none"],
        default="auto",
        help="progress display (default auto)",
    )
    m.set_defaults(func=cmd_demo)

    a = sub.add_parser(
        "app",
        help="run one of the notes' applications (see rnnkit app --help)",
        description="The applications the notes open with: "
        + "; ".join(f"{name}: {text}" for name, text in apps.APPS.items())
        + ". Each takes its own flags: rnnkit app NAME --help.",
    )
    a.add_argument("name", choices=list(apps.APPS), help="which application")
    a.add_argument("args", nargs=argparse.REMAINDER, help="the application's own flags")

    g = sub.add_parser(
        "gradflow",
        add_help=False,
        help="vanishing gradients: |dL/da<t>| over 100 steps for RNN, GRU, LSTM",
    )
    g.add_argument("args", nargs=argparse.REMAINDER, help="see rnnkit gradflow --help")

    d = sub.add_parser("data", help="fetch an application's data set through a package manager")
    d.add_argument("action", choices=["get"], help="get: download and unpack into the cache")
    d.add_argument("name", choices=[n for n in apps.APPS if n in DATA_APPS], help="which data set")
    d.set_defaults(func=cmd_data)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    keep_freed_memory()  # this process is ours: training loops reuse their memory
    # Applications parse their own flags (--help included): hand them everything after the name.
    if argv[:1] == ["gradflow"]:
        return guarded("gradflow", lambda: apps.load("gradflow").main(argv[1:]))
    if argv[:1] == ["app"] and len(argv) > 1 and argv[1] in apps.APPS:
        return guarded(f"app {argv[1]}", lambda: apps.load(argv[1]).main(argv[2:]))
    args = build_parser().parse_args(argv)
    return guarded(args.command, lambda: args.func(args))


def guarded(command: str, work) -> int:
    """Run ``work()``, turning every failure a user can cause into one line and an exit status."""
    try:
        return work()
    except (UsageError, TextError, DataError) as e:
        print(f"rnnkit {command}: error: {e}", file=sys.stderr)
        return 2
    except CheckpointError as e:
        print(f"rnnkit {command}: error: {e}; the file was left as it is", file=sys.stderr)
        return 2
    except TrainingError as e:
        print(f"rnnkit {command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"rnnkit {command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:  # a full disk, a folder that went away: the last checkpoint stays
        where = f" {e.filename}" if e.filename else ""
        print(
            f"rnnkit {command}: error: cannot read or write{where}: {e.strerror or e}; "
            f"files already saved were left as they are",
            file=sys.stderr,
        )
        return 1


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
