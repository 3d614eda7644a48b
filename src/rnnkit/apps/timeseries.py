"""Recorded sequences from the UCR/UEA time-series archives, as the ``aeon`` wheel on PyPI ships
them, and the archives' classic baseline: the nearest training sequence under dynamic time
warping (1-NN DTW), written in NumPy.

``rnnkit data get vowels`` and ``rnnkit data get activity`` run ``pip download --no-deps
aeon==1.6.0`` into a temporary folder and copy out only the ``.ts`` files of the sets they
need, into ``<cache>/ucr/<Problem>/``; aeon itself is never installed. The archives are free
for research but carry no licence to redistribute: they are fetched on the user's machine and
never shipped with rnnkit.

The ``.ts`` format (sktime's): ``#`` comment lines, ``@`` header lines (``@problemName``,
``@classLabel true 1 2 3``, ...), then after ``@data`` one case a line:
``dim0:dim1:...:label``, each dimension's values separated by commas (``?`` when missing).

DTW (Sakoe and Chiba 1978) aligns two sequences a (Ta, D) and b (Tb, D) by the cheapest path
through the grid of frame pairs,

    C(i, j) = |a_i - b_j|^2 + min(C(i-1, j), C(i, j-1), C(i-1, j-1)),   dist = C(Ta-1, Tb-1),

optionally inside a band |i - j| <= w (the warping window), widened to |Ta - Tb| for a pair of
unequal lengths so that the end stays reachable. With D > 1 this is the "dependent" DTW of
the multivariate archive (one path for all channels).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from ..checkpoint import atomic_write_bytes, atomic_write_text
from ..text import read_text
from .baselines import accuracy, majority_class, stratified_split
from .common import (
    TrainingFlags,
    add_classifier_flags,
    add_split_flags,
    fit,
    nonnegative_float,
    percent,
    predict_classes,
    print_scores,
    vector_classifier,
    vector_classifier_task,
)
from .datasets import (
    DataError,
    fetch_command,
    missing_data,
    pip_download,
    scratch_folder,
    wheel_members,
)

AEON_WHEEL = "aeon==1.6.0"
ARCHIVE_DIR = PurePosixPath("aeon/datasets/data")
CACHE_DIR = "ucr"  # <cache>/ucr/<Problem>/<Problem>_TRAIN.ts
NOTICE = """\
Data sets of the UCR/UEA time-series classification archives (timeseriesclassification.com),
copied from the aeon 1.6.0 wheel on PyPI (aeon/datasets/data). The archives are free to use for
research; cite the original authors (see the comment lines at the top of each .ts file).
These files are fetched on this machine by rnnkit and are never shipped with it.
"""


@dataclass
class Split:
    """One part (train or test) of an archive problem."""

    series: list[np.ndarray]  # each (T_i, D) float64
    labels: np.ndarray  # (N,) class ids into ``classes``
    classes: list[str]  # the class names, in the header's order


# ---------------------------------------------------------------- fetching and reading


def problem_dir(cache: Path, problem: str) -> Path:
    """Where :func:`get_archive_sets` puts one problem's files."""
    return Path(cache) / CACHE_DIR / problem


def get_archive_sets(cache: Path, problems: Sequence[str]) -> Path:
    """Download the aeon wheel and copy the train and test ``.ts`` files of ``problems`` into
    ``cache/ucr/<Problem>/``; returns ``cache/ucr``. A set already there is kept."""
    root = Path(cache) / CACHE_DIR
    wanted = [
        f"{p}/{p}_{split}.ts"
        for p in problems
        for split in ("TRAIN", "TEST")
        if not (root / p / f"{p}_{split}.ts").is_file()
    ]
    if wanted:
        with scratch_folder(root) as tmp:
            wheel = pip_download(AEON_WHEEL, tmp)
            members = {str(ARCHIVE_DIR / w) for w in wanted}
            found = wheel_members(wheel, lambda path: str(path) in members)
            missing = sorted(members - set(found))
            if missing:
                raise DataError(f"{wheel.name} holds no {', '.join(missing)}")
            for member, data in found.items():
                path = PurePosixPath(member)
                (root / path.parent.name).mkdir(exist_ok=True)
                atomic_write_bytes(root / path.parent.name / path.name, data)
                print(f"wrote {root / path.parent.name / path.name}")
    atomic_write_text(root / "NOTICE", NOTICE)
    return root


