"""Date translation, encoder-decoder with Tx != Ty: human-readable dates in several formats and
languages ("jeudi 4 mars 2021", "3/4/21", "4. März 2021") to ISO dates ("2021-03-04"),
character by character in and out.

Dates are drawn by Faker between 1950-01-01 and 2049-12-31 (so a two-digit year names one
century) and written by Babel in five locales and eleven formats. The test dates are held out:
no calendar day of the test set appears in training, in any format. One format is left out on
purpose: Spanish ``short`` ("4/3/21") reads the same as US ``short`` for another day, so no
model could tell which date is meant.

The score is exact match (all ten characters right) with greedy decoding and with beam search,
next to a hand-written rule that knows English month names and reads numbers day first.
"""

from __future__ import annotations

import argparse
import datetime
import re
import time
from collections import Counter
from collections.abc import Sequence

import numpy as np

from ..data import pad_sequences
from ..losses import cross_entropy
from ..models import Seq2Seq
from ..module import predicting
from ..text import UNK, Vocabulary
from ..train import BatchTask
from .common import (
    AppParser,
    TrainingFlags,
    add_model_flags,
    entry_points,
    fit,
    model_options,
    nonnegative_int,
    percent,
    positive_int,
    print_scores,
)
from .datasets import DataError
from .metrics import exact_match

SUMMARY = "encoder-decoder (Tx != Ty): human-readable dates to ISO YYYY-MM-DD"
PROG = "rnnkit app dates"
INSTALL = "pip install 'rnnkit[apps]' (or: pip install faker babel)"
TRAINING = TrainingFlags(steps=4000, examples="dates", batch_size=64)

FIRST_DAY, LAST_DAY = datetime.date(1950, 1, 1), datetime.date(2049, 12, 31)
LOCALES = ("en_US", "en_GB", "fr_FR", "de_DE", "es_ES")
# Babel's named formats and patterns of our own. Pattern letters: d day, M month (MMM short
# name, MMMM full name), y year (never Y: that is the week-numbering year, wrong near New Year),
# E weekday.
FORMATS = (
    "short",
    "medium",
    "long",
    "full",
    "d MMM y",
    "d MMMM y",
    "dd.MM.y",
    "MMMM d, y",
    "EEE d MMM y",
    "EEEE d MMMM y",
    "dd/MM/y",
)
LEFT_OUT = {("es_ES", "short")}  # d/M/yy: "4/3/21" is also en_US short for another day
PAD, BOS, EOS = 0, 1, 2  # target ids; the source uses 0 for padding and 1 for unknown
TARGET_TOKENS = ["<pad>", "<bos>", "<eos>", "-", *"0123456789"]


# ---------------------------------------------------------------- data


def formats() -> list[tuple[str, str]]:
    """Every (locale, format) pair used."""
    return [(loc, f) for loc in LOCALES for f in FORMATS if (loc, f) not in LEFT_OUT]


class DateMaker:
    """Draws dates with Faker and writes them with Babel, every choice taken from ``rng``."""

    def __init__(self, rng: np.random.Generator):
        try:
            from babel.dates import format_date
            from faker import Faker
        except ImportError:
            raise DataError(f"the dates app needs Faker and Babel: {INSTALL}") from None
        self.rng, self.format_date = rng, format_date
        self.fake = Faker("en_US")
        self.fake.seed_instance(int(rng.integers(2**32)))
        self.pairs = formats()

    def day(self) -> datetime.date:
        """A day drawn uniformly from FIRST_DAY..LAST_DAY."""
        return self.fake.date_between_dates(FIRST_DAY, LAST_DAY)

    def write(self, day: datetime.date) -> str:
        """``day`` in a locale and format drawn at random."""
        locale, fmt = self.pairs[int(self.rng.integers(len(self.pairs)))]
        return self.format_date(day, fmt, locale=locale)

    def make(self, num_train: int, num_test: int) -> tuple[list, list]:
        """``(train, test)`` lists of ``(human text, ISO date)``; no test day is in train."""
        span = (LAST_DAY - FIRST_DAY).days + 1
        if num_test > span // 2:
            raise DataError(f"--num-test must be <= {span // 2} (half the days of the range)")
        test_days: dict[datetime.date, None] = {}
        while len(test_days) < num_test:
            test_days[self.day()] = None
        train_days = []
        while len(train_days) < num_train:
            d = self.day()
            if d not in test_days:
                train_days.append(d)
        test = [(self.write(d), d.isoformat()) for d in test_days]
        train_set = [(self.write(d), d.isoformat()) for d in train_days]
        return train_set, test


