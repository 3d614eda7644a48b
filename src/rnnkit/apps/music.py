"""Music generation, one-to-many: a language model over the soprano lines of Bach's chorales,
sampled one note at a time into a new melody written as a MIDI file.

Data: the 371 four-part chorales that ship with music21 (``music21.corpus.chorales``). Their
soprano lines are extracted once (about a minute) into a small JSON file in the rnnkit data cache
(``rnnkit data get music``); after that music21 is not needed, not even to write the MIDI file,
which a few lines of Python below write by hand.

Each note is one token, pitch and length together (``67:1.5`` is G4 for a dotted quarter,
``rest:1`` a quarter rest); each chorale is one line ending in ``<eos>``, transposed to C major
or A minor unless ``--transpose none``. The chorales are split into training, validation (for
early stopping) and test parts; the score is the held-out negative log-likelihood per token
(``<eos>`` included) against a unigram model of the training tokens, over the same vocabulary.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..checkpoint import atomic_write_bytes, atomic_write_text
from ..losses import perplexity
from ..models import LanguageModel
from ..sampling import generate
from ..text import EOS, UNK, Vocabulary
from ..train import LinesLMTask, lines_loss
from . import data_cache
from .common import (
    AppParser,
    TrainingFlags,
    add_model_flags,
    entry_points,
    fit,
    fraction,
    model_options,
    positive_float,
    positive_int,
    print_scores,
    probability,
)
from .datasets import DataError
from .metrics import unigram_nll

SUMMARY = "one-to-many: Bach chorales as note sequences, sampled to a MIDI file"
PROG = "rnnkit app music"
INSTALL = "pip install 'rnnkit[apps]' (or: pip install music21==10.5.1)"
CACHE_FILE = Path("bach_chorales") / "soprano.json"
FORMAT = "rnnkit-chorales-1"
TRAINING = TrainingFlags(
    steps=3000,
    examples="chorales",
    batch_size=16,
    lr_schedule="constant",
    eval_every=100,
    patience=5,
)
NOTE_NAMES = "C C# D Eb E F F# G Ab A Bb B".split()

Note = tuple  # (MIDI pitch or None for a rest, length in quarter notes)


# ---------------------------------------------------------------- MIDI, by hand


def _vlq(n: int) -> bytes:
    """A MIDI variable-length quantity: 7 bits a byte, high bit set on all but the last."""
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    return bytes(reversed(out))


def midi_bytes(
    notes: Sequence[Note],
    tempo_bpm: float = 80.0,
    program: int = 19,
    ticks_per_quarter: int = 480,
    velocity: int = 80,
    name: str = "rnnkit chorale",
) -> bytes:
    """A Standard MIDI File (format 0, one track) playing ``notes`` one after another.

    Args:
        notes: ``(pitch, quarter_length)`` pairs; pitch is a MIDI number 0-127, or None for a
            rest.
        tempo_bpm: quarter notes per minute.
        program: General MIDI instrument, 0-based (19 is the church organ).
    """
    if not tempo_bpm > 0:
        raise ValueError(f"tempo_bpm must be > 0, got {tempo_bpm}")
    if not 0 <= program <= 127 or not 0 <= velocity <= 127:
        raise ValueError("program and velocity must lie in [0, 127]")
    title = name.encode("utf-8")
    track = bytearray()
    track += _vlq(0) + b"\xff\x03" + _vlq(len(title)) + title  # track name
    track += _vlq(0) + b"\xff\x51\x03" + round(60e6 / tempo_bpm).to_bytes(3, "big")  # us/beat
    track += _vlq(0) + b"\xff\x58\x04\x04\x02\x18\x08"  # 4/4 time
    track += _vlq(0) + bytes([0xC0, program])  # program change, channel 1
    wait = 0  # ticks since the last event
    for pitch, length in notes:
        ticks = round(float(length) * ticks_per_quarter)
        if ticks < 0:
            raise ValueError(f"a note cannot last {length} quarters")
        if pitch is None:
            wait += ticks
            continue
        if not 0 <= pitch <= 127:
            raise ValueError(f"MIDI pitch must lie in [0, 127], got {pitch}")
        track += _vlq(wait) + bytes([0x90, pitch, velocity])  # note on
        track += _vlq(ticks) + bytes([0x80, pitch, 64])  # note off
        wait = 0
    track += _vlq(wait) + b"\xff\x2f\x00"  # end of track
    header = b"MThd" + (6).to_bytes(4, "big") + (0).to_bytes(2, "big") + (1).to_bytes(2, "big")
    header += ticks_per_quarter.to_bytes(2, "big")
    return header + b"MTrk" + len(track).to_bytes(4, "big") + bytes(track)


def write_midi(path: str | Path, notes: Sequence[Note], **options: float | int | str) -> Path:
    """Write :func:`midi_bytes` (``options`` go to it) to ``path``, atomically: a file already
    there is replaced whole, never left half-written; returns the path."""
    path = Path(path)
    atomic_write_bytes(path, midi_bytes(notes, **options))
    return path


def note_name(pitch: int | None) -> str:
    """60 -> ``C4``; None -> ``rest``."""
    return "rest" if pitch is None else f"{NOTE_NAMES[pitch % 12]}{pitch // 12 - 1}"


# ---------------------------------------------------------------- the chorales


def extract_chorales() -> tuple[list[dict], str]:
    """Soprano line, title and key of every chorale in music21's corpus (about a minute), and
    the version of music21 that read them."""
    try:
        import music21
        from music21 import corpus
    except ImportError:
        raise DataError(f"extracting the chorales needs music21: {INSTALL}") from None
    chorales = []
    for score in corpus.chorales.Iterator():
        soprano = score.parts[0].stripTies()
        notes = []
        for item in soprano.flatten().notesAndRests:
            length = round(float(item.quarterLength), 4)
            if length <= 0:  # grace notes take no time
                continue
            if item.isRest:
                notes.append([None, length])
            else:  # a note, or the top note of a chord
                notes.append([int(max(p.midi for p in item.pitches)), length])
        if not notes:
            continue
        key = score.analyze("key")
        title = score.metadata.title if score.metadata is not None else ""
        chorales.append(
            {
                "title": title or "",
                "tonic": int(key.tonic.pitchClass),
                "mode": str(key.mode),
                "notes": notes,
            }
        )
    return chorales, music21.__version__


def get_data(cache: Path) -> Path:
    """Extract the chorales' soprano lines into ``cache`` (once); returns the JSON file."""
    target = Path(cache) / CACHE_FILE
    if target.exists():
        return target
    chorales, version = extract_chorales()
    data = {
        "format": FORMAT,
        "source": f"music21 {version}: corpus.chorales.Iterator(), part 0, ties stripped",
        "chorales": chorales,
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, json.dumps(data, separators=(",", ":")))
    return target


