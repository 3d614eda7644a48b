"""``rnnkit train`` and ``rnnkit demo``: a language model learns a text, in a run folder that
one process at a time writes.

The order of the work is what keeps a user's files safe: every option and the text are checked
before the folder is created; the folder is locked before anything in it is read or written;
a resumed run's checkpoint, its options and its text (by SHA-256) are all checked before
training continues; a failure leaves every saved file as it was. The text is read in one
streaming pass before the folder is created (vocabulary, SHA-256, sizes), then encoded once as
token ids beside the checkpoint (:mod:`rnnkit.corpus`), which training reads through a map.

Under ``mpiexec -n K`` (:mod:`rnnkit.distributed`), rank 0 alone does all of that and holds
the folder's lock; then every process trains on its share of each batch.
"""

from __future__ import annotations

import argparse
import tempfile
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..checkpoint import CheckpointError, load_checkpoint
from ..corpus import encode, file_digest, file_names, open_corpus, scan
from ..distributed import Communicator, MPIUnavailable, WorldSizeError, for_command
from ..files import NoRoom, lock_folder, remove_stale_temporaries
from ..init import ParameterBudgetExceeded, parameter_budget
from ..losses import perplexity
from ..memory import NotEnoughMemory, available_bytes, check_fits, format_bytes
from ..models import LanguageModel
from ..module import module_from_checkpoint
from ..record import language_model_record
from ..sampling import generate
from ..text import Vocabulary, split_lines
from ..train import (
    CHECKPOINT_NAME,
    MAX_STEPS,
    ConfigError,
    History,
    LinesLMTask,
    StreamLMTask,
    TrainConfig,
    TrainingError,
    train,
)
from .core import UsageError, say
from .options import (
    FLAGS,
    TRAIN_FLAGS,
    check_options,
    given_flags,
    resolve,
    saved_problem,
    train_config,
)
from .runs import NAMES_FILE, bundled_names, start_token

# The demo is a short run with the defaults: past about 300 steps (8 epochs) the held-out loss
# of the bundled names stops falling, and the run keeps its best weights anyway.
DEMO = {"steps": 300}


def add_commands(sub) -> None:
    """``train`` and ``demo``."""
    t = sub.add_parser(
        "train",
        help="train a language model on a text file",
        description="Train a language model; the run is saved in --out (one process writes "
        "there at a time) and can be continued with --resume. The weights of the best "
        "validation are the ones the run keeps, the last ones are kept for --resume.",
    )
    t.add_argument(
        "file", nargs="?", help="UTF-8 text to learn (default: the bundled dinosaur names)"
    )
    t.add_argument("--out", required=True, help="folder for the checkpoint")
    for flag in TRAIN_FLAGS:
        flag.add_to(t)
    t.add_argument(
        "--resume",
        action="store_true",
        help=(
            "continue the run saved in --out up to its configured length (or a new --steps "
            "or --epochs), from its last weights, optimiser, step, data position and random "
            "state; FILE, if given, must be the very text it was trained on"
        ),
    )
    t.set_defaults(func=cmd_train)

    m = sub.add_parser("demo", help="train on the bundled dinosaur names and print new ones")
    m.add_argument("--out", help="keep the run in this folder (default: none is kept)")
    m.add_argument(
        "--progress",
        choices=FLAGS["progress"].choices,
        default="auto",
        help="progress display (default auto)",
    )
    m.set_defaults(func=cmd_demo)


def cmd_train(args: argparse.Namespace) -> int:
    out = Path(args.out)
    comm = communicator()
    with comm.job(shared=(TrainingError, CheckpointError, KeyboardInterrupt)):
        model, _, history, validating = train_language_model(
            out, args.file, given_flags(args), args.resume, comm
        )
        say(done_line(out, history, validating))
    return 0


def communicator() -> Communicator:
    """The processes of this command: one, or those an MPI launcher (mpiexec) started."""
    try:
        return for_command()
    except MPIUnavailable as e:
        raise UsageError(f"started by mpiexec as one of several processes, but {e}") from None