def ambiguous_inputs(pairs: Sequence[tuple[str, str]]) -> int:
    """How many distinct inputs appear with more than one answer (an upper bound on accuracy)."""
    seen: dict[str, set[str]] = {}
    for src, tgt in pairs:
        seen.setdefault(src, set()).add(tgt)
    return sum(len(v) > 1 for v in seen.values())


# ---------------------------------------------------------------- the rule baseline

_MONTH3 = "jan feb mar apr may jun jul aug sep oct nov dec".split()


def _year(text: str) -> int:
    y = int(text)
    if len(text) <= 2:  # two-digit years: 50-99 -> 1950-1999, 00-49 -> 2000-2049
        y += 1900 if y >= 50 else 2000
    return y


def rule_baseline(text: str) -> str:
    """A simple hand-written parser: an English month name (first three letters) and two
    numbers, or three numbers read day-month-year (year-month-day when the first has four
    digits). Returns an ISO date, or ``""`` when the rule does not apply."""
    tokens = re.findall(r"\d+|[^\W\d_]+", text.lower())
    nums = [t for t in tokens if t.isdigit()]
    month = next((_MONTH3.index(t[:3]) + 1 for t in tokens if t[:3] in _MONTH3), None)
    try:
        if month is not None and len(nums) == 2:
            y_text = max(nums, key=len)  # the longer number is the year
            day = int(nums[1] if nums[0] is y_text else nums[0])
            result = datetime.date(_year(y_text), month, day)
        elif len(nums) == 3:
            a, b, c = nums
            if len(a) == 4:
                result = datetime.date(int(a), int(b), int(c))
            else:
                result = datetime.date(_year(c), int(b), int(a))
        else:
            return ""
    except ValueError:  # no such day
        return ""
    return result.isoformat()


# ---------------------------------------------------------------- the model


def char_vocabulary(texts: Sequence[str]) -> Vocabulary:
    """Characters of the training inputs; ``<pad>`` is 0 and unseen characters read as
    ``<unk>``, 1."""
    return Vocabulary.build(texts, "char", pad=True, specials=[UNK])


def encode_source(vocab: Vocabulary, text: str, reverse: bool = False) -> list[int]:
    """The id of each character of ``text`` (backwards with ``reverse``)."""
    return vocab.lookup(text[::-1] if reverse else text)


def encode_target(iso: str) -> list[int]:
    """``"2021-03-04"`` -> the ids of its ten characters in :data:`TARGET_TOKENS` (no
    ``<bos>`` or ``<eos>``)."""
    return [TARGET_TOKENS.index(c) for c in iso]


def decode_target(ids: Sequence[int]) -> str:
    """Target ids -> text; ``<pad>``, ``<bos>`` and ``<eos>`` are dropped."""
    return "".join(TARGET_TOKENS[i] for i in ids if i > EOS)


def translate(
    model: Seq2Seq, sources: Sequence[list[int]], beam: int = 0, batch_size: int = 500
) -> list[str]:
    """ISO strings for encoded sources: greedy (``beam=0``) or beam search of width ``beam``,
    in evaluation mode (dropout off); the model goes back to the mode it was in, even on an
    error."""
    out: list[str] = []
    with predicting(model):
        for start in range(0, len(sources), batch_size):
            src, lengths = pad_sequences(sources[start : start + batch_size], PAD)
            if beam:
                ids, _ = model.beam_search(src, lengths, beam_size=beam, max_len=12)
            else:
                ids, _ = model.greedy_decode(src, lengths, max_len=12)
            out += [decode_target(s) for s in ids]
    return out


def build_parser() -> AppParser:
    """The command line of ``rnnkit app dates``."""
    p = AppParser(prog=PROG, description=__doc__)
    p.add_argument("--num-train", type=positive_int, default=20000, help="training examples")
    p.add_argument("--num-test", type=positive_int, default=2000, help="held-out test dates")
    add_model_flags(p, hidden=128, embedding=32)
    p.add_argument(
        "--beam", type=positive_int, default=4, help="beam width for the beam-search score"
    )
    p.add_argument(
        "--beam-examples",
        type=nonnegative_int,
        default=None,
        help="test dates also decoded by beam search (default: all of them)",
    )
    p.add_argument(
        "--reverse-source",
        action="store_true",
        help="feed the input backwards (Sutskever et al. 2014)",
    )
    p.add_argument("--show", type=nonnegative_int, default=8, help="test translations to print")
    TRAINING.add_to(p)
    return p


