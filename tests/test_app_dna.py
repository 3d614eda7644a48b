"""rnnkit app dna: decoding mlbench's DNA.rda, the k-mer baseline and the app, offline."""

from __future__ import annotations

import io
import os
import re
import stat
import sys
import tarfile

import numpy as np
import pytest

from rnnkit.apps import data_cache, dna
from rnnkit.apps.baselines import (
    LogisticRegression,
    accuracy,
    kmer_counts,
    kmer_names,
)
from rnnkit.apps.datasets import DataError
from rnnkit.cli import main as cli_main


def run_app(name, argv):
    """``rnnkit app NAME ARGV``, as the command line runs it: errors become one line."""
    return cli_main(["app", name, *argv])


CODE = {"A": (1, 0, 0), "C": (0, 1, 0), "G": (0, 0, 1), "T": (0, 0, 0)}


def encode(seqs: list[str]) -> np.ndarray:
    """The inverse of decode_bits, written out by hand: 3 indicator columns per base."""
    return np.array([[bit for base in s for bit in CODE[base]] for s in seqs])


def junctions(rng: np.random.Generator, n: int) -> tuple[list[str], list[str]]:
    """60-base sequences with a planted donor (EI), acceptor (IE) or neither (N) signal."""
    seqs, classes = [], []
    for k in range(n):
        s = list(rng.choice(list("ACGT"), 60))
        cls = ("EI", "IE", "N")[k % 3]
        if cls == "EI":
            s[27:36] = "CAGGTAAGT"  # exon ...CAG | GTAAGT intron
        elif cls == "IE":
            s[18:30] = "TTTTTTTCCCAG"  # polypyrimidine tract, then AG | exon
        else:
            s[28:32] = "CCCC"
        seqs.append("".join(s))
        classes.append(cls)
    return seqs, classes


# ---------------------------------------------------------------- decoding


def test_decode_bits_by_hand():
    bits = np.array([[1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 1, 1, 0, 0, 1, 0, 0]])
    assert dna.decode_bits(bits) == ["ACGT", "TGAA"]
    seqs = ["GATTACA", "CCGGTTAA"[:7]]
    assert dna.decode_bits(encode(seqs)) == seqs


def test_decode_bits_refuses_unknown_patterns():
    bits = encode(["ACGT"])
    bits[0, 6:9] = (1, 1, 0)  # base 3 reads 110: no base has that code
    with pytest.raises(DataError, match=r"sequence 1, base 3"):
        dna.decode_bits(bits)
    with pytest.raises(DataError, match="3 indicator columns"):
        dna.decode_bits(np.zeros((2, 7)))


def test_consensus_checks_gt_and_ag_at_the_junction():
    seqs, classes = junctions(np.random.default_rng(0), 30)
    check = dna.consensus(seqs, classes)
    assert check == {"EI_GT": 1.0, "IE_AG": 1.0}
    # a decoding with G and T swapped breaks the rule
    swapped = [s.translate(str.maketrans("GT", "TG")) for s in seqs]
    assert dna.consensus(swapped, classes)["EI_GT"] == 0.0


def test_one_hot_and_positional_features():
    x, lengths = dna.one_hot(["ACGT", "TT"])
    assert x.shape == (4, 2, 4) and lengths.tolist() == [4, 2]
    np.testing.assert_array_equal(x[:, 0], np.eye(4))
    np.testing.assert_array_equal(x[:, 1], [[0, 0, 0, 1], [0, 0, 0, 1], [0] * 4, [0] * 4])
    P = dna.positional_features(["AC", "GT"])
    np.testing.assert_array_equal(P, [[1, 0, 0, 0, 0, 1, 0, 0], [0, 0, 1, 0, 0, 0, 0, 1]])


# ---------------------------------------------------------------- the k-mer baseline


