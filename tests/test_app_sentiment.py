"""rnnkit app sentiment, its bag-of-words baseline and the fetch helpers, offline."""

from __future__ import annotations

import io
import json
import os
import re
import stat
import tarfile

import numpy as np
import pytest

from rnnkit.apps import sentiment
from rnnkit.apps.baselines import (
    LogisticRegression,
    accuracy,
    count_features,
    fit_best_logistic_regression,
    majority_class,
    stratified_split,
)
from rnnkit.apps.datasets import DataError, extract_members, safe_member_name
from rnnkit.cli import main as cli_main
from rnnkit.models import SequenceClassifier


def run_app(name, argv):
    """``rnnkit app NAME ARGV``, as the command line runs it: errors become one line."""
    return cli_main(["app", name, *argv])


POSITIVE = ["good", "great", "love", "excellent", "nice"]
NEGATIVE = ["bad", "awful", "hate", "poor", "boring"]
FILLER = ["the", "food", "movie", "phone", "was", "really", "quite", "it", "and", "this"]


def tiny_corpus(rng: np.random.Generator, n: int) -> list[tuple[str, int]]:
    """Sentences of filler words with one sentiment word somewhere: label 1 or 0."""
    rows = []
    for k in range(n):
        label = k % 2
        words = list(rng.choice(FILLER, rng.integers(3, 8)))
        words.insert(int(rng.integers(0, len(words) + 1)), rng.choice([NEGATIVE, POSITIVE][label]))
        rows.append((" ".join(words).capitalize() + ".", label))
    return rows


@pytest.fixture
def data_dir(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "sentences"
    folder.mkdir()
    for source in sentiment.SOURCES:
        rows = tiny_corpus(rng, 40)
        text = "".join(f"{s}\t{y}\n" for s, y in rows)
        (folder / f"{source}_labelled.txt").write_text(text, encoding="utf-8")
    return folder


# ---------------------------------------------------------------- metrics and the baseline


def test_accuracy_and_majority_class():
    assert accuracy(np.array([1, 0, 1, 1]), np.array([1, 1, 1, 0])) == 0.5
    assert majority_class(np.array([2, 0, 2, 1, 0, 2])) == 2
    assert majority_class(np.array([1, 0])) == 0  # ties: the smallest id
    with pytest.raises(ValueError):
        accuracy(np.array([1]), np.array([1, 0]))


def test_count_features():
    vocab = {"good": 0, "bad": 1, "movie": 2}
    docs = [["good", "good", "movie"], ["bad", "unseen"], []]
    np.testing.assert_array_equal(count_features(docs, vocab), [[2, 0, 1], [0, 1, 0], [0, 0, 0]])
    np.testing.assert_array_equal(count_features(docs, vocab, binary=True)[0], [1, 0, 1])


def test_logistic_regression_separates_a_separable_set():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 5))
    y = (X @ np.array([2.0, -1.0, 0.5, 0.0, 0.0]) > 0).astype(int)
    model = LogisticRegression(l2=1e-4, steps=500, lr=0.1).fit(X, y)
    assert accuracy(model.predict(X), y) >= 0.98
    # sparse inputs (a bag of words) take the non-zero path and give the same answer
    B = (rng.random((300, 50)) < 0.05).astype(float)
    yb = (B[:, 0] + B[:, 1] > 0).astype(int)
    dense = LogisticRegression(steps=200).fit(B, yb)
    assert accuracy(dense.predict(B), yb) == 1.0
    np.testing.assert_allclose(dense.decision_function(B), B @ dense.weight.T + dense.bias)


def test_best_l2_is_chosen_on_validation():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(120, 3))
    y = (X[:, 0] > 0).astype(int)
    model, val = fit_best_logistic_regression(X[:80], y[:80], X[80:], y[80:], (1e-3, 100.0))
    assert model.l2 == 1e-3 and val >= 0.9


# ---------------------------------------------------------------- data