def body(args: argparse.Namespace) -> dict:
    """Train the translator and score it and the baselines; returns the exact-match scores."""
    rng = np.random.default_rng(args.seed)
    train_set, test = DateMaker(rng).make(args.num_train, args.num_test)
    pairs = formats()
    print(
        f"data: Faker dates {FIRST_DAY}..{LAST_DAY} written by Babel in {len(LOCALES)} "
        f"locales ({', '.join(LOCALES)}) x {len(FORMATS)} formats = {len(pairs)} styles; "
        f"{len(train_set)} train, {len(test)} test (test days never in train)"
    )
    amb = ambiguous_inputs(train_set + test)
    print(f"  inputs with more than one answer: {amb}")
    vocab = char_vocabulary([s for s, _ in train_set])
    src_lens = [len(s) for s, _ in train_set]
    print(
        f"vocabulary: {len(vocab)} input characters, {len(TARGET_TOKENS)} output tokens; "
        f"inputs {min(src_lens)}-{max(src_lens)} characters, outputs 10"
    )
    for s, t in train_set[:3]:
        print(f"  {s!r} -> {t}")
    if args.reverse_source:
        print("  inputs are fed backwards (--reverse-source)")

    src = [encode_source(vocab, s, args.reverse_source) for s, _ in train_set]
    tgt = [encode_target(t) for _, t in train_set]
    model = Seq2Seq(
        len(vocab),
        len(TARGET_TOKENS),
        cell="lstm",
        bos_id=BOS,
        eos_id=EOS,
        rng=rng,
        **model_options(args),
    )
    print(
        f"model: LSTM encoder-decoder without attention, hidden {args.hidden_size}, "
        f"embedding {args.embedding_dim}, {model.num_parameters():,} parameters"
    )

    def step(m, idx):
        x, lengths = pad_sequences([src[i] for i in idx], PAD)
        y = np.array([tgt[i] for i in idx]).T  # (10, N): every target has ten characters
        N = y.shape[1]
        tgt_in = np.vstack([np.full((1, N), BOS), y])  # (11, N)
        tgt_out = np.vstack([y, np.full((1, N), EOS)])
        logits, cache = m.forward(x, tgt_in, src_lengths=lengths)
        loss, dlogits = cross_entropy(logits, tgt_out)
        m.backward(dlogits, cache)
        return loss

    task = BatchTask(len(src), args.batch_size, np.random.default_rng([args.seed, 1]), step)
    config = TRAINING.config(args, warmup_steps=min(200, args.steps // 10))
    batch = min(args.batch_size, len(src))
    print(TRAINING.describe(config, batch) + ", teacher forcing")
    _, seconds = fit(model, task, config)

    test_src = [encode_source(vocab, s, args.reverse_source) for s, _ in test]
    answers = [t for _, t in test]
    start = time.perf_counter()
    greedy = translate(model, test_src)
    greedy_s = time.perf_counter() - start
    rule = [rule_baseline(s) for s, _ in test]
    common = Counter(t for _, t in train_set).most_common(1)[0][0]
    results = {
        "train_seconds": seconds,
        "rule": exact_match(rule, answers),
        "most_common": exact_match([common] * len(test), answers),
        "greedy": exact_match(greedy, answers),
        "beam": None,
    }

    rows = [
        ("baseline, hand-written rule", percent(results["rule"]), ""),
        (
            "baseline, most common answer",
            percent(results["most_common"]),
            "(no test day is in training)",
        ),
        ("encoder-decoder, greedy", percent(results["greedy"]), f"({greedy_s:.1f} s)"),
    ]
    n_beam = len(test) if args.beam_examples is None else min(args.beam_examples, len(test))
    if n_beam:
        start = time.perf_counter()
        beamed = translate(model, test_src[:n_beam], beam=args.beam)
        beam_s = time.perf_counter() - start
        results["beam"] = exact_match(beamed, answers[:n_beam])
        which = "" if n_beam == len(test) else f", first {n_beam} dates"
        rows.append(
            (
                f"encoder-decoder, beam search (width {args.beam})",
                percent(results["beam"]),
                f"({beam_s:.1f} s{which})",
            )
        )
        if which:
            rows.append(
                (
                    f"encoder-decoder, greedy{which}",
                    percent(exact_match(greedy[:n_beam], answers[:n_beam])),
                    "",
                )
            )
    print_scores(f"exact match on {len(test)} held-out dates", rows, notes=True)
    wrong = [k for k in range(len(test)) if greedy[k] != answers[k]]
    right = [k for k in range(len(test)) if greedy[k] == answers[k]]
    shown = wrong[: args.show // 2]
    shown += right[: args.show - len(shown)]
    for k in shown:
        mark = "ok" if greedy[k] == answers[k] else f"wrong, truth {answers[k]}"
        print(f"  {test[k][0]!r:>36} -> {greedy[k]}   ({mark})")
    return results


run, main = entry_points(build_parser, body)
