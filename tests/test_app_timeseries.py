"""rnnkit app vowels and rnnkit app activity: the .ts reader, 1-NN DTW against a plain loop,
the window chosen by leave-one-out, fetching from a fake aeon wheel, and tiny end-to-end runs
on generated .ts files (the archive sets themselves are never copied into the tests)."""

from __future__ import annotations

import re
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

from rnnkit.apps import activity, datasets, timeseries, vowels
from rnnkit.apps.datasets import DataError
from rnnkit.cli import main as cli_main


def write_ts(path: Path, series, labels, classes, problem="Tiny") -> Path:
    """A .ts file in the archive's format: comments, headers, then dim0:dim1:...:label."""
    lines = ["#made by the tests", f"@problemName {problem}", "@timeStamps false"]
    lines += [f"@univariate {'true' if series[0].shape[1] == 1 else 'false'}"]
    lines += [f"@classLabel true {' '.join(classes)}", "@data"]
    for s, y in zip(series, labels):
        dims = [",".join(f"{v:.6f}" for v in s[:, d]) for d in range(s.shape[1])]
        lines.append(":".join(dims) + f":{y}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def shapes(rng, n, channels=2, lengths=(8, 14)):
    """Two classes told apart by shape, not level: a rising or a falling ramp, jittered."""
    series, labels = [], []
    for k in range(n):
        T = int(rng.integers(*lengths))
        ramp = np.linspace(-1, 1, T)[:, None] * (1 if k % 2 else -1)
        series.append(ramp + 0.2 * rng.standard_normal((T, channels)))
        labels.append("up" if k % 2 else "down")
    return series, labels


def tiny_problem(folder: Path, problem: str, rng, channels=2, lengths=(8, 14)) -> Path:
    for split, n in (("TRAIN", 24), ("TEST", 16)):
        s, y = shapes(rng, n, channels, lengths)
        write_ts(folder / f"{problem}_{split}.ts", s, y, ["down", "up"], problem)
    return folder


def _dtw_loop(a, b, w=None):
    Ta, Tb = len(a), len(b)
    band = np.inf if w is None else max(w, abs(Ta - Tb))
    C = np.full((Ta + 1, Tb + 1), np.inf)
    C[0, 0] = 0
    for i in range(1, Ta + 1):
        for j in range(1, Tb + 1):
            if abs(i - j) <= band:
                c = ((a[i - 1] - b[j - 1]) ** 2).sum()
                C[i, j] = c + min(C[i - 1, j], C[i, j - 1], C[i - 1, j - 1])
    return C[Ta, Tb]


# ---------------------------------------------------------------- reading


def test_parse_ts_reads_variable_lengths_and_the_class_order(tmp_path):
    text = "#c\n@problemName X\n@classLabel true b a\n@data\n1,2,3:4,5,6:a\n7,8:9,10:b\n"
    series, labels, classes = timeseries.parse_ts(text)
    assert classes == ["b", "a"] and labels == ["a", "b"]
    np.testing.assert_array_equal(series[0], [[1, 4], [2, 5], [3, 6]])
    assert series[1].shape == (2, 2)


@pytest.mark.parametrize(
    "text, match",
    [
        ("@data\n1,2:x:a\n", "must be numbers"),
        ("@data\n1,2:3:a\n", "dimensions of one length"),
        ("@data\n1,?,3:a\n", "missing values"),
        ("@classLabel true a\n", "no cases"),
        ("hello\n@data\n", "line 1: expected an @ header"),
    ],
)
def test_parse_ts_errors_name_the_line(text, match):
    with pytest.raises(DataError, match=match):
        timeseries.parse_ts(text, "f.ts")


def test_load_problem_numbers_the_labels_in_the_training_order(tmp_path):
    folder = tiny_problem(tmp_path, "Tiny", np.random.default_rng(0))
    train, test = timeseries.load_problem(folder, "Tiny", "vowels")
    assert train.classes == ["down", "up"] and set(train.labels) == {0, 1}
    assert len(train.series) == 24 and len(test.series) == 16
    with pytest.raises(DataError, match="rnnkit data get vowels"):
        timeseries.load_problem(tmp_path / "nowhere", "Tiny", "vowels")


# ---------------------------------------------------------------- DTW


@pytest.mark.parametrize("window", [None, 0, 2])
def test_dtw_equals_a_plain_loop(window):
    rng = np.random.default_rng(1)
    A = [rng.standard_normal((int(rng.integers(3, 10)), 3)) for _ in range(5)]
    B = [rng.standard_normal((int(rng.integers(3, 10)), 3)) for _ in range(4)]
    want = np.array([[_dtw_loop(a, b, window) for b in B] for a in A])
    np.testing.assert_allclose(timeseries.dtw_distances(A, B, window), want, rtol=1e-12)


def test_dtw_ignores_a_shift_that_euclid_pays_for():
    t = np.linspace(0, 6, 60)
    a, shifted = np.sin(t)[:, None], np.sin(t - 0.5)[:, None]
    d_dtw = timeseries.dtw_distances([a], [shifted])[0, 0]
    d_euclid = timeseries.dtw_distances([a], [shifted], 0)[0, 0]
    assert d_euclid == pytest.approx(((a - shifted) ** 2).sum())
    assert d_dtw < 0.2 * d_euclid


def test_window_chosen_by_leave_one_out_and_the_baselines():
    rng = np.random.default_rng(2)
    series, labels = shapes(rng, 20, lengths=(12, 13))
    y = np.array([int(lab == "up") for lab in labels])
    window, acc = timeseries.choose_window(series, y, [0, 0.25])
    assert window in (0, 3) and acc == 1.0
    split = timeseries.Split(series, y, ["down", "up"])
    scores = timeseries.nn_baselines(split, split, [0, 0.25])
    assert scores.dtw_full == 1.0 and scores.euclidean == 1.0  # equal lengths: Euclid too


# ---------------------------------------------------------------- fetching


def test_get_data_keeps_only_the_ts_files_of_the_wheel(tmp_path, monkeypatch, durable_writes):
    calls = []

    def fake_pip(cmd, **kwargs):
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        with zipfile.ZipFile(dest / "aeon-1.6.0-py3-none-any.whl", "w") as z:
            for p in ("GunPoint", "BasicMotions", "JapaneseVowels"):
                for split in ("TRAIN", "TEST"):
                    z.writestr(f"aeon/datasets/data/{p}/{p}_{split}.ts", f"{p} {split}")
                z.writestr(f"aeon/datasets/data/{p}/{p}_TRAIN.arff", "not wanted")
            z.writestr("aeon/__init__.py", "")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(datasets.subprocess, "run", fake_pip)
    folder = activity.get_data(tmp_path)
    assert folder == tmp_path / "ucr" and "aeon==1.6.0" in calls[0]
    assert calls[0][1:6] == ["-m", "pip", "download", "--no-deps", "-q"]
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert files == [
        "BasicMotions/BasicMotions_TEST.ts",
        "BasicMotions/BasicMotions_TRAIN.ts",
        "GunPoint/GunPoint_TEST.ts",
        "GunPoint/GunPoint_TRAIN.ts",
        "NOTICE",
    ]
    assert (folder / "GunPoint" / "GunPoint_TEST.ts").read_text() == "GunPoint TEST"
    assert set(durable_writes) == {folder / f for f in files}  # each written atomically
    assert vowels.get_data(tmp_path) == folder / "JapaneseVowels" and len(calls) == 2
    activity.get_data(tmp_path)
    assert len(calls) == 2  # already there: nothing downloaded


def test_a_failed_download_is_one_clear_error(tmp_path, monkeypatch, capsys):
    def failing(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution\n")

    monkeypatch.setattr(datasets.subprocess, "run", failing)
    monkeypatch.setenv("RNNKIT_DATA", str(tmp_path))
    assert cli_main(["data", "get", "vowels"]) == 2
    err = capsys.readouterr().err
    assert "pip download --no-deps aeon==1.6.0 failed: ERROR: No matching" in err


# ---------------------------------------------------------------- the apps, end to end

FAST = ["--steps", "60", "--hidden-size", "8", "--eval-every", "20", "--batch-size", "8"]


def test_vowels_runs_end_to_end_and_beats_chance(tmp_path, capsys):
    folder = tiny_problem(tmp_path / "JV", "JapaneseVowels", np.random.default_rng(3))
    assert cli_main(["app", "vowels", "--data-dir", str(folder), *FAST]) == 0
    out = capsys.readouterr().out
    assert "24 train / 16 test sequences (the archive's split) of 8-13 steps x 2 channels" in out
    found = dict(re.findall(r"^  (bidirectional GRU|1-NN DTW, full)\s+(\d+\.\d+)%$", out, re.M))
    assert float(found["1-NN DTW, full"]) >= 90 and float(found["bidirectional GRU"]) >= 75
    scores, again = (vowels.run(["--data-dir", str(folder), *FAST]) for _ in range(2))
    scores.pop("train_seconds"), again.pop("train_seconds")
    assert scores == again  # seeded


def test_activity_runs_each_set(tmp_path, capsys):
    rng = np.random.default_rng(4)
    tiny_problem(tmp_path / "GunPoint", "GunPoint", rng, channels=1, lengths=(20, 21))
    tiny_problem(tmp_path / "BasicMotions", "BasicMotions", rng, channels=3, lengths=(10, 11))
    scores = activity.run(["--data-dir", str(tmp_path), *FAST])
    assert set(scores) == {"GunPoint", "BasicMotions"}
    for s in scores.values():
        assert s["euclidean"] is not None and 0 <= s["model"] <= 1
    out = capsys.readouterr().out
    assert "1-NN Euclidean" in out and "GunPoint test accuracy on 16 sequences" in out
    assert cli_main(["app", "activity", "--sets", "Walking"]) == 2
    assert "--sets takes GunPoint and/or BasicMotions" in capsys.readouterr().err


def test_missing_sets_name_the_fetch_command(tmp_path, capsys):
    assert cli_main(["app", "activity", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rnnkit data get activity" in err
    assert cli_main(["app", "vowels", "--windows", "0,2"]) == 2
    assert "--windows takes fractions" in capsys.readouterr().err
