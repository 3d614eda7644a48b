"""The applications' skeleton: the shared training flags, the score table, the entry points."""

from __future__ import annotations

import argparse

import pytest

from rnnkit.apps import APPS, DATA_APPS, common, load
from rnnkit.apps.datasets import DataError


def parser(**defaults) -> common.AppParser:
    p = common.AppParser(prog="rnnkit app test", description="One line.\n\nTwo paragraphs.")
    common.TrainingFlags(**{"steps": 7, "examples": "items", "lr": 0.1, **defaults}).add_to(p)
    return p


def test_training_flags_map_onto_train_config():
    args = parser(eval_every=5, patience=2).parse_args(["--lr", "0.5", "--optimizer", "sgd"])
    config = common.TrainingFlags.config(args, warmup_steps=2)
    assert (config.steps, config.lr, config.optimizer, config.warmup_steps) == (7, 0.5, "sgd", 2)
    assert (config.eval_every, config.patience, config.seed) == (5, 2, 0)
    assert common.TrainingFlags.config(args, steps=3).steps == 3  # an override, a baseline's own
    no_val = parser().parse_args([])
    assert not hasattr(no_val, "patience")  # no validation set: no early-stopping flags
    assert common.TrainingFlags.config(no_val).eval_every == 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steps", "0"], "argument --steps: must be >= 1, got 0"),
        (["--lr", "-1"], "argument --lr: must be > 0"),
        (["--batch-size", "x"], "expected a whole number, got 'x'"),
        (["--optimizer", "lion"], "invalid choice: 'lion'"),
    ],
)
def test_bad_training_flags_are_one_line_and_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        parser().parse_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and err.startswith("rnnkit app test: error:")


def test_help_shows_defaults_and_keeps_paragraphs(capsys):
    with pytest.raises(SystemExit):
        parser().parse_args(["--help"])
    out = capsys.readouterr().out
    assert "One line.\n\nTwo paragraphs." in out and "(default: 7)" in out


def test_score_table_aligns_labels_scores_and_notes():
    text = common.format_table([("a", "1.00%", "(x)"), ("longer", "100.00%", "(yy)")], notes=True)
    assert text.splitlines() == ["  a         1.00%  (x)", "  longer  100.00%  (yy)"]
    header = common.format_table([("PER", 3)], header=["type", "n"])
    assert header.splitlines() == ["  type  n", "  PER   3"]
    assert common.percent(0.8) == "80.00%" and common.percent(None) == "-"


def test_entry_points_return_scores_and_let_errors_through(capsys):
    def build():
        p = common.AppParser(prog="rnnkit app x")
        p.add_argument("--fail", action="store_true")
        return p

    def body(args: argparse.Namespace) -> dict:
        if args.fail:
            raise DataError("no data")
        print("ran")
        return {"score": 1.0}

    run, main = common.entry_points(build, body)
    assert run([]) == {"score": 1.0} and main([]) == 0
    assert main(["--help"]) == 0 and main(["--bad"]) == 2
    with pytest.raises(DataError):  # the command line turns it into one line and exit 2
        main(["--fail"])


def test_every_app_has_the_skeleton_and_data_apps_fetch():
    for name in APPS:
        module = load(name)
        assert callable(module.main) and callable(module.run) and module.SUMMARY == APPS[name]
        assert hasattr(module, "get_data") == (name in DATA_APPS), name


def test_training_description_names_what_a_batch_holds():
    flags = common.TrainingFlags(steps=7, examples="chorales", eval_every=5, patience=2)
    p = common.AppParser(prog="rnnkit app test")
    flags.add_to(p)
    args = p.parse_args(["--lr-schedule", "constant"])
    text = flags.describe(flags.config(args), batch=4)
    assert text.startswith("training: up to 7 adam steps of 4 chorales, lr 0.003 (constant)")
    assert text.endswith("validation every 5 steps, patience 2")


def test_model_options_read_back_only_the_declared_model_flags():
    p = common.AppParser(prog="rnnkit app test")
    common.add_model_flags(p, hidden=16, embedding=8)
    options = common.model_options(p.parse_args(["--hidden-size", "12"]))
    assert options == {"hidden_size": 12, "embedding_dim": 8}  # no --cell, no --num-layers
    p = common.AppParser(prog="rnnkit app test")
    common.add_model_flags(p, hidden=16, cell="gru", layers=2)
    options = common.model_options(p.parse_args(["--cell", "lstm"]))
    assert options == {"cell": "lstm", "hidden_size": 16, "num_layers": 2}


def test_vocabulary_flags_check_their_values(capsys):
    p = common.AppParser(prog="rnnkit app test")
    common.add_vocabulary_flags(p, min_count=2, word_dropout=0.3, unknown="<unk>")
    args = p.parse_args([])
    assert (args.min_count, args.word_dropout) == (2, 0.3)
    with pytest.raises(SystemExit):
        p.parse_args(["--word-dropout", "1"])
    assert "--word-dropout: must lie in [0, 1)" in capsys.readouterr().err
