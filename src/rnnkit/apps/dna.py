"""DNA sequence analysis, many-to-one: is there a splice junction in the middle of these 60
bases, and of which kind?

Data: the UCI primate splice-junction set (Statlog version; 3,186 sequences of 60 nucleotides,
CC BY 4.0), as ``DNA.rda`` in the Debian package ``r-cran-mlbench``. Classes: ``EI`` (exon ->
intron boundary, a donor site), ``IE`` (intron -> exon, an acceptor site) and ``N`` (neither);
the junction lies between positions 30 and 31. ``rnnkit data get dna`` downloads the package
(``apt-get download``, no root needed), reads the R file with the PyPI package ``rdata``,
decodes the bases and writes ``splice.csv`` (``class,sequence``) into the data cache, so later
runs need neither.

The R file stores each base as three indicator columns. The code was read off the data
(four patterns occur, 100 010 001 000) and is proved by biology: with A = 100, C = 010,
G = 001, T = 000, 99.0% of EI sequences read ``GT`` just after the junction (positions 31-32)
and 99.5% of IE sequences ``AG`` just before it (29-30), the GT..AG rule of introns; any other
assignment breaks it. :func:`get_data` re-checks this on every download.

The model reads the one-hot bases with a bidirectional GRU (or LSTM); the baselines are the
majority class, logistic regression on 3-mer counts, and logistic regression on the one-hot
bases by position (a strong linear model for this task).
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path, PurePosixPath

import numpy as np

from ..checkpoint import atomic_write_text
from ..text import read_text
from . import data_cache
from .baselines import (
    accuracy,
    fit_best_logistic_regression,
    kmer_counts,
    majority_class,
    three_way_split,
)
from .common import (
    AppParser,
    TrainingFlags,
    add_classifier_flags,
    add_data_flags,
    add_split_flags,
    entry_points,
    fit,
    percent,
    predict_classes,
    print_scores,
    probability,
    vector_classifier,
    vector_classifier_task,
)
from .datasets import DataError, apt_download, deb_extract, missing_data, scratch_folder

SUMMARY = "many-to-one: UCI primate splice junctions, against majority class and k-mers"
APP = "dna"
PROG = f"rnnkit app {APP}"
DEB_PACKAGE = "r-cran-mlbench"
RDA_NAME = "DNA.rda"
CSV_NAME = "splice.csv"
BASES = "ACGT"
CLASSES = ("EI", "IE", "N")
# Three indicator columns per base in mlbench's DNA.rda (the Statlog encoding).
BIT_CODES = {(1, 0, 0): "A", (0, 1, 0): "C", (0, 0, 1): "G", (0, 0, 0): "T"}
JUNCTION = 30  # the boundary lies between positions 30 and 31 (1-based)
NOTICE = """\
UCI Molecular Biology (Splice-junction Gene Sequences), Statlog version: 3,186 primate
sequences of 60 nucleotides, classes EI (donor), IE (acceptor), N (neither).
G. Towell, M. Noordewier and J. Shavlik; https://archive.ics.uci.edu/dataset/69
Licence: CC BY 4.0. Taken from DNA.rda in the Debian package r-cran-mlbench (R package
mlbench, GPL-2) and decoded from its 3 indicator columns per base (A=100 C=010 G=001 T=000).
"""

TRAINING = TrainingFlags(
    steps=3000, examples="sequences", eval_every=100, patience=8, progress="auto"
)

# ---------------------------------------------------------------- decoding DNA.rda


def decode_bits(bits: np.ndarray) -> list[str]:
    """``(M, 3 * L)`` indicator columns -> M strings of L bases (see :data:`BIT_CODES`)."""
    bits = np.asarray(bits)
    if bits.ndim != 2 or bits.shape[1] % 3:
        raise DataError(f"expected 3 indicator columns per base, got shape {bits.shape}")
    triples = bits.reshape(bits.shape[0], -1, 3).astype(np.int64)
    code = triples[..., 0] * 4 + triples[..., 1] * 2 + triples[..., 2]  # 100 -> 4, 000 -> 0
    lookup = np.full(8, "?")
    for pattern, base in BIT_CODES.items():
        lookup[pattern[0] * 4 + pattern[1] * 2 + pattern[2]] = base
    letters = lookup[code]
    bad = np.argwhere(letters == "?")
    if len(bad):
        m, pos = bad[0]
        raise DataError(
            f"sequence {m + 1}, base {pos + 1}: indicator pattern {triples[m, pos].tolist()} "
            f"is not one of {sorted(BIT_CODES)}"
        )
    return ["".join(row) for row in letters]


def consensus(seqs: list[str], labels: list[str]) -> dict[str, float]:
    """The GT..AG rule: the fraction of EI sequences reading ``GT`` at positions 31-32 and of
    IE sequences reading ``AG`` at positions 29-30 (1-based)."""
    ei = [s for s, c in zip(seqs, labels) if c == "EI"]
    ie = [s for s, c in zip(seqs, labels) if c == "IE"]
    j = JUNCTION
    return {
        "EI_GT": float(np.mean([s[j : j + 2] == "GT" for s in ei])) if ei else float("nan"),
        "IE_AG": float(np.mean([s[j - 2 : j] == "AG" for s in ie])) if ie else float("nan"),
    }


def read_rda(path: Path) -> tuple[np.ndarray, list[str]]:
    """The ``DNA`` data frame of mlbench's ``DNA.rda``: ``(bits (M, 180), classes)``."""
    try:
        import rdata
    except ImportError:
        raise DataError(
            f"reading {RDA_NAME} needs the PyPI package rdata: `pip install rdata`, then run "
            f"`rnnkit data get {APP}` again"
        ) from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Unknown encoding. Assumed ASCII."
        frames = rdata.conversion.convert(rdata.parser.parse_file(path))
    if "DNA" not in frames:
        raise DataError(f"{path.name} holds no DNA data frame (found {sorted(frames)})")
    df = frames["DNA"]
    columns = [c for c in df.columns if str(c) != "Class"]
    bits = np.stack([np.asarray(df[c].astype(str)) == "1" for c in columns], axis=1)
    classes = [str(c) for c in np.asarray(df["Class"].astype(str))]  # ei, ie, n
    return bits.astype(np.int64), classes