def load_chorales(path: Path) -> list[dict]:
    """Read and check a chorale file written by :func:`get_data` (or by hand, same format)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(
            f"{path}: not a chorale file ({e}); rebuild it: rnnkit data get music"
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise DataError(f"{path}: not a {FORMAT} file; rebuild it: rnnkit data get music")
    chorales = data.get("chorales")
    if not isinstance(chorales, list) or not chorales:
        raise DataError(f"{path}: no chorales in the file")
    for k, ch in enumerate(chorales):
        notes = ch.get("notes") if isinstance(ch, dict) else None
        ok = isinstance(notes, list) and notes and isinstance(ch.get("tonic", 0), int)
        ok = ok and all(
            isinstance(n, list)
            and len(n) == 2
            and (n[0] is None or (isinstance(n[0], int) and 0 <= n[0] <= 127))
            and isinstance(n[1], (int, float))
            and n[1] > 0
            for n in notes
        )
        if not ok:
            raise DataError(
                f"{path}: chorale {k} is malformed (expected notes [[pitch or null, length], ...])"
            )
    return chorales


def transpose_shift(tonic: int, mode: str) -> int:
    """Semitones (-6..5) that move the key to C major, or to A minor for a minor key."""
    target = 9 if mode == "minor" else 0
    return (target - tonic + 6) % 12 - 6


def to_tokens(chorale: dict, transpose: bool) -> list[str]:
    """``["67:1.5", "rest:1", ...]`` for one chorale."""
    shift = transpose_shift(chorale.get("tonic", 0), chorale.get("mode", "major")) * transpose
    out = []
    for pitch, length in chorale["notes"]:
        p = "rest" if pitch is None else str(min(127, max(0, pitch + shift)))
        out.append(f"{p}:{float(length):g}")
    return out


def from_token(token: str) -> Note | None:
    """``"67:1.5"`` -> ``(67, 1.5)``; ``"rest:1"`` -> ``(None, 1.0)``; specials -> None."""
    if token in (EOS, UNK):
        return None
    pitch, length = token.split(":")
    return (None if pitch == "rest" else int(pitch), float(length))


# ---------------------------------------------------------------- the app


def build_parser() -> AppParser:
    """The command line of ``rnnkit app music``."""
    p = AppParser(prog=PROG, description=__doc__)
    p.add_argument(
        "--notes",
        type=Path,
        default=None,
        help="a chorale JSON file (default: the rnnkit data cache; built with music21 "
        "on first use)",
    )
    p.add_argument(
        "--transpose",
        choices=("c", "none"),
        default="c",
        help="c: every chorale to C major / A minor; none: as written",
    )
    p.add_argument("--val-fraction", type=fraction, default=0.1, help="chorales for validation")
    p.add_argument("--test-fraction", type=fraction, default=0.1, help="chorales for testing")
    add_model_flags(p, hidden=128, embedding=32, layers=1)
    p.add_argument("--dropout", type=probability, default=0.3, help="dropout on the LSTM output")
    p.add_argument("--temperature", type=positive_float, default=1.0, help="sampling temperature")
    p.add_argument("--length", type=positive_int, default=80, help="most notes to generate")
    p.add_argument(
        "--midi",
        type=Path,
        default=Path("chorale.mid"),
        help="where to write the generated melody",
    )
    p.add_argument("--tempo", type=positive_float, default=80.0, help="quarter notes per minute")
    TRAINING.add_to(p)
    return p


def _find_notes(args: argparse.Namespace) -> Path:
    """The chorale file: ``--notes``, else the data cache's, extracted first if need be."""
    if args.notes is not None:
        return args.notes
    path = data_cache() / CACHE_FILE
    if path.exists():
        return path
    try:
        import music21  # noqa: F401
    except ImportError:
        raise DataError(
            f"the Bach chorales are not at {path}; extract them with music21: "
            f"pip install music21==10.5.1 && rnnkit data get music"
        ) from None
    print(f"extracting the chorales' soprano lines with music21 (once, about a minute) to {path}")
    try:
        return get_data(data_cache())
    except (DataError, OSError) as e:
        raise DataError(f"cannot build {path}: {e}") from None