def cmd_demo(args: argparse.Namespace) -> int:
    keep = Path(args.out) if args.out else None
    if keep is not None and (keep / CHECKPOINT_NAME).exists():
        raise UsageError(f"{keep} already holds a training run; choose another --out")
    with (
        nullcontext(keep) if keep else tempfile.TemporaryDirectory(prefix="rnnkit-demo-") as folder
    ):
        folder = Path(folder)
        check_writable(folder)  # before the first line is printed: a bad --out is one error line
        say(f"demo: a character-level LSTM learns {NAMES_FILE} (bundled) and invents new names")
        given = {**DEMO, "progress": args.progress}
        model, vocab, history, _ = train_language_model(folder, None, given, resume=False)
        say(done_line(folder if keep else None, history, True))
    known = set(split_lines(bundled_names().read_text(encoding="utf-8")))
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
    kept = f"; run kept in {keep}" if keep else ""
    say(f"ten novel names, none of them in the list (temperature 0.8{kept}):")
    for name in novel[:10]:
        say(name)
    return 0


def done_line(out: Path | None, history: History, validating: bool) -> str:
    """The last line of a run: its length and the loss of the weights it keeps."""
    steps = len(history.train_loss)
    stopped = " (stopped early)" if history.stopped_early else ""
    saved = f"; saved in {out}" if out is not None else ""
    if not validating:
        recent = history.train_loss[-50:]
        return (
            f"done: {steps} steps{stopped}, no validation: the last weights are kept, mean "
            f"training loss of the last {len(recent)} steps {np.mean(recent):.4f}{saved}"
        )
    loss = history.best_val
    return (
        f"done: {steps} steps{stopped}, best held-out loss {loss:.4f} nats per token "
        f"(perplexity {perplexity(loss):.2f}) at step {history.best_step}, the weights kept{saved}"
    )


# ---------------------------------------------------------------- the run


@dataclass
class Corpus:
    """A text checked for training: what a streaming pass over it found, and how it splits
    into training and validation data (read from its encoding in the run folder by
    :func:`load_data`)."""

    source: Path
    sha256: str
    vocab: Vocabulary
    n_train: int  # training lines (lines mode) or tokens (stream mode)
    n_val: int  # validation lines or tokens; 0: no validation
    longest: int  # tokens in the longest sequence a step reads

    def record(self) -> dict:
        """What a checkpoint keeps about its text, so --resume can refuse another."""
        return {"path": str(self.source.resolve()), "sha256": self.sha256}


@dataclass
class Plan:
    """A run checked and ready to train: what every process needs to train it."""

    opts: dict
    config: TrainConfig
    corpus: Corpus
    resume: bool
    model: LanguageModel | None = None  # built on rank 0 while checking; never sent

    def __getstate__(self) -> dict:  # the other processes build their own model
        return {**self.__dict__, "model": None}


def train_language_model(
    out: Path, file: str | None, given: dict, resume: bool, comm: Communicator | None = None
) -> tuple[LanguageModel, Vocabulary, History, bool]:
    """Train (or continue) the run in ``out``; prints what it resolved on the way. Returns
    the model (with the weights the run keeps), its vocabulary, the history, and whether it
    was validated. With ``comm``, rank 0 checks everything, holds the folder's lock and
    encodes the text, then every process trains."""
    comm = comm or Communicator()
    with ExitStack() as lock:  # rank 0 holds the folder while every process trains
        plan = comm.from_root(lambda: _plan(out, file, given, resume, comm, lock))
        return _fit(out, plan, comm)


def _plan(out: Path, file: str | None, given: dict, resume: bool, comm, lock: ExitStack) -> Plan:
    if resume:
        if not (out / CHECKPOINT_NAME).exists():
            raise UsageError(
                f"--resume: {out} holds no {CHECKPOINT_NAME} to continue; "
                f"drop --resume to start a new run there"
            )
        lock.enter_context(lock_folder(out))
        return _resume(out, file, given, comm)
    opts = resolve(given, None)
    check_options(opts, given)  # before anything is read or written
    check_processes(opts, comm)
    corpus = read_corpus(Path(file) if file else bundled_names(), opts)
    steps = run_length(opts, corpus)
    config = train_config(opts, steps, validating=bool(corpus.n_val))
    model = new_model(opts, corpus)
    check_writable(out)  # only now: bad input must not leave an empty folder behind
    lock.enter_context(lock_folder(out))
    if (out / CHECKPOINT_NAME).exists():
        raise UsageError(
            f"{out} already holds a training run; continue it with --resume or "
            f"choose another --out (nothing was changed)"
        )
    encode_corpus(out, corpus, opts)
    return Plan(opts, config, corpus, False, model)


