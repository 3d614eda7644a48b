"""rnnkit report: what it computes, the page a browser shows, and its error messages."""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_allclose

from rnnkit.functional import sigmoid
from rnnkit.gates import gate_slices
from rnnkit.gradflow import stack_forward
from rnnkit.models import LanguageModel
from rnnkit.record import RECORD_NAME, read_record
from rnnkit.report import (
    GATE_FIELDS,
    LSTM_TANH_C,
    SECTIONS,
    TextReading,
    best_units,
    correlations,
    gradient_through_time,
    read_over_text,
    text_properties,
)
from rnnkit.text import Vocabulary

pytest.importorskip("plotly")

CKPT = "checkpoint.safetensors"
ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def rnnkit(cwd, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rnnkit", *map(str, args)],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """A failure the way a user must see it: exit 2, one line on stderr, no traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("rnnkit report: error: "), result.stderr
    return result.stderr


def quoted_text(lines: int = 300) -> str:
    """Lines with quotes and brackets, so that some unit has something to track."""
    rng = random.Random(0)
    words = "the cat sat on a mat and dog ran far up to see it".split()
    out = []
    for _ in range(lines):
        w = [rng.choice(words) for _ in range(6)]
        out.append(f'{w[0]} ({w[1]} {w[2]}) said "{w[3]} {w[4]}" to {w[5]}')
    return "\n".join(out) + "\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two real runs made with ``rnnkit train``: a character stream (LSTM, clipping firing) and
    a two-layer GRU on lines, each with its report."""
    work = tmp_path_factory.mktemp("report")
    (work / "quotes.txt").write_text(quoted_text(), encoding="utf-8")
    common = ["--batch-size", "16", "--eval-every", "20", "--checkpoint-every", "40"]
    common += ["--progress", "none"]
    stream = ["train", "quotes.txt", "--out", "stream", "--mode", "stream", "--hidden-size", "32"]
    stream += ["--steps", "120", "--seq-len", "40", "--clip", "0.25", *common]
    lines = ["train", "--out", "lines", "--cell", "gru", "--num-layers", "2", "--hidden-size"]
    lines += ["16", "--steps", "80", *common]
    for args in (stream, lines):
        assert rnnkit(work, *args).returncode == 0
    for name in ("stream", "lines"):
        done = rnnkit(work, "report", name)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"report: {name}/report.html")
    return work


class Page(HTMLParser):
    """What a reader sees in a page: its sections, the drawn marks of each chart, and the
    coloured spans of each text view."""

    def __init__(self, text: str):
        super().__init__()
        self.sections, self.charts, self.views = [], {}, []
        self.div_depth, self.chart, self.chart_depth = 0, None, 0
        self.in_view, self.view_depth = False, 0
        self.scripts_with_src, self.links = 0, 0
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag == "section":
            self.sections.append(a.get("id"))
        if tag == "script" and a.get("src"):
            self.scripts_with_src += 1
        if tag == "link" or (tag in ("img", "iframe") and a.get("src")):
            self.links += 1
        if tag == "div":
            self.div_depth += 1
            if "plotly-graph-div" in classes:
                self.chart, self.chart_depth = a.get("id"), self.div_depth
                self.charts[self.chart] = {"svg": 0, "marks": 0}
            if "textview" in classes:
                self.in_view, self.view_depth = True, self.div_depth
                self.views.append({"chars": int(a["data-chars"]), "spans": 0, "coloured": 0})
        if self.chart and tag == "svg" and "main-svg" in classes:
            self.charts[self.chart]["svg"] += 1
        # a drawn line or marker: a path of a trace, with a shape
        if self.chart and tag == "path" and {"js-line", "point"} & set(classes):
            self.charts[self.chart]["marks"] += bool(re.search(r"\d", a.get("d") or ""))
        if self.in_view and tag == "span":
            self.views[-1]["spans"] += 1
            self.views[-1]["coloured"] += "background" in (a.get("style") or "")

    def handle_endtag(self, tag):
        if tag == "div":
            if self.chart and self.div_depth == self.chart_depth:
                self.chart = None
            if self.in_view and self.div_depth == self.view_depth:
                self.in_view = False
            self.div_depth -= 1


# ---------------------------------------------------------------- the file


def test_the_report_has_every_section_and_is_self_contained(runs):
    for name in ("stream", "lines"):
        text = (runs / name / "report.html").read_text(encoding="utf-8")
        page = Page(text)
        assert page.sections == list(SECTIONS)
        assert page.scripts_with_src == 0 and page.links == 0  # nothing fetched: no network
        assert "Plotly.newPlot" in text and "plotly.js v" in text.lower()[:2_000_000]
        expected = {"chart-loss", "chart-lr", "chart-gradnorm", "chart-paramnorms"}
        expected |= {"chart-saturation", "chart-gradients"}
        assert set(page.charts) == expected


def test_the_text_view_shows_the_held_out_text_one_span_per_character(runs):
    record = read_record(runs / "stream")
    held_out = record.info["held_out"]
    assert record.info["held_out_is_validation"] and '"' in held_out
    text = (runs / "stream" / "report.html").read_text(encoding="utf-8")
    page = Page(text)
    assert page.views and all(v["spans"] == v["chars"] == v["coloured"] for v in page.views)
    cut = held_out[: held_out.rfind("\n", 0, 2000)] if len(held_out) > 2000 else held_out
    assert all(v["chars"] == len(cut) for v in page.views)
    # the units found, each with its correlation, computed on this text
    assert "inside quotes" in text and "inside brackets" in text and "position in line" in text


def test_the_curves_come_from_the_record(runs):
    record = read_record(runs / "stream")
    assert any(s["clipped"] for s in record.steps) and not all(s["clipped"] for s in record.steps)
    text = (runs / "stream" / "report.html").read_text(encoding="utf-8")
    fired = sum(s["clipped"] for s in record.steps)
    assert f"clipped ({fired:,} of {len(record.steps):,} steps)" in text
    for entry in record.samples:
        assert all(
            s.replace("\n", "⏎")[:20] in text.replace("&quot;", '"') for s in entry["samples"]
        )


def test_text_chosen_with_text_and_a_unit(runs):
    (runs / "mine.txt").write_text('the "cat" (sat)\nand "dog"\n', encoding="utf-8")
    done = rnnkit(runs, "report", "stream", "--text", "mine.txt", "--unit", "3", "--out", "r.html")
    assert done.returncode == 0, done.stderr
    page = Page((runs / "r.html").read_text(encoding="utf-8"))
    assert [v["chars"] for v in page.views][0] == len('the "cat" (sat)\nand "dog"\n')
    assert "layer 0, unit 3" in (runs / "r.html").read_text(encoding="utf-8")


# ---------------------------------------------------------------- what is computed


def test_text_properties():
    props = text_properties('ab "c" (d)\nx"y')
    assert props["inside quotes"].tolist() == [0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1]
    assert props["position in line"].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0, 1, 2, 3]
    assert props["inside brackets"].tolist() == [0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0]
    assert set(text_properties("plain")) == {"position in line"}  # the others never vary


def test_a_unit_that_tracks_quotes_is_found():
    text = quoted_text(20)
    quotes = text_properties(text)["inside quotes"]
    rng = np.random.default_rng(0)
    cells = rng.standard_normal((len(text), 8))
    cells[:, 5] = np.tanh(2 * quotes - 1) + 0.1 * rng.standard_normal(len(text))
    reading = TextReading(text, np.arange(len(text)), [cells], {}, [])
    best = [m for m in best_units(reading) if m.prop == "inside quotes"]
    assert best[0].unit == 5 and best[0].r > 0.95 and abs(best[1].r) < 0.3
    assert_allclose(correlations(cells, quotes)[5], np.corrcoef(cells[:, 5], quotes)[0, 1])


def small_model(cell: str, vocab: Vocabulary, layers: int = 2, **options) -> LanguageModel:
    model = LanguageModel(len(vocab), 6, layers, cell, rnn_options=options, rng=0, dtype=np.float64)
    return model.eval()


@pytest.mark.parametrize(
    "cell, options",
    [
        ("lstm", {}),
        ("gru", {}),
        ("gru", {"simplified": True}),
        ("gru", {"reset_after": False}),
        ("rnn", {}),
    ],
)
def test_gate_fields_hold_the_gates(cell, options):
    """The cache entries the report reads are the gates, recomputed here from the weights."""
    vocab = Vocabulary.build(["abc"], "char")
    model = small_model(cell, vocab, layers=1, **options)
    x = np.random.default_rng(1).standard_normal((4, 2, 6))
    steps = stack_forward(model.rnn, x)[0]
    rnn, p = model.rnn, model.rnn.cell_params(0, 0)
    s = gate_slices(rnn.kind.gates, 6)
    a_prev = np.concatenate([np.zeros((1, 2, 6)), steps.outputs[:-1]])
    z = x @ p.w_ih.T + p.b_ih + a_prev @ p.w_hh.T + p.b_hh  # (T, N, G*H)
    expect = {
        "input gate Γu": sigmoid(z[..., s.get("i", slice(0))]),
        "forget gate Γf": sigmoid(z[..., s.get("f", slice(0))]),
        "output gate Γo": sigmoid(z[..., s.get("o", slice(0))]),
        "reset gate Γr": sigmoid(z[..., s.get("r", slice(0))]),
        "update gate Γu": 1 - sigmoid(z[..., s.get("z", slice(0))]),
    }
    fields = GATE_FIELDS[rnn.kind.name]
    assert len(fields) == {"lstm": 3, "gru": 2, "gru_reset_before": 2}.get(
        rnn.kind.name, len(fields)
    )
    for name, index in fields.items():
        got = np.stack([c[index] for c in steps.caches])
        assert_allclose(got, expect[name], atol=1e-12, err_msg=name)
    if cell == "lstm":
        _, (_, c_n), _ = rnn.forward(x)
        assert_allclose(steps.caches[-1][LSTM_TANH_C], np.tanh(c_n[0]), atol=1e-12)


@pytest.mark.parametrize(
    "level, mode", [("char", "stream"), ("char", "lines"), ("word", "stream"), ("word", "lines")]
)
def test_each_character_shows_the_state_after_reading_it(level, mode):
    """Against the model itself: run the text up to a character and take the last top state."""
    text = "the cat, sat\non a mat\nthe dog"
    vocab = Vocabulary.build([text], level)
    model = small_model("gru", vocab)
    start = vocab.ids.get("\n", vocab.eos_id) if level == "char" else vocab.eos_id
    reading = read_over_text(model, vocab, mode, start, text)
    assert reading.text == text and len(reading.char_step) == len(text)
    top = reading.cells[-1]
    for i in range(len(text)):
        before = read_by(text, i, level)
        if mode == "lines":
            ids = [vocab.eos_id] + vocab.encode(before.split("\n")[-1].lstrip())
        elif level == "word":  # a line break is read as <eos>
            lines = [vocab.encode(line) for line in before.split("\n")]
            ids = [start] + [i for line in lines for i in [vocab.eos_id, *line]][1:]
        else:
            ids = [start] + vocab.encode(before)
        _, state, _ = model.forward(np.asarray(ids)[:, None])
        assert_allclose(top[reading.char_step[i]], state[-1, 0], atol=1e-12, err_msg=repr(before))


def read_by(text: str, i: int, level: str) -> str:
    """What the model has read when character i is shown: up to it, or at word level up to the
    end of its word (a space shows the word before it)."""
    end = i + 1
    if level == "word" and text[i].isalnum():
        while end < len(text) and text[end].isalnum():
            end += 1
    before = text[:end]
    return before.rstrip(" ") if level == "word" and text[i] == " " else before


def test_gradient_through_time_of_lines_and_of_a_stream():
    vocab = Vocabulary.build(["abcdef"], "char")
    model = small_model("lstm", vocab)
    lines = [[vocab.eos_id] + vocab.encode(w) for w in ("abc", "abcdef", "fed")]
    norms = gradient_through_time(model, lines, vocab.eos_id)
    assert norms.shape == (2, 7 + 1) and np.all(norms > 0)  # the longest line has 7 inputs
    stream = [[vocab.eos_id] + vocab.encode("abcdef" * 40)]
    norms = gradient_through_time(model, stream, None)
    assert norms.shape == (2, 101) and np.all(np.isfinite(norms))
    assert norms[0, 100] < norms[0, 0]  # at initialisation the gradient fades with distance


# ---------------------------------------------------------------- bad folders


def test_a_missing_folder_is_one_clear_line(tmp_path):
    err = one_error_line(rnnkit(tmp_path, "report", "nowhere"))
    assert "nowhere is not a folder" in err


def test_a_foreign_folder_is_one_clear_line(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"\xff\xd8\xff")
    err = one_error_line(rnnkit(tmp_path, "report", "photos"))
    assert "holds no checkpoint.safetensors" in err and "not the folder of a training run" in err
    (tmp_path / "photos" / CKPT).write_bytes(b"\x08" + b"\0" * 7 + b"{}" + b" " * 6)
    err = one_error_line(rnnkit(tmp_path, "report", "photos"))
    assert "checkpoint.safetensors" in err


def test_a_half_written_folder_is_one_clear_line(runs, tmp_path):
    run = tmp_path / "half"
    run.mkdir()
    shutil.copy(runs / "lines" / RECORD_NAME, run)  # killed before its first checkpoint
    err = one_error_line(rnnkit(tmp_path, "report", "half"))
    assert "stopped before its first checkpoint" in err
    shutil.copy(runs / "lines" / CKPT, run)
    data = (run / RECORD_NAME).read_bytes().splitlines(keepends=True)
    (run / RECORD_NAME).write_bytes(b"".join(data[:5]) + b'{"kind": "st\n' + b"".join(data[5:]))
    err = one_error_line(rnnkit(tmp_path, "report", "half"))
    assert "line 6, is not a record line" in err
    (run / RECORD_NAME).write_bytes(b"".join(data) + b'{"kind": "step", "st')  # cut by a kill
    assert rnnkit(tmp_path, "report", "half").returncode == 0


def test_a_run_without_a_record_gets_a_report_and_a_note(runs, tmp_path):
    run = tmp_path / "old"
    run.mkdir()
    shutil.copy(runs / "stream" / CKPT, run)
    (tmp_path / "text.txt").write_text(quoted_text(5), encoding="utf-8")
    done = rnnkit(tmp_path, "report", "old")
    assert "keeps no text" in one_error_line(done) and "--text" in done.stderr
    done = rnnkit(tmp_path, "report", "old", "--text", "text.txt")
    assert done.returncode == 0 and "record.jsonl is missing" in done.stderr
    assert Page((run / "report.html").read_text(encoding="utf-8")).sections == list(SECTIONS)
    (tmp_path / "one-line.txt").write_text("the cat\tsat", encoding="utf-8")
    err = one_error_line(rnnkit(tmp_path, "report", "old", "--text", "one-line.txt"))
    assert "never saw: '\\t'" in err


def test_bad_text_or_unit_and_a_missing_plotly_are_one_clear_line(runs):
    (runs / "odd.txt").write_text("ünïcode ✓\n", encoding="utf-8")
    err = one_error_line(rnnkit(runs, "report", "stream", "--text", "odd.txt"))
    assert "characters the model never saw" in err
    err = one_error_line(rnnkit(runs, "report", "stream", "--unit", "99"))
    assert "--unit 99" in err and "32 units" in err
    blocked = "import sys; sys.modules['plotly'] = None; from rnnkit.__main__ import *"
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            blocked.replace(
                "from rnnkit.__main__ import *",
                "from rnnkit.cli import main; sys.exit(main(['report', 'stream']))",
            ),
        ],
        cwd=runs,
        env=ENV,
        capture_output=True,
        text=True,
    )
    err = one_error_line(done)
    assert "pip install 'rnnkit[report]'" in err


# ---------------------------------------------------------------- in a real browser


def browse(page: Path) -> tuple[str, list[str]]:
    """``(the DOM after the page's scripts ran, console messages)`` from headless Chromium."""
    done = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=20000",
            "--window-size=1280,2000",
            "--dump-dom",
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return done.stdout, console


def problems(page: Path) -> list[str]:
    """What a person would find wrong with the report in a browser."""
    dom, console = browse(page)
    seen = Page(dom)
    found = [f"console: {line}" for line in console]
    if seen.sections != list(SECTIONS):
        found.append(f"sections {seen.sections}")
    for chart, drawn in seen.charts.items():
        if not drawn["svg"] or not drawn["marks"]:
            found.append(f"{chart} is not drawn ({drawn})")
    if len(seen.charts) < 6:
        found.append(f"only {len(seen.charts)} charts")
    for view in seen.views:
        if not view["chars"] == view["spans"] == view["coloured"] > 0:
            found.append(f"text view {view}")
    return found


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
@pytest.mark.parametrize("run", ["stream", "lines"])
def test_the_report_in_a_real_browser(runs, run):
    assert problems(runs / run / "report.html") == []


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_the_browser_check_sees_a_broken_report(runs, tmp_path):
    """Without the charting script the same page draws no chart and logs an error: the check
    above would say so."""
    text = (runs / "stream" / "report.html").read_text(encoding="utf-8")
    start = text.index("<script>") + len("<script>")
    broken = tmp_path / "broken.html"
    broken.write_text(text[:start] + text[text.index("</script>", start) :], encoding="utf-8")
    found = problems(broken)
    assert any("console" in p and "Plotly" in p for p in found), found
    assert sum("is not drawn" in p for p in found) == 6, found