def parse_ts(text: str, name: str = "<text>") -> tuple[list[np.ndarray], list[str], list[str]]:
    """A ``.ts`` file -> ``(series, labels, classes)``: each series ``(T, D)``, its label as
    written, and the class names of the ``@classLabel`` header (in its order; the labels' sorted
    set without one). A malformed line raises :class:`DataError` naming it."""
    classes: list[str] = []
    series, labels = [], []
    in_data = False
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            key, _, rest = line.partition(" ")
            if key.lower() == "@classlabel":
                words = rest.split()
                classes = words[1:] if words and words[0].lower() == "true" else []
            elif key.lower() == "@data":
                in_data = True
            elif not key.startswith("@"):
                raise DataError(f"{name}, line {number}: expected an @ header line or @data")
            continue
        *dims, label = line.split(":")
        if "?" in line:
            raise DataError(f"{name}, line {number}: missing values ('?') are not supported")
        try:
            values = [[float(v) for v in d.split(",")] for d in dims]
        except ValueError:
            raise DataError(
                f"{name}, line {number}: values must be numbers, got {raw[:40]!r}"
            ) from None
        if not dims or len({len(v) for v in values}) != 1:
            raise DataError(
                f"{name}, line {number}: expected 'dim0:dim1:...:label' with dimensions of one "
                f"length"
            )
        series.append(np.array(values, dtype=np.float64).T)  # (T, D)
        labels.append(label.strip())
    if not series:
        raise DataError(f"{name}: no cases after @data")
    if len({s.shape[1] for s in series}) != 1:
        raise DataError(f"{name}: the cases have different numbers of dimensions")
    return series, labels, classes or sorted(set(labels))


def load_problem(
    folder: Path, problem: str, app: str, encoding: str = "utf-8", errors: str = "strict"
) -> tuple[Split, Split]:
    """``(train, test)`` of an archive problem from ``folder/<Problem>_TRAIN.ts`` and
    ``_TEST.ts``, labels numbered in the training file's class order."""
    paths = [folder / f"{problem}_{split}.ts" for split in ("TRAIN", "TEST")]
    if not all(p.is_file() for p in paths):
        raise missing_data(app, folder, f"{problem}_TRAIN.ts and {problem}_TEST.ts")
    parts = [parse_ts(read_text(p, encoding, errors), str(p)) for p in paths]
    classes = parts[0][2]
    out = []
    for path, (series, labels, _) in zip(paths, parts):
        unknown = sorted(set(labels) - set(classes))
        if unknown:
            raise DataError(f"{path}: labels {unknown} are not among the classes {classes}")
        ids = np.array([classes.index(c) for c in labels], dtype=np.int64)
        out.append(Split(series, ids, classes))
    if out[0].series[0].shape[1] != out[1].series[0].shape[1]:
        raise DataError(f"{problem}: train and test have different numbers of dimensions")
    return out[0], out[1]


def data_hint(app: str) -> str:
    """How to get the archive sets."""
    return f"fetch them with `{fetch_command(app)}` (pip download {AEON_WHEEL}, no install)"


# ---------------------------------------------------------------- arrays for the RNN


def stack(
    series: Sequence[np.ndarray], dtype: object = np.float32
) -> tuple[np.ndarray, np.ndarray]:
    """``(x (T, N, D), lengths (N,))``, time-major, shorter series padded with 0."""
    lengths = np.array([len(s) for s in series], dtype=np.int64)
    x = np.zeros((int(lengths.max()), len(series), series[0].shape[1]), dtype=dtype)
    for n, s in enumerate(series):
        x[: len(s), n] = s
    return x, lengths