def test_parse_labelled_lines():
    rows = sentiment.parse_labelled("Great phone!\t1\n\nNot good.\t0\r\n", "x.txt")
    assert rows == [("Great phone!", 1), ("Not good.", 0)]
    with pytest.raises(DataError, match=r"x.txt, line 2: expected"):
        sentiment.parse_labelled("ok\t1\nno label here\n", "x.txt")


def test_words_are_lower_case_tokens():
    assert sentiment.words("Not GOOD, isn't it?") == ["not", "good", ",", "isn't", "it", "?"]


def test_stratified_split_keeps_the_class_balance():
    labels = np.array([0] * 50 + [1] * 30)
    rest, test = stratified_split(labels, 0.2, np.random.default_rng(0))
    assert len(test) == 16 and labels[test].sum() == 6
    assert sorted(np.concatenate([rest, test]).tolist()) == list(range(80))


def test_batches_end_in_eos_and_an_empty_sentence_reads_as_eos():
    ids, lengths = sentiment.batch_ids([[5, 6, 7], [], [8]], eos_id=0)
    np.testing.assert_array_equal(ids, [[5, 0, 8], [6, 0, 0], [7, 0, 0]])
    assert lengths.tolist() == [3, 1, 1]


def test_predict_runs_in_evaluation_mode_and_restores_the_mode_on_errors(monkeypatch):
    model = SequenceClassifier(10, 2, 4, embedding_dim=4, rng=0)
    seen = []

    def predict(ids, lengths):
        seen.append(model.training)
        return np.ones(ids.shape[1], dtype=np.int64)

    monkeypatch.setattr(model, "predict", predict)
    assert sentiment.predict(model, [[1, 2], [3]], eos_id=0).tolist() == [1, 1]
    assert seen == [False] and model.training
    model.eval()
    sentiment.predict(model, [[1]], eos_id=0)
    assert not model.training  # a model in evaluation mode is left there

    def broken(ids, lengths):
        raise RuntimeError("out of memory")

    model.train()
    monkeypatch.setattr(model, "predict", broken)
    with pytest.raises(RuntimeError):
        sentiment.predict(model, [[1, 2]], eos_id=0)
    assert model.training


