"""The music app: the hand-written MIDI writer, chorale files and tokens, and the app run end to
end on a tiny hand-made chorale file (music21 is needed only to parse the written file back)."""

from __future__ import annotations

import json
import os
import sys

import pytest

from rnnkit.apps import music
from rnnkit.apps.datasets import DataError
from rnnkit.cli import main as cli_main


def run_app(name, argv):
    """``rnnkit app NAME ARGV``, as the command line runs it: errors become one line."""
    return cli_main(["app", name, *argv])


def _read_vlq(data: bytes, i: int) -> tuple[int, int]:
    value = 0
    while True:
        byte = data[i]
        i += 1
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            return value, i


def parse_smf(data: bytes) -> tuple[int, list[tuple[int, int, int | None]]]:
    """A minimal reader of format-0 files: (ticks per quarter, [(on tick, off tick, pitch)])."""
    assert data[:4] == b"MThd"
    assert int.from_bytes(data[4:8], "big") == 6  # header length
    assert int.from_bytes(data[8:10], "big") == 0  # format 0
    assert int.from_bytes(data[10:12], "big") == 1  # one track
    division = int.from_bytes(data[12:14], "big")
    assert data[14:18] == b"MTrk"
    length = int.from_bytes(data[18:22], "big")
    assert len(data) == 22 + length  # the track length covers exactly the rest of the file
    track = data[22:]
    i, now, on, notes, ended = 0, 0, {}, [], False
    while i < len(track):
        assert not ended, "events after the end of track"
        delta, i = _read_vlq(track, i)
        now += delta
        status = track[i]
        if status == 0xFF:
            kind = track[i + 1]
            size, i = _read_vlq(track, i + 2)
            i += size
            ended = kind == 0x2F
        elif status & 0xF0 == 0x90:
            on[track[i + 1]] = now
            i += 3
        elif status & 0xF0 == 0x80:
            notes.append((on.pop(track[i + 1]), now, track[i + 1]))
            i += 3
        elif status & 0xF0 == 0xC0:
            i += 2
        else:
            raise AssertionError(f"unexpected status byte {status:#x}")
    assert ended and not on
    return division, notes


# ---------------------------------------------------------------- MIDI


@pytest.mark.parametrize(
    "n, expected",
    [
        (0, b"\x00"),
        (0x40, b"\x40"),
        (0x7F, b"\x7f"),
        (0x80, b"\x81\x00"),
        (0x3FFF, b"\xff\x7f"),
        (0x200000, b"\x81\x80\x80\x00"),
        (0x0FFFFFFF, b"\xff\xff\xff\x7f"),
    ],
)
def test_variable_length_quantities_match_the_smf_spec(n, expected):
    assert music._vlq(n) == expected


def test_midi_file_header_track_length_and_note_times():
    notes = [(60, 1.0), (62, 0.5), (None, 1.5), (64, 2.0), (None, 1.0)]
    data = music.midi_bytes(notes, tempo_bpm=90, ticks_per_quarter=480)
    assert data[:14] == b"MThd\x00\x00\x00\x06\x00\x00\x00\x01\x01\xe0"
    assert data.endswith(b"\xff\x2f\x00")
    division, parsed = parse_smf(data)
    assert division == 480
    assert parsed == [(0, 480, 60), (480, 720, 62), (1440, 2400, 64)]
    assert b"\xff\x51\x03" + round(60e6 / 90).to_bytes(3, "big") in data  # the tempo


def test_write_midi_writes_the_same_bytes(tmp_path):
    notes = [(67, 1.0), (69, 0.25)]
    path = music.write_midi(tmp_path / "x.mid", notes)
    assert path.read_bytes() == music.midi_bytes(notes)


def test_write_midi_replaces_a_file_atomically_never_in_place(tmp_path, durable_writes):
    old = tmp_path / "x.mid"
    old.write_bytes(b"the user's earlier melody")
    os.link(old, tmp_path / "backup.mid")  # a second name for the old file's contents
    notes = [(67, 1.0), (69, 0.25)]
    music.write_midi(old, notes)
    assert old.read_bytes() == music.midi_bytes(notes)
    assert (tmp_path / "backup.mid").read_bytes() == b"the user's earlier melody"
    assert durable_writes == [old]  # written to a temporary file, fsynced, then renamed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup.mid", "x.mid"]


def test_a_failed_midi_write_leaves_the_old_file_whole(tmp_path, monkeypatch):
    old = tmp_path / "x.mid"
    old.write_bytes(b"old")

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        music.write_midi(old, [(60, 1.0)])
    assert old.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.mid"]  # no temporary file left over


def test_midi_bad_input():
    with pytest.raises(ValueError, match="pitch"):
        music.midi_bytes([(128, 1.0)])
    with pytest.raises(ValueError, match="tempo"):
        music.midi_bytes([(60, 1.0)], tempo_bpm=0)
    with pytest.raises(ValueError, match="quarters"):
        music.midi_bytes([(60, -1.0)])


def test_music21_reads_the_file_back(tmp_path):
    music21 = pytest.importorskip("music21")
    notes = [(60, 1.0), (None, 1.0), (67, 2.0), (72, 0.5)]
    path = music.write_midi(tmp_path / "x.mid", notes, tempo_bpm=100)
    score = music21.converter.parse(str(path))
    got = [(n.pitch.midi, float(n.quarterLength)) for n in score.flatten().notes]
    assert got == [(60, 1.0), (67, 2.0), (72, 0.5)]


# ---------------------------------------------------------------- tokens