def body(args: argparse.Namespace) -> dict:
    """Train the language model, score it and the unigram baseline, write a sampled melody;
    returns the scores."""
    if args.val_fraction + args.test_fraction >= 1:
        raise DataError("--val-fraction and --test-fraction must sum to less than 1")
    path = _find_notes(args)
    chorales = load_chorales(path)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(chorales))
    n_val = max(1, round(args.val_fraction * len(chorales)))
    n_test = max(1, round(args.test_fraction * len(chorales)))
    if len(chorales) < n_val + n_test + 1:
        raise DataError(f"{path}: {len(chorales)} chorales are too few to split; need 3 or more")
    transpose = args.transpose == "c"
    lines = [to_tokens(ch, transpose) for ch in chorales]
    test_lines = [lines[i] for i in order[:n_test]]
    val_lines = [lines[i] for i in order[n_test : n_test + n_val]]
    train_lines = [lines[i] for i in order[n_test + n_val :]]
    vocab = Vocabulary.build(train_lines, "word", specials=[EOS, UNK])
    tokens = vocab.tokens
    train_ids = [vocab.lookup(x) for x in train_lines]
    val_ids, test_ids = [vocab.lookup(x) for x in val_lines], [vocab.lookup(x) for x in test_lines]
    n_tok = [sum(len(x) + 1 for x in part) for part in (train_ids, val_ids, test_ids)]
    unk = sum(t == 1 for x in test_ids for t in x)
    print(f"data: {len(chorales)} chorale soprano lines from {path}")
    print(
        f"  split: {len(train_ids)} train, {len(val_ids)} validation, {len(test_ids)} test "
        f"chorales ({n_tok[0]}, {n_tok[1]}, {n_tok[2]} tokens with <eos>)"
    )
    print(
        f"vocabulary: {len(tokens)} tokens (note = pitch:length, transposed to "
        f"{'C major / A minor' if transpose else 'none, as written'}); "
        f"{unk} test tokens unseen in training read as {UNK}"
    )

    model = LanguageModel(
        len(tokens), cell="lstm", dropout=args.dropout, rng=rng, **model_options(args)
    )
    print(
        f"model: LSTM language model, hidden {args.hidden_size}, embedding "
        f"{args.embedding_dim}, {args.num_layers} layer(s), dropout {args.dropout}, "
        f"{model.num_parameters():,} parameters"
    )
    task = LinesLMTask(
        train_ids, val_ids, args.batch_size, 0, np.random.default_rng([args.seed, 1])
    )
    config = TRAINING.config(args)
    print(TRAINING.describe(config, min(args.batch_size, len(train_ids))))
    _, seconds = fit(model, task, config)

    lm_nll, count = lines_loss(model, test_ids, 0)

    def with_eos(part):  # the tokens the language model is scored on, <eos> (id 0) included
        return [t for x in part for t in [*x, 0]]

    uni = unigram_nll(with_eos(train_ids), with_eos(test_ids), vocab_size=len(tokens))
    rows = [
        ("baseline, unigram (add-one)", f"{uni:.4f}", f"(perplexity {perplexity(uni):.2f})"),
        ("LSTM language model", f"{lm_nll:.4f}", f"(perplexity {perplexity(lm_nll):.2f})"),
    ]
    title = "held-out negative log-likelihood, nats per token"
    print_scores(f"{title} ({count} test tokens, {len(test_ids)} chorales)", rows, notes=True)
    results = {"lm_nll": lm_nll, "unigram_nll": uni, "train_seconds": seconds, "midi": None}

    samples = generate(model, args.length, rng, start_id=0, stop_id=0, temperature=args.temperature)
    sample = samples[0]
    notes = [n for n in (from_token(tokens[i]) for i in sample) if n is not None]
    if not notes:
        print("the sampled melody is empty (it ended at once); try another --seed")
        return results
    try:
        write_midi(args.midi, notes, tempo_bpm=args.tempo, name="rnnkit Bach-style chorale")
    except OSError as e:
        raise DataError(f"cannot write {args.midi}: {e.strerror or e}") from None
    quarters = sum(length for _, length in notes)
    print(
        f"\ngenerated {len(notes)} notes ({quarters:g} quarters, temperature "
        f"{args.temperature}), written to {args.midi}:"
    )
    print("  " + " ".join(f"{note_name(p)}/{length:g}" for p, length in notes))
    results["midi"] = args.midi
    return results


run, main = entry_points(build_parser, body)