def test_missing_data_names_the_fetch_command(tmp_path, capsys):
    assert run_app("sentiment", ["--data-dir", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "`rnnkit data get sentiment`" in err


def test_missing_source_file(tmp_path, capsys):
    (tmp_path / "amazon_labelled.txt").write_text("Good.\t1\n", encoding="utf-8")
    assert run_app("sentiment", ["--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "imdb_labelled.txt" in err and "rnnkit data get sentiment" in err


def test_bad_line_is_one_error(tmp_path, capsys):
    (tmp_path / "amazon_labelled.txt").write_text("Good.\t1\nBad.\t7\n", encoding="utf-8")
    assert run_app("sentiment", ["--data-dir", str(tmp_path), "--sources", "amazon"]) == 2
    assert "line 2" in capsys.readouterr().err


def test_runs_end_to_end_on_a_tiny_corpus(data_dir, capsys):
    argv = ["--data-dir", str(data_dir), "--steps", "150", "--hidden-size", "8"]
    argv += ["--embedding-dim", "8", "--batch-size", "16", "--eval-every", "50"]
    argv += ["--progress", "none", "--min-count", "1"]
    assert run_app("sentiment", argv) == 0
    out = capsys.readouterr().out
    assert "data: 120 sentences from amazon, imdb, yelp" in out
    assert "split 86 train / 10 validation / 24 test" in out
    found = dict(re.findall(r"^  (GRU|bag-of-words|majority).*?(\d+\.\d+)%$", out, re.M))
    assert float(found["bag-of-words"]) == 100.0  # one word decides: linearly separable
    assert float(found["majority"]) == 50.0
    assert float(found["GRU"]) >= 75.0
    assert "per source (RNN vs baseline): amazon" in out


def test_encoding_and_errors_flags_reach_the_reader(tmp_path, capsys):
    rows = tiny_corpus(np.random.default_rng(0), 40)
    rows[0] = ("Café was good.", 1)
    text = "".join(f"{s}\t{y}\n" for s, y in rows)
    (tmp_path / "amazon_labelled.txt").write_bytes(text.encode("latin-1"))
    argv = ["--data-dir", str(tmp_path), "--sources", "amazon", "--steps", "2"]
    argv += ["--hidden-size", "4", "--embedding-dim", "4", "--progress", "none"]
    assert run_app("sentiment", argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "give the file's encoding with --encoding" in err
    assert run_app("sentiment", [*argv, "--encoding", "latin-1"]) == 0
    assert "data: 40 sentences from amazon" in capsys.readouterr().out
    assert run_app("sentiment", [*argv, "--errors", "replace"]) == 0
    data = sentiment.load_sentences(tmp_path, ("amazon",), "latin-1")
    assert data.texts[0] == "Café was good."
    data = sentiment.load_sentences(tmp_path, ("amazon",), errors="replace")
    assert data.texts[0] == "Caf\ufffd was good."


# ---------------------------------------------------------------- fetching, offline


def _tarball(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _fake_tool(bin_dir, name: str, script: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + script, encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_get_data_unpacks_the_npm_fixtures(tmp_path, monkeypatch, capsys, durable_writes):
    fixtures = {}
    for source in sentiment.SOURCES:
        items = [{"text": f"A {source}\tgreat\nthing.", "class": 1}, {"text": "Meh.", "class": 0}]
        fixtures[f"package/test/fixtures/{source}.json"] = json.dumps(
            items + [{"text": "", "class": None}]
        ).encode()
    fixtures["package/README.md"] = b"not data"
    tgz = tmp_path / "made.tgz"
    tgz.write_bytes(_tarball(fixtures))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake_tool(bin_dir, "npm", f'cp "{tgz}" sentiment-5.0.2.tgz\necho sentiment-5.0.2.tgz\n')
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    dest = sentiment.get_data(tmp_path / "cache")
    assert dest == tmp_path / "cache" / "sentiment"
    assert sorted(p.name for p in dest.iterdir()) == [
        "NOTICE",
        "amazon_labelled.txt",
        "imdb_labelled.txt",
        "yelp_labelled.txt",
    ]
    text = (dest / "imdb_labelled.txt").read_text(encoding="utf-8")
    assert text == "A imdb great thing.\t1\nMeh.\t0\n"  # tabs and breaks inside become spaces
    assert "CC BY 4.0" in (dest / "NOTICE").read_text(encoding="utf-8")
    # every file is written to a temporary file, fsynced, then renamed into place
    assert sorted(p.name for p in durable_writes if p.parent == dest) == sorted(
        p.name for p in dest.iterdir()
    )
    data = sentiment.load_sentences(dest)
    assert len(data.texts) == 6 and data.labels.tolist() == [1, 0] * 3


def test_get_data_without_npm_says_so(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(DataError, match=r"`npm` is not installed.*Node\.js"):
        sentiment.get_data(tmp_path / "cache")


def test_safe_extraction_refuses_escaping_members(tmp_path):
    for bad in ("../evil.txt", "/etc/evil.txt", "package/../../evil.txt"):
        with pytest.raises(DataError, match="outside"):
            safe_member_name(bad)
    tgz = tmp_path / "bad.tgz"
    tgz.write_bytes(_tarball({"package/ok.txt": b"ok", "../evil.txt": b"x"}))
    with pytest.raises(DataError, match="outside"):
        extract_members(tgz, lambda p: p.name, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()


def test_extraction_skips_links_and_unselected_files(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        link = tarfile.TarInfo("package/link.json")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
        for name in ("package/a.json", "package/b.txt"):
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"{}"))
    tgz = tmp_path / "x.tgz"
    tgz.write_bytes(buf.getvalue())
    out = extract_members(tgz, lambda p: p.name if p.suffix == ".json" else None, tmp_path / "o")
    assert [p.name for p in out] == ["a.json"]