def _resume(out: Path, file: str | None, given: dict, comm: Communicator) -> Plan:
    ckpt = out / CHECKPOINT_NAME
    arrays, meta = load_checkpoint(ckpt)
    saved, source = meta.get("options"), meta.get("source")
    problem = saved_problem(saved)
    if problem is None and not _is_source_record(source):
        problem = "it does not record the text it was trained on"
    if problem:
        raise CheckpointError(f"checkpoint {ckpt} cannot be resumed: {problem}")
    try:
        comm.check_world(meta)  # a run of another number of processes stops here
    except WorldSizeError:
        raise
    except ValueError as e:
        raise CheckpointError(f"checkpoint {ckpt} cannot be resumed: {e}") from None
    clash = [
        f"{FLAGS[k].option} {v} (saved: {saved[k]})"
        for k, v in given.items()
        if FLAGS[k].fixed and v != saved[k]
    ]
    if clash:
        raise UsageError(
            f"--resume: the flags differ from the run saved in {out}: "
            f"{', '.join(clash)}; drop them or train into a new --out"
        )
    opts = resolve(given, saved)
    check_options(opts, given)
    check_processes(opts, comm)
    corpus = read_corpus(Path(file) if file else Path(source["path"]), opts, source["sha256"])
    if corpus.vocab.to_json() != meta.get("vocabulary"):
        raise CheckpointError(
            f"checkpoint {ckpt} cannot be resumed: its vocabulary is not its text's"
        )
    steps = run_length(opts, corpus)
    validating = bool(corpus.n_val)
    try:
        train_config(saved, saved["steps"], validating)  # the saved options, as they were
    except ConfigError as e:
        raise CheckpointError(f"checkpoint {ckpt} cannot be resumed: its option {e}") from None
    config = train_config(opts, steps, validating)
    model = module_from_checkpoint(ckpt, meta, arrays, weights="last")
    described = model_config(opts, corpus.vocab)
    config_saved = model.config()
    if not isinstance(model, LanguageModel) or any(
        config_saved.get(k) != v for k, v in described.items()
    ):
        raise CheckpointError(
            f"checkpoint {ckpt} cannot be resumed: its model is not the one its options describe"
        )
    check_training_memory(opts, corpus)
    encode_corpus(out, corpus, opts)
    return Plan(opts, config, corpus, True, model)


def _is_source_record(source: object) -> bool:
    return (
        isinstance(source, dict)
        and set(source) == {"path", "sha256"}
        and all(isinstance(v, str) for v in source.values())
    )


def _fit(out: Path, plan: Plan, comm: Communicator):
    opts, config, corpus, resume = plan.opts, plan.config, plan.corpus, plan.resume
    vocab = corpus.vocab
    model = plan.model if plan.model is not None else LanguageModel(**model_config(opts, vocab))
    train_data, val_data, sizes = load_data(out, corpus, opts)
    if opts["mode"] == "stream":
        task = StreamLMTask(train_data, val_data, opts["batch_size"], opts["seq_len"])
        per_epoch = task.batches.chunks_per_epoch
    else:
        rng = np.random.default_rng(opts["seed"] + 1)
        task = LinesLMTask(train_data, val_data, opts["batch_size"], vocab.eos_id, rng)
        per_epoch = task.batches.batches_per_epoch
    shown = ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in sizes.items())
    say(f"data: {corpus.source} ({opts['level']} level, {opts['mode']} mode): {shown}")
    if comm.size > 1:
        say(f"processes: {comm.size}, each with a share of every batch of {opts['batch_size']}")
    say(f"vocabulary: {len(vocab)} tokens")
    say(
        f"model: {opts['cell']} x {opts['num_layers']}, hidden {opts['hidden_size']}, "
        f"{model.num_parameters():,} parameters"
    )
    validation = "" if corpus.n_val else ", no validation (--val-frac 0)"

    start = []

    def announce(step: int) -> None:  # once the saved state (if any) is checked
        start.append(step)
        say(
            f"training: {config.steps} steps ({config.steps / max(per_epoch, 1):.2f} epochs), "
            f"{opts['optimizer']} lr {opts['lr']}, batch {opts['batch_size']}"
            + (f", seq-len {opts['seq_len']}" if opts["mode"] == "stream" else "")
            + validation
            + (f", resuming at step {step}" if resume else "")
        )

    extra = {
        "vocabulary": vocab.to_json(),
        "options": {**opts, "steps": config.steps},
        "source": corpus.record(),  # so --resume works from any folder, on the same text
    }
    recorder = None
    if comm.rank == 0:  # one process keeps the record
        first = start_token(vocab, opts["mode"])
        record = (out, vocab, opts["mode"], first, train_data, val_data, sizes)
        recorder = language_model_record(*record, opts["seed"])
    # A diverging run overflows on its way to a non-finite loss: that is reported as one
    # line, not as a screen of RuntimeWarnings.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        history = train(
            model,
            task,
            config,
            out,
            resume,
            extra,
            on_start=announce,
            recorder=recorder,
            comm=comm,
        )
    if resume and len(history.train_loss) == start[0]:
        why = "had stopped early" if history.stopped_early else f"had run its {config.steps} steps"
        say(f"nothing to train: the run in {out} {why}")
    return model, vocab, history, bool(corpus.n_val)