def test_transpose_to_c_major_or_a_minor():
    assert music.transpose_shift(0, "major") == 0
    assert music.transpose_shift(7, "major") == 5  # G up to C
    assert music.transpose_shift(2, "major") == -2  # D down to C
    assert music.transpose_shift(9, "minor") == 0
    assert music.transpose_shift(4, "minor") == 5  # E minor up to A minor
    assert all(
        -6 <= music.transpose_shift(t, m) <= 5 for t in range(12) for m in ("major", "minor")
    )


def test_tokens_round_trip():
    chorale = {"tonic": 7, "mode": "major", "notes": [[67, 1.0], [None, 0.5], [74, 1.5]]}
    assert music.to_tokens(chorale, transpose=False) == ["67:1", "rest:0.5", "74:1.5"]
    tokens = music.to_tokens(chorale, transpose=True)
    assert tokens == ["72:1", "rest:0.5", "79:1.5"]
    assert [music.from_token(t) for t in tokens] == [(72, 1.0), (None, 0.5), (79, 1.5)]
    assert music.from_token("<eos>") is None
    assert music.note_name(60) == "C4" and music.note_name(70) == "Bb4"
    assert music.note_name(None) == "rest"


# ---------------------------------------------------------------- the app on a tiny file

PHRASES = [[60, 62, 64, 65, 67], [67, 65, 64, 62, 60], [64, 64, 65, 67, 67], [72, 71, 69, 67]]


def tiny_chorale_file(path, num=12):
    chorales = []
    for k in range(num):
        notes = []
        for j in range(3):
            notes += [[p, 1.0] for p in PHRASES[(k + j) % len(PHRASES)]]
            notes.append([None, 1.0] if j % 2 else [60, 2.0])
        chorales.append({"title": f"tiny {k}", "tonic": 0, "mode": "major", "notes": notes})
    path.write_text(json.dumps({"format": music.FORMAT, "source": "test", "chorales": chorales}))
    return path


def test_app_runs_end_to_end_on_a_tiny_file(tmp_path, capsys):
    notes = tiny_chorale_file(tmp_path / "tiny.json")
    midi = tmp_path / "out.mid"
    argv = [
        "--notes",
        str(notes),
        "--steps",
        "60",
        "--hidden-size",
        "16",
        "--embedding-dim",
        "8",
        "--batch-size",
        "4",
        "--eval-every",
        "20",
        "--lr",
        "0.01",
        "--midi",
        str(midi),
    ]
    result = music.run(argv)
    out = capsys.readouterr().out
    assert "12 chorale soprano lines" in out and "unigram" in out
    assert result["lm_nll"] < result["unigram_nll"]  # the phrases are easy to predict
    assert result["midi"] == midi
    division, parsed = parse_smf(midi.read_bytes())
    assert division == 480 and parsed
    # the same seed gives the same scores and the same melody
    again = music.run(argv[:-1] + [str(tmp_path / "again.mid")])
    assert again["lm_nll"] == result["lm_nll"]
    assert (tmp_path / "again.mid").read_bytes() == midi.read_bytes()


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("rnnkit app music: error: ")
    return lines[0]


def test_get_data_writes_the_chorale_file_atomically(tmp_path, monkeypatch, durable_writes):
    chorales = [{"title": "t", "tonic": 0, "mode": "major", "notes": [[60, 1.0]]}]
    monkeypatch.setattr(music, "extract_chorales", lambda: (chorales, "10.5.1"))
    path = music.get_data(tmp_path)
    assert path == tmp_path / music.CACHE_FILE and durable_writes == [path]
    assert music.load_chorales(path) == chorales
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_missing_music21_and_cache_says_what_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RNNKIT_DATA", str(tmp_path / "empty"))
    monkeypatch.setitem(sys.modules, "music21", None)  # import music21 now raises ImportError
    assert run_app("music", ["--steps", "1"]) == 2
    line = _one_error_line(capsys)
    assert "pip install music21==10.5.1 && rnnkit data get music" in line
    with pytest.raises(DataError, match="pip install"):
        music.get_data(tmp_path / "empty")
    with pytest.raises(DataError, match="pip install"):  # the error every app shares
        music.extract_chorales()


@pytest.mark.parametrize(
    "content, expected",
    [
        ("{not json", "not a chorale file"),
        ('{"format": "other"}', "rnnkit data get music"),
        ('{"format": "rnnkit-chorales-1", "chorales": [{"notes": [[60, 0]]}]}', "malformed"),
    ],
)
def test_bad_chorale_files(tmp_path, capsys, content, expected):
    path = tmp_path / "bad.json"
    path.write_text(content)
    assert run_app("music", ["--notes", str(path)]) == 2
    assert expected in _one_error_line(capsys)


def test_bad_arguments_and_help(tmp_path, capsys):
    assert run_app("music", ["--steps", "0"]) == 2
    assert "argument --steps: must be >= 1, got 0" in _one_error_line(capsys)
    assert run_app("music", ["--no-such-flag"]) == 2
    assert "unrecognized arguments" in _one_error_line(capsys)
    assert run_app("music", ["--notes", str(tmp_path / "missing.json")]) == 2
    assert "no such file" in _one_error_line(capsys)
    assert run_app("music", ["--val-fraction", "0.5", "--test-fraction", "0.5"]) == 2
    assert "sum to less than 1" in _one_error_line(capsys)
    assert run_app("music", ["--temperature", "0"]) == 2
    assert "argument --temperature: must be > 0" in _one_error_line(capsys)
    assert run_app("music", ["--help"]) == 0
    out = capsys.readouterr().out
    assert "rnnkit app music" in out
    assert "(default: 3000)" in out  # the shared parser shows each option's default
    assert "\n\nData: the 371 four-part chorales" in out  # the description keeps its paragraphs
