"""The date-translation app: the rule baseline, the encodings, the generated data (Faker and
Babel, skipped without them), a tiny end-to-end run, and its error messages."""

from __future__ import annotations

import datetime
import sys

import numpy as np
import pytest

from rnnkit.apps import dates
from rnnkit.apps.datasets import DataError
from rnnkit.cli import main as cli_main
from rnnkit.models import Seq2Seq


def run_app(name, argv):
    """``rnnkit app NAME ARGV``, as the command line runs it: errors become one line."""
    return cli_main(["app", name, *argv])


# ---------------------------------------------------------------- without Faker and Babel


@pytest.mark.parametrize(
    "text, iso",
    [
        ("4 March 2021", "2021-03-04"),
        ("March 4, 2021", "2021-03-04"),
        ("Thursday, 4 March 2021", "2021-03-04"),
        ("04.03.21", "2021-03-04"),
        ("04/03/1961", "1961-03-04"),
        ("2021-03-04", "2021-03-04"),
        ("4 mars 2021", "2021-03-04"),  # French "mars" happens to start like "March"
        ("3/4/21", "2021-04-03"),  # day first: wrong for US dates, as a simple rule is
        ("31.12.49", "2049-12-31"),
        ("1.1.50", "1950-01-01"),
        ("4. März 2021", ""),  # not an English month name
        ("31.02.2021", ""),  # no such day
        ("yesterday", ""),
    ],
)
def test_rule_baseline(text, iso):
    assert dates.rule_baseline(text) == iso


def test_target_encoding_round_trips():
    ids = dates.encode_target("2021-03-04")
    assert len(ids) == 10 and min(ids) > dates.EOS
    assert dates.decode_target([dates.BOS, *ids, dates.EOS, dates.PAD]) == "2021-03-04"


def test_translate_decodes_in_evaluation_mode_and_restores_the_mode_on_errors(monkeypatch):
    model = Seq2Seq(5, len(dates.TARGET_TOKENS), 4, bos_id=dates.BOS, eos_id=dates.EOS, rng=0)
    seen = []

    def greedy_decode(src, lengths, max_len):
        seen.append(model.training)
        return [dates.encode_target("2021-03-04") + [dates.EOS]] * src.shape[1], None

    monkeypatch.setattr(model, "greedy_decode", greedy_decode)
    assert dates.translate(model, [[2, 3], [4]]) == ["2021-03-04"] * 2
    assert seen == [False] and model.training

    def broken(src, lengths, max_len):
        raise RuntimeError("decoder failed")

    monkeypatch.setattr(model, "greedy_decode", broken)
    with pytest.raises(RuntimeError):
        dates.translate(model, [[2, 3]])
    assert model.training  # back in training mode, dropout on for the next steps
    model.eval()
    monkeypatch.setattr(model, "greedy_decode", greedy_decode)
    dates.translate(model, [[2]])
    assert not model.training  # a model in evaluation mode stays there


def test_char_vocab_reads_unseen_characters_as_unk_and_can_reverse():
    vocab = dates.char_vocabulary(["ab", "bc"])
    assert vocab.tokens == ["<pad>", "<unk>", "a", "b", "c"]
    assert dates.encode_source(vocab, "abz") == [2, 3, 1]
    assert dates.encode_source(vocab, "abz", reverse=True) == [1, 3, 2]


def test_ambiguous_inputs():
    assert dates.ambiguous_inputs([("3/4/21", "2021-03-04"), ("3/4/21", "2021-03-04")]) == 0
    assert dates.ambiguous_inputs([("3/4/21", "2021-03-04"), ("3/4/21", "2021-04-03")]) == 1


def test_spanish_short_format_is_left_out():
    pairs = dates.formats()
    assert ("es_ES", "short") not in pairs and ("en_US", "short") in pairs
    assert len(pairs) == len(dates.LOCALES) * len(dates.FORMATS) - 1
    assert not any("Y" in f for _, f in pairs)  # the week-year letter, wrong near New Year


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("rnnkit app dates: error: ")
    return lines[0]