def get_data(cache: Path) -> Path:
    """Download ``r-cran-mlbench``, decode ``DNA.rda`` and write ``cache/dna/splice.csv``;
    returns that folder."""
    dest = Path(cache) / APP
    with scratch_folder(dest) as tmp:
        deb = apt_download(DEB_PACKAGE, tmp)

        def select(path: PurePosixPath) -> str | None:
            ok = path.name == RDA_NAME and path.parent.name == "data"
            return RDA_NAME if ok and "mlbench" in path.parts else None

        found = deb_extract(deb, select, tmp / "raw")
        if not found:
            raise DataError(f"{deb.name} holds no mlbench/data/{RDA_NAME}")
        bits, classes = read_rda(found[0])
        classes = [c.upper() for c in classes]
        seqs = decode_bits(bits)
        check = consensus(seqs, classes)
        if not (check["EI_GT"] >= 0.95 and check["IE_AG"] >= 0.95):
            raise DataError(
                f"decoded bases fail the GT..AG check (EI with GT {check['EI_GT']:.1%}, IE with "
                f"AG {check['IE_AG']:.1%}): the encoding of {RDA_NAME} is not the expected one"
            )
        unknown = sorted(set(classes) - set(CLASSES))
        if unknown:
            raise DataError(f"{RDA_NAME} has unexpected classes {unknown}")
        out = dest / CSV_NAME
        atomic_write_text(
            out, "class,sequence\n" + "".join(f"{c},{s}\n" for c, s in zip(classes, seqs))
        )
    atomic_write_text(dest / "NOTICE", NOTICE)
    print(
        f"decoded {len(seqs):,} sequences of {len(seqs[0])} bases; GT..AG check: "
        f"{check['EI_GT']:.1%} of EI read GT at 31-32, {check['IE_AG']:.1%} of IE read AG "
        f"at 29-30"
    )
    print(f"wrote {out}")
    return dest


