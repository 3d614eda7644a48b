"""Activity recognition, many-to-one: what is the person doing, from how a tracked point moves?

Data, two sets of the UCR/UEA archive (fetched by ``rnnkit data get activity`` from the
``aeon`` wheel on PyPI, never installed, never shipped), each with the archive's own split:

- ``GunPoint`` (Ratanamahatana and Keogh 2005): video of two actors, either drawing a replica
  gun from a holster, aiming it and putting it back, or just pointing a finger; the x position
  of the actor's hand centroid, tracked frame by frame (150 frames, z-normalised). 50 train,
  150 test. It is the hand track extracted from the video, not the video's frames.
- ``BasicMotions``: a wrist-worn sensor (3-axis accelerometer and gyroscope, 6 channels,
  100 steps at 10 Hz) while standing, walking, running or playing badminton. 40 train, 40 test.

A bidirectional GRU reads the sequence (standardised with the training statistics; in
training, jittered and rescaled afresh every step) and a linear head reads the mean of its
outputs; it is scored next to 1-NN DTW (full, and with the warping window chosen by
leave-one-out on the training set) and 1-NN Euclidean.

Raw frames plug into the same model: turn each video frame into a feature vector (pixels
pooled to a small grid, a pose estimator's joint positions, or a pretrained image network's
embedding), stack them as ``(T, N, D)``, and the GRU reads them as it reads the 1-channel hand
track here (``SequenceClassifier(None, C, H, input_size=D)``); only D changes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import data_cache
from .common import AppParser, TrainingFlags, add_data_flags, entry_points
from .datasets import DataError
from .timeseries import CACHE_DIR, add_archive_flags, classify_problem, get_archive_sets

SUMMARY = "activity recognition, many-to-one: GunPoint (video) and BasicMotions, 1-NN DTW"
APP = "activity"
PROG = f"rnnkit app {APP}"
PROBLEMS = ("GunPoint", "BasicMotions")
TRAINING = TrainingFlags(
    steps=1000, examples="sequences", batch_size=16, eval_every=50, patience=10
)


def get_data(cache: Path) -> Path:
    """Fetch GunPoint and BasicMotions from the aeon wheel into ``cache/ucr``."""
    return get_archive_sets(cache, PROBLEMS)


def build_parser() -> AppParser:
    """The command line of ``rnnkit app activity``."""
    p = AppParser(prog=PROG, description=__doc__)
    p.add_argument(
        "--sets", default=",".join(PROBLEMS), help="comma-separated among GunPoint, BasicMotions"
    )
    add_data_flags(
        p, "<Set>/<Set>_TRAIN.ts and _TEST.ts for each set", f"{CACHE_DIR}/ in the data cache"
    )
    add_archive_flags(p, hidden=32, pooling="mean")
    TRAINING.add_to(p)
    return p


def body(args: argparse.Namespace) -> dict:
    """Train and score a classifier and the baselines on each set; returns
    ``{set: accuracies}``."""
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    bad = [s for s in sets if s not in PROBLEMS]
    if bad or not sets:
        raise DataError(f"--sets takes GunPoint and/or BasicMotions, got {args.sets!r}")
    root = args.data_dir or data_cache() / CACHE_DIR
    return {s: classify_problem(s, root / s, args, APP, TRAINING) for s in sets}


run, main = entry_points(build_parser, body)