@pytest.mark.parametrize("missing", ["faker", "babel"])
def test_a_missing_dependency_says_what_to_install(monkeypatch, capsys, missing):
    monkeypatch.setitem(sys.modules, missing, None)  # importing it now raises ImportError
    if missing == "babel":
        monkeypatch.setitem(sys.modules, "babel.dates", None)
    assert run_app("dates", ["--steps", "1"]) == 2
    assert "pip install faker babel" in _one_error_line(capsys)
    with pytest.raises(DataError, match="pip install faker babel"):  # the error every app shares
        dates.DateMaker(np.random.default_rng(0))


def test_bad_arguments_and_help(capsys):
    assert run_app("dates", ["--hidden-size", "0"]) == 2
    assert "argument --hidden-size: must be >= 1, got 0" in _one_error_line(capsys)
    assert run_app("dates", ["--steps", "many"]) == 2
    assert "expected a whole number, got 'many'" in _one_error_line(capsys)
    assert run_app("dates", ["--beam-examples", "-1"]) == 2
    assert "argument --beam-examples: must be >= 0" in _one_error_line(capsys)
    assert run_app("dates", ["--lr", "0"]) == 2
    assert "argument --lr: must be > 0" in _one_error_line(capsys)
    assert run_app("dates", ["--help"]) == 0
    out = capsys.readouterr().out
    assert "rnnkit app dates" in out
    assert "(default: 4000)" in out  # the shared parser shows each option's default
    assert "\n\nThe score is exact match" in out  # the description keeps its paragraphs


# ---------------------------------------------------------------- with Faker and Babel


@pytest.fixture
def babel_dates():
    pytest.importorskip("faker")
    return pytest.importorskip("babel.dates")


def test_no_format_writes_a_late_december_day_in_the_next_year(babel_dates):
    # 2024-12-30 falls in week 1 of 2025: the pattern letter Y would print 2025
    day = datetime.date(2024, 12, 30)
    for locale, fmt in dates.formats():
        text = babel_dates.format_date(day, fmt, locale=locale)
        assert "2025" not in text and "25" not in text.replace("2024", ""), (locale, fmt, text)


def test_generated_data_is_held_out_by_day_unambiguous_and_seeded(babel_dates):
    import numpy as np

    train_set, test = dates.DateMaker(np.random.default_rng(3)).make(1500, 300)
    assert len(train_set) == 1500 and len(test) == 300
    assert not {t for _, t in train_set} & {t for _, t in test}
    assert dates.ambiguous_inputs(train_set + test) == 0
    for text, iso in train_set + test:
        day = datetime.date.fromisoformat(iso)
        assert dates.FIRST_DAY <= day <= dates.LAST_DAY and text
    again = dates.DateMaker(np.random.default_rng(3)).make(1500, 300)
    assert again == (train_set, test)


def test_every_style_reads_back_by_hand_for_one_day(babel_dates):
    # each style keeps the day, month and year recoverable (a two-digit year names one century)
    day = datetime.date(1987, 11, 23)
    for locale, fmt in dates.formats():
        text = babel_dates.format_date(day, fmt, locale=locale)
        assert "23" in text and ("1987" in text or "87" in text), (locale, fmt, text)


def test_app_runs_end_to_end_on_tiny_data(babel_dates, capsys):
    argv = [
        "--num-train",
        "200",
        "--num-test",
        "40",
        "--steps",
        "30",
        "--hidden-size",
        "16",
        "--embedding-dim",
        "8",
        "--beam-examples",
        "10",
        "--show",
        "2",
    ]
    result = dates.run(argv)
    out = capsys.readouterr().out
    assert "5 locales" in out and "exact match on 40 held-out dates" in out
    assert 0.5 < result["rule"] < 1.0
    assert result["most_common"] == 0.0
    assert 0.0 <= result["greedy"] <= 1.0 and result["beam"] is not None
    assert dates.run(argv)["greedy"] == result["greedy"]  # seeded


def test_reversed_source_runs(babel_dates, capsys):
    argv = [
        "--num-train",
        "100",
        "--num-test",
        "20",
        "--steps",
        "5",
        "--hidden-size",
        "8",
        "--embedding-dim",
        "4",
        "--beam-examples",
        "0",
        "--reverse-source",
    ]
    assert dates.run(argv)["beam"] is None
    assert "fed backwards" in capsys.readouterr().out
