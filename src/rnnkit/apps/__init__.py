"""The applications the notes open with, one module each, run as ``rnnkit app NAME``.

Each module is built on the skeleton of :mod:`rnnkit.apps.common`: ``SUMMARY`` (one line for
``--help``), ``run(argv) -> dict`` (its scores) and ``main(argv) -> int`` (``rnnkit app NAME``,
its own flags, ``prog="rnnkit app NAME"``); errors propagate to the command line, which prints
each as one line. A module named in :data:`DATA_APPS` also defines
``get_data(cache: Path) -> Path``, run by ``rnnkit data get NAME``. Apps import from the
library, never the other way round.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

APPS = {
    "sentiment": "many-to-one: UCI labelled sentences, against bag-of-words logistic regression",
    "dna": "many-to-one: UCI primate splice junctions, against majority class and k-mers",
    "ner": "many-to-many (Tx = Ty): bidirectional LSTM tagger, BIO tags, F1 per entity type",
    "dates": "encoder-decoder (Tx != Ty): human-readable dates to ISO YYYY-MM-DD",
    "music": "one-to-many: Bach chorales as note sequences, sampled to a MIDI file",
    "speech": "speech recognition (Tx != Ty): spoken digit strings, bidirectional GRU with CTC",
    "vowels": "speaker recognition, many-to-one: JapaneseVowels recordings, against 1-NN DTW",
    "activity": "activity recognition, many-to-one: GunPoint (video) and BasicMotions, 1-NN DTW",
}
# The apps whose data a package manager brings (or, for speech, a program makes): each defines
# get_data, run by `rnnkit data get NAME`.
DATA_APPS = ("sentiment", "dna", "ner", "music", "speech", "vowels", "activity")


def load(name: str):
    """The module of app ``name``."""
    return importlib.import_module(f"rnnkit.apps.{name}")


def data_cache() -> Path:
    """Where fetched data sets live: $RNNKIT_DATA, else ~/.cache/rnnkit/data."""
    root = os.environ.get("RNNKIT_DATA") or Path.home() / ".cache" / "rnnkit" / "data"
    return Path(root)
