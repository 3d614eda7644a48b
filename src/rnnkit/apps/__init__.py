"""The applications the notes open with, one module each, run as ``rnnkit app NAME``.

Each module defines ``SUMMARY`` (one line for ``--help``) and ``main(argv) -> int`` (its own
argparse, ``prog="rnnkit app NAME"``); a module whose data comes through a package manager also
defines ``get_data(cache: Path) -> Path``, run by ``rnnkit data get NAME``. Apps import from the
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
}


def load(name: str):
    """The module of app ``name``."""
    return importlib.import_module(f"rnnkit.apps.{name}")


def data_cache() -> Path:
    """Where fetched data sets live: $RNNKIT_DATA, else ~/.cache/rnnkit/data."""
    root = os.environ.get("RNNKIT_DATA") or Path.home() / ".cache" / "rnnkit" / "data"
    return Path(root)