# ---------------------------------------------------------------- the data set


def parse_csv(text: str, name: str = "<text>") -> tuple[list[str], np.ndarray]:
    """``class,sequence`` lines (a header line first) -> ``(sequences, class ids)``."""
    lines = [ln.strip() for ln in text.splitlines()]
    if not lines or lines[0].replace(" ", "").lower() != "class,sequence":
        raise DataError(f"{name}: the first line must be 'class,sequence'")
    seqs, labels = [], []
    for number, line in enumerate(lines[1:], 2):
        if not line:
            continue
        cls, _, seq = line.partition(",")
        cls, seq = cls.strip().upper(), seq.strip().upper()
        if cls not in CLASSES:
            raise DataError(f"{name}, line {number}: class must be EI, IE or N, got {cls!r}")
        if not seq or set(seq) - set(BASES):
            raise DataError(
                f"{name}, line {number}: a sequence of A, C, G, T is expected, got {seq[:20]!r}"
            )
        seqs.append(seq)
        labels.append(CLASSES.index(cls))
    if not seqs:
        raise DataError(f"{name}: no sequences; fetch them with `rnnkit data get {APP}`")
    return seqs, np.array(labels, dtype=np.int64)


def load_dna(
    folder: Path, encoding: str = "utf-8", errors: str = "strict"
) -> tuple[list[str], np.ndarray]:
    """``folder/splice.csv`` -> ``(sequences, class ids into CLASSES)``, decoded with
    ``encoding`` (``errors="replace"`` turns undecodable bytes into U+FFFD)."""
    path = folder / CSV_NAME
    if not path.is_file():
        raise missing_data(APP, folder, f"{CSV_NAME} (the decoded splice-junction sequences)")
    return parse_csv(read_text(path, encoding, errors), str(path))


