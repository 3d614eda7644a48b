"""Speaker recognition on real recordings, many-to-one with variable lengths: which of nine
speakers said this Japanese vowel?

Data: ``JapaneseVowels`` (Kudo, Toyama and Shimbo 1999; UCI, via the UCR/UEA archive): nine
male speakers saying the vowels /ae/, each utterance cut into 7 to 29 frames of 12 LPC cepstrum
coefficients (features computed from the audio, as log-mel features are). The archive's own
split: 270 utterances for training (30 a speaker), 370 for testing. ``rnnkit data get vowels``
fetches them from the ``aeon`` wheel on PyPI (never installed, never shipped).

A bidirectional GRU reads the frames (standardised with the training statistics) and a linear
head reads the mean of its outputs over the real frames; it is scored on the test split next
to the archive's classic baseline, the nearest training utterance under dynamic time warping
(1-NN DTW, in NumPy: full, and with a warping window chosen on the training set).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import data_cache
from .common import AppParser, TrainingFlags, add_data_flags, entry_points
from .timeseries import add_archive_flags, classify_problem, get_archive_sets, problem_dir

SUMMARY = "speaker recognition, many-to-one: JapaneseVowels recordings, against 1-NN DTW"
APP = "vowels"
PROG = f"rnnkit app {APP}"
PROBLEM = "JapaneseVowels"
TRAINING = TrainingFlags(steps=1500, examples="utterances", eval_every=50, patience=10)


def get_data(cache: Path) -> Path:
    """Fetch JapaneseVowels from the aeon wheel into ``cache/ucr/JapaneseVowels``."""
    get_archive_sets(cache, [PROBLEM])
    return problem_dir(cache, PROBLEM)


def build_parser() -> AppParser:
    """The command line of ``rnnkit app vowels``."""
    p = AppParser(prog=PROG, description=__doc__)
    add_data_flags(p, f"{PROBLEM}_TRAIN.ts and _TEST.ts", f"ucr/{PROBLEM}/ in the data cache")
    add_archive_flags(p, hidden=64, pooling="mean")
    TRAINING.add_to(p)
    return p


def body(args: argparse.Namespace) -> dict:
    """Train and score the classifier and the DTW baselines; returns the test accuracies."""
    return classify_problem(
        PROBLEM, args.data_dir or problem_dir(data_cache(), PROBLEM), args, APP, TRAINING
    )


run, main = entry_points(build_parser, body)