def channel_stats(series: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation ``(D,)`` of each channel over every frame of ``series``
    (the training part: the test set is scaled with the same numbers)."""
    frames = np.concatenate(series)  # (sum T, D)
    return frames.mean(axis=0), np.maximum(frames.std(axis=0), 1e-8)


# ---------------------------------------------------------------- 1-NN DTW


def dtw_distances(
    queries: Sequence[np.ndarray], refs: Sequence[np.ndarray], window: int | None = None
) -> np.ndarray:
    """DTW distance ``(Q, R)`` between every query and every reference series (each
    ``(T, D)``), inside the band ``|i - j| <= window`` (None: no band). The recursion runs
    over the grid once, for all pairs of a block of queries at a time."""
    qx, ql = stack(queries, np.float64)
    rx, rl = stack(refs, np.float64)
    out = np.empty((len(queries), len(refs)))
    pairs = max(1, 20_000_000 // rx.shape[0])  # (pairs, Tb) floats at a time: 160 MB at most
    block = max(1, pairs // len(refs))
    for start in range(0, len(queries), block):
        q = slice(start, min(start + block, len(queries)))
        out[q] = _dtw_block(qx[:, q], ql[q], rx, rl, window)
    return out


def _dtw_block(qx, ql, rx, rl, window):
    """DTW of every (query, reference) pair: ``qx (Ta, Q, D)``, ``rx (Tb, R, D)`` -> (Q, R)."""
    Ta, Tb = qx.shape[0], rx.shape[0]
    band = np.full((len(ql), len(rl)), np.inf if window is None else float(window))
    band = np.maximum(band, np.abs(ql[:, None] - rl[None]))  # the end must stay reachable
    prev = np.full((Tb, len(ql), len(rl)), np.inf)  # C(i-1, .)
    result = np.full((len(ql), len(rl)), np.inf)
    r_sq = (rx**2).sum(-1)  # (Tb, R)
    for i in range(Ta):
        # |a_i - b_j|^2 = |a_i|^2 + |b_j|^2 - 2 a_i.b_j, for every pair: (Tb, Q, R)
        cost = (qx[i] ** 2).sum(-1)[None, :, None] + r_sq[:, None, :]
        cost -= 2 * np.einsum("qd,trd->tqr", qx[i], rx)
        np.maximum(cost, 0.0, out=cost)  # rounding must not make a distance negative
        row = np.empty_like(prev)
        for j in range(Tb):
            if i == 0 and j == 0:
                best = 0.0
            elif i == 0:
                best = row[j - 1]
            elif j == 0:
                best = prev[0]
            else:
                best = np.minimum(np.minimum(prev[j], row[j - 1]), prev[j - 1])
            row[j] = np.where(abs(i - j) <= band, cost[j] + best, np.inf)
        ends = ql == i + 1  # the queries whose last frame is i
        if ends.any():
            at_end = np.take_along_axis(row[:, ends], (rl - 1)[None, None, :], axis=0)[0]
            result[ends] = at_end
        prev = row
    return result


def nearest_neighbour(distances: np.ndarray, ref_labels: np.ndarray) -> np.ndarray:
    """The label of each query's nearest reference (the first on a tie)."""
    return ref_labels[np.argmin(distances, axis=1)]


def choose_window(
    series: Sequence[np.ndarray], labels: np.ndarray, fractions: Sequence[float]
) -> tuple[int, float]:
    """The warping window (a fraction of the longest series, in steps) with the best
    leave-one-out 1-NN accuracy on the training series, the narrowest on a tie; returns
    ``(window, its leave-one-out accuracy)``."""
    longest = max(len(s) for s in series)
    best = (0, -1.0)
    for f in fractions:
        w = int(round(f * longest))
        d = dtw_distances(series, series, w)
        np.fill_diagonal(d, np.inf)  # leave each series out of its own neighbours
        acc = accuracy(nearest_neighbour(d, labels), labels)
        if acc > best[1]:
            best = (w, acc)
    return best


@dataclass
class BaselineScores:
    """Test accuracies of the 1-NN baselines."""

    dtw_full: float  # DTW without a band
    dtw_window: float  # DTW with the window chosen on the training set
    window: int  # that window, in steps
    euclidean: float | None  # 1-NN Euclidean (equal lengths only)


def nn_baselines(train: Split, test: Split, fractions: Sequence[float]) -> BaselineScores:
    """1-NN with full DTW, with DTW in a window chosen by leave-one-out on the training set,
    and (when every series has one length) with the Euclidean distance."""
    full = dtw_distances(test.series, train.series, None)
    dtw_full = accuracy(nearest_neighbour(full, train.labels), test.labels)
    window, _ = choose_window(train.series, train.labels, fractions)
    banded = dtw_distances(test.series, train.series, window)
    dtw_window = accuracy(nearest_neighbour(banded, train.labels), test.labels)
    euclid = None
    if len({len(s) for s in (*train.series, *test.series)}) == 1:
        d = dtw_distances(test.series, train.series, 0)  # a band of 0: the diagonal only
        euclid = accuracy(nearest_neighbour(d, train.labels), test.labels)
    return BaselineScores(dtw_full, dtw_window, window, euclid)


# ---------------------------------------------------------------- the RNN against 1-NN DTW


def add_archive_flags(parser: argparse.ArgumentParser, hidden: int, pooling: str) -> None:
    """The classifier's flags for an archive problem."""
    add_classifier_flags(parser, hidden, pooling)
    parser.add_argument(
        "--jitter",
        type=nonnegative_float,
        default=0.1,
        help="training augmentation: Gaussian noise of this size (in standard deviations of "
        "each channel) and amplitude scaled by 1 +- this, a fresh draw every step",
    )
    parser.add_argument(
        "--windows",
        default="0,0.05,0.1,0.2",
        help="DTW baseline: warping windows tried (fractions of the length), chosen by "
        "leave-one-out on the training set",
    )
    add_split_flags(parser, test=False)


def window_fractions(text: str) -> list[float]:
    """``"0,0.1"`` -> ``[0.0, 0.1]``; each in [0, 1]."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or not all(0 <= v <= 1 for v in values):
        raise DataError(f"--windows takes fractions in [0, 1] separated by commas, got {text!r}")
    return values


def classify_problem(
    problem: str, folder: Path, args: argparse.Namespace, app: str, training: TrainingFlags
) -> dict:
    """Train a GRU classifier on the archive's training split of ``problem`` and score it on the
    archive's test split next to 1-NN DTW, trained as ``args`` and the app's ``training`` flags
    say; prints the report, returns the test accuracies."""
    fractions = window_fractions(args.windows)
    train_part, test_part = load_problem(folder, problem, app, args.encoding, args.errors)
    lengths = sorted({len(s) for s in (*train_part.series, *test_part.series)})
    span = f"{lengths[0]}" if len(lengths) == 1 else f"{lengths[0]}-{lengths[-1]}"
    classes = train_part.classes
    print(
        f"\n{problem}: {len(train_part.series)} train / {len(test_part.series)} test sequences "
        f"(the archive's split) of {span} steps x {train_part.series[0].shape[1]} channels, "
        f"{len(classes)} classes ({', '.join(classes)}) from {folder}"
    )
    start = time.perf_counter()
    base = nn_baselines(train_part, test_part, fractions)
    print(
        f"baselines: 1-NN DTW (full; and with the window {base.window} steps chosen by "
        f"leave-one-out on the training set){', 1-NN Euclidean' if base.euclidean else ''}, "
        f"{time.perf_counter() - start:.1f} s"
    )

    seeds = np.random.SeedSequence(args.seed).spawn(4)
    split_rng, model_rng, batch_rng, aug_rng = (np.random.default_rng(s) for s in seeds)
    y_train = train_part.labels
    fit_i, val_i = stratified_split(y_train, args.val_fraction, split_rng)
    mean, std = channel_stats([train_part.series[i] for i in fit_i])
    x_train, len_train = stack([(s - mean) / std for s in train_part.series])
    x_test, len_test = stack([(s - mean) / std for s in test_part.series])
    model, name = vector_classifier(args, x_train.shape[2], len(classes), model_rng)
    print(
        f"model: {name}, hidden {args.hidden_size}, {args.pooling} pooling, "
        f"{model.num_parameters():,} parameters, on channels standardised with the training "
        f"statistics; jitter {args.jitter:g}; {len(fit_i)} train / {len(val_i)} validation"
    )
    config = training.config(args)
    print(training.describe(config, min(args.batch_size, len(fit_i))), flush=True)

    def jitter(xb):  # (T, B, D): amplitude scaled per sequence, and noise added
        scale = 1 + args.jitter * aug_rng.uniform(-1, 1, size=(1, xb.shape[1], 1))
        return (xb * scale + args.jitter * aug_rng.standard_normal(xb.shape)).astype(xb.dtype)

    task = vector_classifier_task(
        x_train,
        len_train,
        y_train,
        fit_i,
        val_i,
        args.batch_size,
        batch_rng,
        jitter if args.jitter else None,
    )
    _, seconds = fit(model, task, config)
    pred = predict_classes(model, x_test, len_test)
    scores = {
        "model": accuracy(pred, test_part.labels),
        "dtw_full": base.dtw_full,
        "dtw_window": base.dtw_window,
        "window": base.window,
        "euclidean": base.euclidean,
        "majority": accuracy(np.full(len(pred), majority_class(y_train)), test_part.labels),
        "train_seconds": seconds,
    }
    rows = [
        (name, percent(scores["model"])),
        ("1-NN DTW, full", percent(base.dtw_full)),
        (f"1-NN DTW, window {base.window} (chosen on train)", percent(base.dtw_window)),
    ]
    if base.euclidean is not None:
        rows.append(("1-NN Euclidean", percent(base.euclidean)))
    rows.append(("majority class", percent(scores["majority"])))
    print_scores(f"{problem} test accuracy on {len(pred)} sequences", rows)
    return scores