# ---------------------------------------------------------------- data and sizes


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


def check_processes(opts: dict, comm: Communicator) -> None:
    """UsageError unless every process gets one sequence of each batch at least."""
    if opts["batch_size"] < comm.size:
        raise UsageError(
            f"--batch-size {opts['batch_size']} is smaller than the {comm.size} processes: each "
            f"needs one sequence of every batch at least"
        )


def held_out(total: int, opts: dict) -> int:
    """How many of ``total`` lines (lines mode) or tokens (stream mode) are held out: a
    seeded shuffle holds out ``val_frac`` of the lines (at least one when it is > 0); the
    last ``val_frac`` of the tokens."""
    frac = opts["val_frac"]
    if opts["mode"] == "lines":
        n_val = int(round(total * frac))
        return max(1, n_val) if frac > 0 and total > 1 else n_val
    return int(total * frac)


def read_corpus(source: Path, opts: dict, sha256: str | None = None) -> Corpus:
    """Read and check the text of a run in one streaming pass (vocabulary, SHA-256, sizes);
    with ``sha256`` (resuming) it must be the text the run was trained on, which is checked
    before a byte of it is decoded."""
    if sha256 is not None and file_digest(source) != sha256:
        raise UsageError(
            f"--resume: {source} is not the text the run was trained on (its SHA-256 differs "
            f"from the one saved); resume with that text, or train into a new --out"
        )
    found = scan(
        source, opts["level"], opts["mode"], opts["min_count"], opts["encoding"], opts["errors"]
    )
    if found.blank:
        raise UsageError(f"{source} is empty: there is nothing to train on")
    if opts["mode"] == "lines":
        check_fits(16 * found.lines, f"the order of {found.lines:,} lines", "use a smaller text")
        n_val = held_out(found.lines, opts)
        n_train = found.lines - n_val
        if n_train < opts["batch_size"]:
            raise UsageError(
                f"the text has {n_train} training lines, fewer than one batch of "
                f"--batch-size {opts['batch_size']}; use a smaller --batch-size or a longer text"
            )
        return Corpus(source, found.sha256, found.vocabulary, n_train, n_val, 1 + found.longest)
    held = held_out(found.tokens, opts)
    n_train, need = found.tokens - held, opts["batch_size"] * opts["seq_len"] + 1
    if n_train < need:
        raise UsageError(
            f"the text has {n_train} training tokens, too few for one batch: "
            f"--batch-size {opts['batch_size']} x --seq-len {opts['seq_len']} + 1 = {need}; "
            f"use a smaller --batch-size or --seq-len, or a longer text"
        )
    n_val = held if held >= 2 else 0  # one token predicts nothing: no validation
    longest = min(opts["seq_len"], (n_train - 1) // opts["batch_size"])
    return Corpus(source, found.sha256, found.vocabulary, n_train, n_val, longest)


def encode_corpus(out: Path, corpus: Corpus, opts: dict) -> None:
    """The text encoded as token ids in the run folder (kept from an earlier run of the same
    text and vocabulary), once what killed writes left there is removed; only under the
    folder's lock."""
    for name in (CHECKPOINT_NAME, *file_names()):
        remove_stale_temporaries(out, name)
    mode, encoding, errors = opts["mode"], opts["encoding"], opts["errors"]
    try:
        encode(corpus.source, corpus.vocab, mode, out, "corpus", encoding, errors, corpus.sha256)
    except NoRoom as e:
        e.resumable = (out / CHECKPOINT_NAME).exists()  # else there is no run to resume yet
        raise


def load_data(out: Path, corpus: Corpus, opts: dict):
    """The training and validation data of the corpus encoded in ``out``, read from its map:
    ``(train, val, sizes)``, id lines (:class:`rnnkit.corpus.Lines`) or id streams."""
    encoded = open_corpus(out)
    if opts["mode"] == "stream":
        n_train, n_val = corpus.n_train, corpus.n_val
        train_ids, val_ids = encoded.ids[:n_train], encoded.ids[n_train : n_train + n_val]
        return train_ids, val_ids, {"train_tokens": n_train, "val_tokens": n_val}
    order = np.random.default_rng(opts["seed"]).permutation(corpus.n_train + corpus.n_val)
    train_lines, val_lines = (
        encoded.lines(order[corpus.n_val :]),
        encoded.lines(order[: corpus.n_val]),
    )
    # <eos> included; counted from the smaller share, without a copy per training line
    tokens = int(encoded.info["tokens"]) - int(val_lines.lengths().sum()) + len(train_lines)
    sizes = {"train_lines": len(train_lines), "val_lines": len(val_lines), "train_tokens": tokens}
    return train_lines, val_lines, sizes


def run_length(opts: dict, corpus: Corpus) -> int:
    """Optimiser steps of the run: --epochs passes over the data, or --steps."""
    if opts["epochs"] is None:
        return opts["steps"]
    N = min(opts["batch_size"], corpus.n_train)
    if opts["mode"] == "lines":
        per_epoch = corpus.n_train // N
    else:
        per_epoch = ((corpus.n_train - 1) // N) // corpus.longest
    steps = max(1, int(round(opts["epochs"] * per_epoch)))
    if steps > MAX_STEPS:
        raise UsageError(f"--epochs {opts['epochs']} is {steps:,} steps, more than {MAX_STEPS:,}")
    return steps


def model_config(opts: dict, vocab: Vocabulary) -> dict:
    """The LanguageModel a run's options describe, as constructor arguments."""
    return {
        "vocab_size": len(vocab),
        "hidden_size": opts["hidden_size"],
        "num_layers": opts["num_layers"],
        "cell": opts["cell"],
        "embedding_dim": opts["embedding_dim"],
        "dropout": opts["dropout"],
        "rng": opts["seed"],
        "dtype": "float32",
    }


def activation_bytes(opts: dict, corpus: Corpus) -> int:
    """About what one training step holds besides the weights: the layers' buffers for every
    time step, the embeddings and the logits with their gradients (float32)."""
    T, N = corpus.longest, min(opts["batch_size"], corpus.n_train)
    H, L, V = opts["hidden_size"], opts["num_layers"], len(corpus.vocab)
    E = opts["embedding_dim"] or H
    return 4 * T * N * (L * 16 * H + 2 * E + 4 * V)


def check_training_memory(opts: dict, corpus: Corpus) -> None:
    """NotEnoughMemory if one training step's activations would not fit."""
    sizes = "--batch-size, --seq-len" if opts["mode"] == "stream" else "--batch-size"
    hint = f"use a smaller {sizes}, --hidden-size, --embedding-dim or --num-layers"
    check_fits(activation_bytes(opts, corpus), "one training step (activations)", hint)


def new_model(opts: dict, corpus: Corpus) -> LanguageModel:
    """The run's model, refused before its weights are allocated if training it (weights,
    gradients, optimiser state, best weights: about 5 copies) would not fit in memory."""
    check_training_memory(opts, corpus)  # first: it needs no allocation to tell
    config = model_config(opts, corpus.vocab)
    available = available_bytes()
    budget = parameter_budget(available // 5) if available is not None else nullcontext()
    try:
        with budget:
            model = LanguageModel(**config)
    except ParameterBudgetExceeded as e:
        raise NotEnoughMemory(
            f"a {opts['cell']} with --hidden-size {opts['hidden_size']}, --num-layers "
            f"{opts['num_layers']} and {len(corpus.vocab):,} tokens has at least "
            f"{format_bytes(e.needed)} of weights, and training needs about 5 times that; "
            f"{format_bytes(available)} is available; use a smaller --hidden-size, "
            f"--num-layers or --embedding-dim"
        ) from None
    return model