def one_hot(seqs: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(x (T, N, 4), lengths (N,))``: x<t> is the one-hot vector of base t (A, C, G, T), as
    the notes draw it; shorter sequences end in zeros."""
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    x = np.zeros((int(lengths.max()), len(seqs), len(BASES)), dtype=np.float32)
    index = {b: i for i, b in enumerate(BASES)}
    for n, s in enumerate(seqs):
        x[np.arange(len(s)), n, [index[b] for b in s]] = 1.0
    return x, lengths


def positional_features(seqs: list[str]) -> np.ndarray:
    """``(N, 4 L)``: the one-hot bases side by side (needs sequences of one length)."""
    x, lengths = one_hot(seqs)
    if lengths.min() != lengths.max():
        raise DataError("the positional baseline needs sequences of one length")
    return x.transpose(1, 0, 2).reshape(len(seqs), -1).astype(np.float64)


# ---------------------------------------------------------------- command line


def build_parser() -> AppParser:
    """The command line of ``rnnkit app dna``."""
    p = AppParser(
        prog=PROG,
        description=(
            "Splice junctions in DNA (many-to-one): a bidirectional GRU or LSTM reads 60 "
            "one-hot bases and says EI (donor), IE (acceptor) or N (neither); scored on a "
            "held-out split against the majority class and logistic regression on k-mer "
            f"counts. Fetch the data first with `rnnkit data get {APP}`."
        ),
    )
    add_data_flags(p, CSV_NAME, f"{APP}/ in the data cache")
    add_classifier_flags(p, hidden=64, pooling="max")
    p.add_argument(
        "--base-dropout",
        type=probability,
        default=0.1,
        help="probability of blanking a training base (its one-hot vector set to 0), a regulariser",
    )
    p.add_argument("--k", type=int, choices=range(1, 6), default=3, help="k of the k-mer baseline")
    add_split_flags(p)
    TRAINING.add_to(p)
    return p


def body(args: argparse.Namespace) -> dict:
    """Train and score the classifier and its baselines; returns the test accuracies."""
    folder = args.data_dir or data_cache() / APP
    seqs, y = load_dna(folder, args.encoding, args.errors)
    seeds = np.random.SeedSequence(args.seed).spawn(4)
    split_rng, model_rng, batch_rng, drop_rng = (np.random.default_rng(s) for s in seeds)
    train_i, val_i, test = three_way_split(y, args.test_fraction, args.val_fraction, split_rng)
    if min(len(train_i), len(val_i), len(test)) == 0:
        raise DataError(f"{len(seqs)} sequences are too few to split into train/val/test")
    counts = ", ".join(f"{c} {int((y == k).sum()):,}" for k, c in enumerate(CLASSES))
    lengths = sorted({len(s) for s in seqs})
    length_text = f"{lengths[0]}" if len(lengths) == 1 else f"{lengths[0]}-{lengths[-1]}"
    print(
        f"data: {len(seqs):,} sequences of {length_text} bases in {folder} ({counts}); split "
        f"{len(train_i):,} train / {len(val_i):,} validation / {len(test):,} test "
        f"(seed {args.seed})"
    )

    # baselines
    major = majority_class(y[train_i])
    major_acc = accuracy(np.full(len(test), major), y[test])
    K = kmer_counts(seqs, args.k)
    kmer_model, kmer_val = fit_best_logistic_regression(
        K[train_i], y[train_i], K[val_i], y[val_i], num_classes=len(CLASSES)
    )
    kmer_acc = accuracy(kmer_model.predict(K[test]), y[test])
    pos_acc = None
    if len(lengths) == 1:
        P = positional_features(seqs)
        pos_model, _ = fit_best_logistic_regression(
            P[train_i], y[train_i], P[val_i], y[val_i], num_classes=len(CLASSES)
        )
        pos_acc = accuracy(pos_model.predict(P[test]), y[test])
    print(
        f"baselines: majority class {CLASSES[major]}; logistic regression on {K.shape[1]} "
        f"{args.k}-mer counts (l2 {kmer_model.l2:g}, chosen on validation)"
        + ("; logistic regression on the one-hot bases by position" if pos_acc is not None else "")
    )

    # the RNN
    model, name = vector_classifier(args, len(BASES), len(CLASSES), model_rng)
    config = TRAINING.config(args)
    print(
        f"model: {name} on one-hot bases, hidden {args.hidden_size}, {args.pooling} pooling, "
        f"{model.num_parameters():,} parameters; base dropout {args.base_dropout:g}, early "
        f"stopping on validation loss"
    )
    print(TRAINING.describe(config, args.batch_size), flush=True)
    x, lengths_all = one_hot(seqs)

    def blank_bases(xb):  # whole bases blanked: their one-hot vectors become zeros
        return xb * (drop_rng.random(xb.shape[:2]) >= args.base_dropout)[..., None]

    augment = blank_bases if args.base_dropout else None
    task = vector_classifier_task(
        x, lengths_all, y, train_i, val_i, args.batch_size, batch_rng, augment
    )
    _, seconds = fit(model, task, config)
    pred = predict_classes(model, x[:, test], lengths_all[test])
    scores = {
        "model": accuracy(pred, y[test]),
        "kmer": kmer_acc,
        "positional": pos_acc,
        "majority": major_acc,
        "train_seconds": seconds,
    }
    rows = [
        (name, percent(scores["model"])),
        (f"logistic regression, {args.k}-mer counts", percent(kmer_acc)),
    ]
    if pos_acc is not None:
        rows.append(("logistic regression, one-hot by position", percent(pos_acc)))
    rows.append((f"majority class ({CLASSES[major]})", percent(major_acc)))
    print_scores(f"test accuracy on {len(test):,} held-out sequences", rows)
    confusion = np.zeros((len(CLASSES), len(CLASSES)), dtype=np.int64)
    np.add.at(confusion, (y[test], pred), 1)
    cells = "; ".join(f"{c} {' '.join(map(str, row))}" for c, row in zip(CLASSES, confusion))
    print(f"  {name} confusion (rows true, columns predicted {' '.join(CLASSES)}): {cells}")
    return scores


run, main = entry_points(build_parser, body)