def test_kmer_counts_by_hand():
    names = kmer_names(2)
    assert len(names) == 16 and names[:5] == ["AA", "AC", "AG", "AT", "CA"]
    X = kmer_counts(["AACGT", "AANAA", "A"], 2)
    row = dict(zip(names, X[0]))
    assert {k: v for k, v in row.items() if v} == {"AA": 1, "AC": 1, "CG": 1, "GT": 1}
    assert X[1, names.index("AA")] == 2 and X[1].sum() == 2  # windows with N are skipped
    assert X[2].sum() == 0  # shorter than k
    np.testing.assert_array_equal(kmer_counts(["GATTACA"], 1), [[3, 1, 1, 2]])


def test_kmer_logistic_regression_finds_a_planted_motif():
    rng = np.random.default_rng(0)
    seqs = ["".join(rng.choice(list("ACG"), 30)) for _ in range(100)]
    y = np.arange(100) % 2
    seqs = [s[:10] + "TTT" + s[13:] if c else s for s, c in zip(seqs, y)]  # T only in class 1
    X = kmer_counts(seqs, 3)
    assert accuracy(LogisticRegression().fit(X, y).predict(X), y) == 1.0


# ---------------------------------------------------------------- data files


def test_parse_csv():
    seqs, y = dna.parse_csv("class,sequence\nEI,acgt\n\nn,TTTT\n", "s.csv")
    assert seqs == ["ACGT", "TTTT"] and y.tolist() == [0, 2]
    with pytest.raises(DataError, match="line 2: class must be"):
        dna.parse_csv("class,sequence\nXX,ACGT\n", "s.csv")
    with pytest.raises(DataError, match="line 3: a sequence of A, C, G, T"):
        dna.parse_csv("class,sequence\nEI,ACGT\nIE,ACNT\n", "s.csv")
    with pytest.raises(DataError, match="first line"):
        dna.parse_csv("EI,ACGT\n", "s.csv")


def test_missing_data_names_the_fetch_command(tmp_path, capsys):
    assert run_app("dna", ["--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "`rnnkit data get dna`" in err and "splice.csv" in err


@pytest.fixture
def data_dir(tmp_path):
    seqs, classes = junctions(np.random.default_rng(1), 150)
    folder = tmp_path / "dna"
    folder.mkdir()
    text = "class,sequence\n" + "".join(f"{c},{s}\n" for c, s in zip(classes, seqs))
    (folder / "splice.csv").write_text(text, encoding="utf-8")
    return folder


def test_runs_end_to_end_on_planted_junctions(data_dir, capsys):
    argv = ["--data-dir", str(data_dir), "--hidden-size", "8", "--steps", "150"]
    argv += ["--batch-size", "16", "--eval-every", "50", "--lr", "0.01", "--progress", "none"]
    assert run_app("dna", argv) == 0
    out = capsys.readouterr().out
    assert "data: 150 sequences of 60 bases" in out and "EI 50, IE 50, N 50" in out
    assert "split 108 train / 12 validation / 30 test" in out
    found = dict(re.findall(r"^  (bidirectional GRU|majority class).*?(\d+\.\d+)%$", out, re.M))
    assert float(found["majority class"]) == pytest.approx(100 / 3, abs=0.01)
    assert float(found["bidirectional GRU"]) >= 60.0
    assert "3-mer counts" in out and "one-hot by position" in out and "confusion" in out


def test_encoding_and_errors_flags_reach_the_reader(data_dir, capsys):
    path = data_dir / "splice.csv"
    path.write_bytes(path.read_text(encoding="utf-8").encode("utf-16"))
    argv = ["--data-dir", str(data_dir), "--hidden-size", "4", "--steps", "2"]
    argv += ["--k", "1", "--progress", "none"]
    assert run_app("dna", argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "give the file's encoding with --encoding" in err
    assert run_app("dna", [*argv, "--encoding", "utf-16"]) == 0
    assert "data: 150 sequences of 60 bases" in capsys.readouterr().out
    path.write_bytes(b"class,sequence\nEI,ACGT\xff\n")
    with pytest.raises(DataError, match="line 2: a sequence of A, C, G, T"):
        dna.load_dna(data_dir, errors="replace")  # decoded: the bad byte becomes U+FFFD
    assert run_app("dna", [*argv, "--errors", "replace"]) == 2
    assert "a sequence of A, C, G, T is expected" in capsys.readouterr().err


# ---------------------------------------------------------------- fetching, offline


def _fake_tool(bin_dir, name: str, script: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + script, encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _fake_debian(tmp_path, monkeypatch, needs_update: bool = False):
    """apt-get and dpkg-deb stand-ins: the .deb's file tree holds a (fake) DNA.rda."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in {
            "./usr/lib/R/site-library/mlbench/data/DNA.rda": b"fake rda",
            "./usr/lib/R/site-library/mlbench/data/Zoo.rda": b"other",
        }.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    fs_tar = tmp_path / "fs.tar"
    fs_tar.write_bytes(buf.getvalue())
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    marker = tmp_path / "updated"
    guard = f'[ -e "{marker}" ] || {{ echo "E: Unable to locate package" >&2; exit 100; }}\n'
    _fake_tool(
        bin_dir,
        "apt-get",
        f'if [ "$1" = update ]; then touch "{marker}"; exit 0; fi\n'
        + (guard if needs_update else "")
        + 'echo deb > "r-cran-mlbench_2.1-3-1_amd64.deb"\n',
    )
    _fake_tool(bin_dir, "dpkg-deb", f'cat "{fs_tar}"\n')
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return marker


@pytest.mark.parametrize("needs_update", [False, True])
def test_get_data_decodes_and_caches_a_csv(
    tmp_path, monkeypatch, capsys, durable_writes, needs_update
):
    marker = _fake_debian(tmp_path, monkeypatch, needs_update)
    seqs, classes = junctions(np.random.default_rng(2), 12)
    seen = []

    def fake_read_rda(path):
        seen.append(path.read_bytes())
        return encode(seqs), [c.lower() for c in classes]  # R stores ei / ie / n

    monkeypatch.setattr(dna, "read_rda", fake_read_rda)
    dest = dna.get_data(tmp_path / "cache")
    assert seen == [b"fake rda"]
    assert marker.exists() == needs_update  # apt-get update only when the download failed
    lines = (dest / "splice.csv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "class,sequence" and lines[1] == f"EI,{seqs[0]}" and len(lines) == 13
    assert sorted(p.name for p in dest.iterdir()) == ["NOTICE", "splice.csv"]  # no leftovers
    # both written to a temporary file, fsynced, then renamed into place
    assert sorted(p.name for p in durable_writes if p.parent == dest) == ["NOTICE", "splice.csv"]
    assert "100.0% of EI read GT" in capsys.readouterr().out
    assert dna.load_dna(dest)[0] == seqs


def test_get_data_refuses_a_decoding_that_breaks_gt_ag(tmp_path, monkeypatch):
    _fake_debian(tmp_path, monkeypatch)
    seqs, classes = junctions(np.random.default_rng(2), 12)
    wrong = [s.translate(str.maketrans("GT", "TG")) for s in seqs]
    monkeypatch.setattr(dna, "read_rda", lambda path: (encode(wrong), classes))
    with pytest.raises(DataError, match="GT..AG check"):
        dna.get_data(tmp_path / "cache")
    assert not (tmp_path / "cache" / "dna" / "splice.csv").exists()


def test_get_data_without_apt_get_says_so(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(DataError, match="`apt-get` is not available"):
        dna.get_data(tmp_path / "cache")


def test_read_rda_without_rdata_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "rdata", None)  # import rdata raises ImportError
    with pytest.raises(DataError, match="pip install rdata"):
        dna.read_rda(tmp_path / "DNA.rda")


def test_the_real_set_when_it_is_cached():
    """Only where `rnnkit data get dna` has run: 3,186 sequences, and the GT..AG rule holds."""
    folder = data_cache() / "dna"
    if not (folder / "splice.csv").is_file():
        pytest.skip("the splice-junction set is not in the data cache")
    seqs, y = dna.load_dna(folder)
    assert len(seqs) == 3186 and {len(s) for s in seqs} == {60}
    assert np.bincount(y).tolist() == [767, 765, 1654]
    check = dna.consensus(seqs, [dna.CLASSES[k] for k in y])
    assert check["EI_GT"] > 0.98 and check["IE_AG"] > 0.98
