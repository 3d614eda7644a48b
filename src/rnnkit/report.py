"""A run's report: one self-contained HTML file that shows what happened inside a training run.

``rnnkit report RUN`` reads the run's checkpoint (the trained model) and its training record
(:mod:`rnnkit.record`) and writes ``RUN/report.html``, viewable with any browser and no
network (the charting library's script is inlined). Everything in it is computed from the run:

- training curves: the loss of every step and each validation (bits per character for
  character models), the learning rate, the gradient norm before clipping with each clipping
  event marked, and each parameter's gradient norm;
- the samples recorded at each checkpoint;
- gates and cells over a text (``--text``, else the held-out text the record keeps): each
  character coloured by a unit's activation, the units that correlate best with simple
  properties of the text (inside quotes, position in line, inside brackets), and how often
  each gate is saturated (Karpathy, Johnson and Fei-Fei 2015, "Visualizing and Understanding
  Recurrent Networks");
- ``|dL/da<t>|`` through time for a loss at the last step (:mod:`rnnkit.gradflow`);
- the model's configuration and what it was trained on.

The model is run over the text with the readable cells of :mod:`rnnkit.cells` and the model's
own weights, never with the fast loops, so what is shown is what the equations compute.
Charts are drawn with plotly (``pip install 'rnnkit[report]'``).
"""

from __future__ import annotations

import html
import math
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .checkpoint import atomic_write_text
from .gradflow import loss_at_last_step, stack_forward
from .record import RECORD_NAME, Record, RecordError, read_record
from .text import Vocabulary, split_lines, tokenize
from .train import CHECKPOINT_NAME
from .version import __version__

REPORT_NAME = "report.html"
MAX_TEXT_CHARS = 2000  # of the text the gates are shown over: a screen or two
GRADIENT_WINDOW = 100  # steps back from the loss in the gradient-through-time measurement
MAX_POINTS = 4000  # per curve; longer runs are drawn every k-th step
SATURATED = (0.1, 0.9)  # a gate below / above these is left / right saturated (Karpathy et al.)

# Which entry of each cell's step cache (rnnkit.cells) holds each gate, and, for the LSTM, the
# cell state shown (tanh(c<t>)); the other cells show their state a<t>. tests/test_report.py
# holds these against the gates recomputed from the weights.
GATE_FIELDS = {
    "lstm": {"input gate Γu": 2, "forget gate Γf": 3, "output gate Γo": 5},
    "lstm_gers": {"input gate Γu": 2, "forget gate Γf": 3, "output gate Γo": 5},
    "gru": {"reset gate Γr": 1, "update gate Γu": 2},
    "gru_reset_before": {"reset gate Γr": 1, "update gate Γu": 2},
    "gru_simple": {"update gate Γu": 1},
    "rnn_tanh": {},
    "rnn_relu": {},
}
LSTM_TANH_C = 6


class ReportError(ValueError):
    """The report cannot be made; the message says why and what to do."""


def check_run_folder(folder: str | os.PathLike) -> None:
    """Before anything is loaded: one clear message for a folder that holds no finished part of
    a run (missing, not a run, or stopped before its first checkpoint)."""
    path = Path(folder)
    if not path.is_dir():
        raise ReportError(f"{path} is not a folder; give the --out folder of a training run")
    if (path / CHECKPOINT_NAME).exists():
        return
    if (path / RECORD_NAME).exists():
        raise ReportError(
            f"{path} holds a training record but no {CHECKPOINT_NAME}: the run was stopped "
            f"before its first checkpoint, so there is no model to report on; train it again"
        )
    raise ReportError(
        f"{path} holds no {CHECKPOINT_NAME}: it is not the folder of a training run "
        f"(rnnkit train FILE --out {path} makes one)"
    )


# ---------------------------------------------------------------- the model over a text


@dataclass
class TextReading:
    """A model run over a text: for each character, the step whose state it shows."""

    text: str  # what is shown, one coloured span per character
    char_step: np.ndarray  # (len(text),) index into the steps below
    cells: list[np.ndarray]  # per layer (steps, H): tanh(c<t>) for the LSTM, a<t> otherwise
    gates: dict[str, list[np.ndarray]]  # gate name -> per layer (steps, H)
    sequences: list[list[int]]  # the token ids read, one list per sequence (state reset)


def _token_steps(piece: str, vocab: Vocabulary, first: int) -> tuple[list[int], list[int]]:
    """Ids of ``piece`` and, per character, the step that shows it: token k is step first + k;
    characters between tokens (spaces) show the token before them."""
    tokens = tokenize(piece, vocab.level)
    ids = vocab.encode(piece)
    steps, pos = [], 0
    for k, tok in enumerate(tokens):
        start = piece.index(tok, pos)
        steps += [first + k - 1] * (start - pos) + [first + k] * len(tok)
        pos = start + len(tok)
    steps += [first + len(tokens) - 1] * (len(piece) - pos)
    return ids, steps


def _sequences(text: str, vocab: Vocabulary, mode: str, start_id: int) -> tuple[str, list, list]:
    """``(shown text, sequences of ids, char -> global step)``. Lines mode reads each line as
    training did (``<eos>`` first, from a zero state; the line break shows that ``<eos>``);
    stream mode reads the text as one sequence after ``start_id``."""
    shown, sequences, char_step, offset = [], [], [], 0
    if mode == "lines":
        for j, line in enumerate(split_lines(text)):
            ids, steps = _token_steps(line, vocab, offset + 1)
            shown.append(("\n" if j else "") + line)
            char_step += ([offset] if j else []) + steps
            sequences.append([vocab.eos_id] + ids)
            offset += len(ids) + 1
        return "".join(shown), sequences, char_step
    ids = [start_id]
    for j, line in enumerate(text.split("\n") if vocab.level == "word" else [text]):
        if j:  # a word-level stream reads a line break as <eos>
            ids.append(vocab.eos_id)
            char_step.append(len(ids) - 1)
        line_ids, steps = _token_steps(line, vocab, len(ids))
        ids += line_ids
        char_step += steps
    return text, [ids], char_step


def read_over_text(model, vocab: Vocabulary, mode: str, start_id: int, text: str) -> TextReading:
    """Run ``model`` over ``text`` with the reference cells, keeping every cell state and gate."""
    shown, sequences, char_step = _sequences(text, vocab, mode, start_id)
    kind = model.rnn.kind
    fields = GATE_FIELDS[kind.name]
    L = model.rnn.num_layers
    cells: list[list] = [[] for _ in range(L)]
    gates: dict[str, list[list]] = {name: [[] for _ in range(L)] for name in fields}
    for ids in sequences:
        emb, _ = model.embedding.forward(np.asarray(ids)[:, None])  # (T, 1, E)
        for layer, steps in enumerate(stack_forward(model.rnn, emb)):
            if kind.name == "lstm":
                cells[layer].append(np.stack([c[LSTM_TANH_C][0] for c in steps.caches]))
            else:
                cells[layer].append(steps.outputs[:, 0])  # (T, H)
            for name, index in fields.items():
                gates[name][layer].append(np.stack([c[index][0] for c in steps.caches]))
    return TextReading(
        shown,
        np.asarray(char_step),
        [np.concatenate(c) for c in cells],
        {name: [np.concatenate(g) for g in per_layer] for name, per_layer in gates.items()},
        sequences,
    )


# ---------------------------------------------------------------- what the units track


def text_properties(text: str) -> dict[str, np.ndarray]:
    """Simple properties of each character, as the model has read up to it: inside double
    quotes (single ones are also apostrophes), position in its line (0 right after a line
    break), inside brackets ``( [ {``. Properties that do not vary over the text are left out."""
    quote, pos, depth = [], [], []
    inside, col, level = 0, 0, 0
    for ch in text:
        if ch == '"':
            inside = 1 - inside
        col = 0 if ch == "\n" else col + 1
        if ch in "([{":
            level += 1
        elif ch in ")]}":
            level = max(0, level - 1)
        quote.append(inside)
        pos.append(col)
        depth.append(level > 0)
    found = {"inside quotes": quote, "position in line": pos, "inside brackets": depth}
    arrays = {name: np.asarray(v, dtype=float) for name, v in found.items()}
    return {name: a for name, a in arrays.items() if a.std() > 0}


def correlations(values: np.ndarray, prop: np.ndarray) -> np.ndarray:
    """Pearson's r between ``prop (n,)`` and each column of ``values (n, U)``; 0 for a unit
    that never changes."""
    v = values - values.mean(axis=0)
    p = prop - prop.mean()
    denom = np.sqrt((v * v).sum(axis=0) * (p @ p))
    return np.divide(v.T @ p, denom, out=np.zeros(values.shape[1]), where=denom > 0)


@dataclass
class UnitMatch:
    """A unit and how well it tracks a property."""

    prop: str
    layer: int
    unit: int
    r: float


def best_units(reading: TextReading, per_property: int = 3) -> list[UnitMatch]:
    """For each property of the text, the units whose cell state correlates best with it
    (|r|, over every layer), best first."""
    props = text_properties(reading.text)
    found = []
    for name, prop in props.items():
        matches = []
        for layer, cells in enumerate(reading.cells):
            r = correlations(cells[reading.char_step], prop)
            matches += [UnitMatch(name, layer, int(u), float(r[u])) for u in range(len(r))]
        found += sorted(matches, key=lambda m: -abs(m.r))[:per_property]
    return found


def saturation(reading: TextReading) -> list[dict]:
    """For every gate of every unit: the fraction of steps it is left saturated (< 0.1) and
    right saturated (> 0.9), most saturated first."""
    rows = []
    for name, per_layer in reading.gates.items():
        for layer, g in enumerate(per_layer):
            left, right = (g < SATURATED[0]).mean(axis=0), (g > SATURATED[1]).mean(axis=0)
            for u in range(g.shape[1]):
                rows.append(
                    {"gate": name, "layer": layer, "unit": u, "left": left[u], "right": right[u]}
                )
    return sorted(rows, key=lambda row: -(row["left"] + row["right"]))


def gradient_through_time(model, sequences: list[list[int]], stop_id: int | None) -> np.ndarray:
    """``(L, K+1)``: mean ``|dL/da<t>|`` of each layer at k = T - t steps before a loss placed
    on the last step (k = 0), over pieces of the text. Lines are each one piece, predicting
    their ``<eos>``; a stream is cut into windows of up to 100 steps, predicting the next token.
    """
    pieces = []
    for ids in sequences:
        if stop_id is not None:  # lines: the whole line, then its end
            pieces.append((ids[-GRADIENT_WINDOW:], stop_id))
            continue
        width = min(GRADIENT_WINDOW, len(ids) - 1)
        for start in range(0, len(ids) - width, width):
            pieces.append((ids[start : start + width], ids[start + width]))
    by_length = defaultdict(list)
    for ids, target in pieces[:64]:
        by_length[len(ids)].append((ids, target))
    L, K = model.rnn.num_layers, max(by_length)
    total, count = np.zeros((L, K + 1)), np.zeros(K + 1)
    for T, group in by_length.items():
        ids = np.array([g[0] for g in group]).T  # (T, N)
        grads = loss_at_last_step(model, ids, np.array([g[1] for g in group]))
        for layer, da in enumerate(grads):  # da: (T+1, N, H), index t
            total[layer, : T + 1] += np.linalg.norm(da, axis=2).sum(axis=1)[::-1]
        count[: T + 1] += len(group)
    return total / np.maximum(count, 1)


# ---------------------------------------------------------------- charts


def _plotly():
    """plotly's graph objects and its script, or one clear message."""
    try:
        import plotly.graph_objects as go
        from plotly.offline import get_plotlyjs
    except ImportError:
        raise ReportError(
            "the report draws its charts with plotly, which is not installed: "
            "pip install 'rnnkit[report]'"
        ) from None
    return go, get_plotlyjs


def _figure_html(fig, name: str, height: int = 320) -> str:
    """One chart as a div and the script that draws it (the library itself is inlined once)."""
    fig.update_layout(
        template="plotly_white", height=height, margin={"l": 60, "r": 20, "t": 40, "b": 45}
    )
    return fig.to_html(
        full_html=False,
        include_plotlyjs=False,
        div_id=f"chart-{name}",
        default_height=f"{height}px",
        config={"displaylogo": False, "responsive": True},
    )


def _every(n: int) -> slice:
    """Every k-th of n points, so that a curve keeps at most MAX_POINTS."""
    return slice(None, None, max(1, math.ceil(n / MAX_POINTS)))


def log_axis(*values) -> dict:
    """A log axis labelled at 1, 2 and 5 times each power of ten the values span."""
    v = np.concatenate([np.ravel(x) for x in values])
    v = v[np.isfinite(v) & (v > 0)]
    if not len(v):
        return {"type": "log"}
    low, high = math.floor(math.log10(v.min())), math.ceil(math.log10(v.max()))
    ticks = [m * 10.0**k for k in range(low, high + 1) for m in (1, 2, 5)]
    ticks = [t for t in ticks if v.min() / 2 <= t <= v.max() * 2]
    step = max(1, len(ticks) // 12)  # at most about a dozen labels
    return {"type": "log", "tickvals": ticks[::step], "ticktext": [f"{t:g}" for t in ticks[::step]]}


def loss_chart(go, record: Record, char_level: bool) -> str:
    """The loss of every step, its running mean, and each validation."""
    unit, scale = ("bits per character", 1 / math.log(2)) if char_level else ("nats per token", 1)
    step, every = record.column("step"), _every(len(record.steps))
    loss = record.column("loss") * scale
    window = max(1, len(loss) // 20)
    smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
    fig = go.Figure()
    fig.add_scatter(x=step[every], y=loss[every], name="each step", line={"width": 1}, opacity=0.4)
    fig.add_scatter(x=step[window - 1 :][every], y=smooth[every], name=f"mean of {window}")
    val = [(e["step"], e["loss"] * scale) for e in record.evals if e.get("loss") is not None]
    if val:
        steps, losses = zip(*val)
        fig.add_scatter(x=steps, y=losses, name="validation", mode="lines+markers")
    fig.update_layout(title=f"Loss ({unit})", xaxis_title="step", yaxis_title=unit)
    return _figure_html(fig, "loss")


def lr_chart(go, record: Record) -> str:
    """The learning rate of every step, from zero."""
    lr = record.column("lr")
    fig = go.Figure(go.Scatter(x=record.column("step"), y=lr, name="learning rate"))
    top = 1.1 * np.nanmax(lr) if len(lr) else 1
    fig.update_layout(title="Learning rate", xaxis_title="step", yaxis_range=[0, top])
    return _figure_html(fig, "lr")


def grad_norm_chart(go, record: Record, clip: float | None, clip_mode: str) -> str:
    """The global gradient norm before clipping, each step clipping changed marked, and the
    bound of norm clipping."""
    step, norm = record.column("step"), record.column("grad_norm")
    clipped, every = record.column("clipped") > 0, _every(len(step))
    fig = go.Figure(go.Scatter(x=step[every], y=norm[every], name="‖g‖", line={"width": 1}))
    marker = {"color": "#d62728", "symbol": "x", "size": 7}
    fig.add_scatter(
        x=step[clipped],
        y=norm[clipped],
        mode="markers",
        marker=marker,
        name=f"clipped ({int(clipped.sum()):,} of {len(step):,} steps)",
    )
    if clip and clip_mode == "norm" and len(step):
        fig.add_scatter(
            x=[step[0], step[-1]],
            y=[clip, clip],
            mode="lines",
            name=f"bound {clip:g}",
            line={"color": "#d62728", "dash": "dash", "width": 1},
        )
    axis = log_axis(norm, [clip or np.nan])
    fig.update_layout(title="Gradient norm before clipping", xaxis_title="step", yaxis=axis)
    return _figure_html(fig, "gradnorm")


def param_norm_chart(go, record: Record) -> str:
    """Each parameter's gradient norm, at the steps that recorded it."""
    per = [s for s in record.steps if "grad_norms" in s]
    fig = go.Figure()
    for name in per[0]["grad_norms"] if per else []:
        fig.add_scatter(
            x=[s["step"] for s in per],
            y=[s["grad_norms"][name] for s in per],
            name=name,
            line={"width": 1},
        )
    axis = log_axis([list(s["grad_norms"].values()) for s in per] or [np.nan])
    fig.update_layout(title="Gradient norm of each parameter", xaxis_title="step", yaxis=axis)
    return _figure_html(fig, "paramnorms")


def curve_charts(record: Record, char_level: bool, clip: float | None, clip_mode: str) -> str:
    """Loss and validation, learning rate, gradient norm with clipping, per-parameter norms."""
    go, _ = _plotly()
    if not record.steps:
        return "<p>The run has no training record (record.jsonl): no curves to draw.</p>"
    charts = [
        loss_chart(go, record, char_level),
        lr_chart(go, record),
        grad_norm_chart(go, record, clip, clip_mode),
        param_norm_chart(go, record),
    ]
    return '<div class="grid">' + "".join(f"<div>{c}</div>" for c in charts) + "</div>"


def saturation_chart(rows: list[dict]) -> str:
    """Karpathy et al.'s picture: each unit's gate, by how often it is left and right
    saturated; the units along the axes switch, the ones near the corner never do."""
    go, _ = _plotly()
    fig = go.Figure()
    for gate in dict.fromkeys(r["gate"] for r in rows):
        mine = [r for r in rows if r["gate"] == gate]
        fig.add_scatter(
            x=[r["left"] for r in mine],
            y=[r["right"] for r in mine],
            mode="markers",
            name=gate,
            text=[f"layer {r['layer']}, unit {r['unit']}" for r in mine],
            opacity=0.7,
        )
    fig.update_layout(
        title="Gate saturation over the text: one point per unit",
        xaxis_title=f"fraction of steps left saturated (< {SATURATED[0]})",
        yaxis_title=f"fraction right saturated (> {SATURATED[1]})",
        xaxis_range=[-0.02, 1.02],
        yaxis_range=[-0.02, 1.02],
    )
    return _figure_html(fig, "saturation", height=420)


def gradient_chart(norms: np.ndarray, cell: str) -> str:
    """``|dL/da<t>|`` against the distance from the loss, one line per layer, log scale."""
    go, _ = _plotly()
    fig = go.Figure()
    for layer, n in enumerate(norms):
        fig.add_scatter(
            x=np.arange(len(n)),
            y=n,
            name=f"layer {layer}",
            mode="lines+markers",
            marker={"size": 4},
        )
    fig.update_layout(
        title=f"|dL/da<t>| of the trained {cell.upper()}, for a loss at the last step",
        xaxis_title="steps before the loss (T - t)",
        yaxis={**log_axis(norms), "title": "mean |dL/da<t>|"},
    )
    return _figure_html(fig, "gradients", height=380)


# ---------------------------------------------------------------- page parts


def _colour(value: float) -> str:
    """Red for positive, blue for negative, white at 0; full colour at |value| >= 1."""
    v = max(-1.0, min(1.0, float(value)))
    rgb = "214,39,40" if v > 0 else "31,119,180"
    return f"rgba({rgb},{abs(v):.2f})"


def text_view(text: str, values: np.ndarray, title: str, why: str) -> str:
    """The text with each character's background coloured by ``values (len(text),)``."""
    spans = "".join(
        f'<span style="background:{_colour(v)}" title="{v:+.3f}">{html.escape(ch)}</span>'
        for ch, v in zip(text, values)
    )
    return (
        f"<h4>{html.escape(title)} <small>{html.escape(why)}</small></h4>"
        f'<div class="textview" data-chars="{len(text)}">{spans}</div>'
    )


def _table(head: list[str], rows: list[list]) -> str:
    cells = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return (
        "<table><tr>"
        + "".join(f"<th>{html.escape(h)}</th>" for h in head)
        + "</tr>"
        + cells
        + "</table>"
    )


def _chosen_units(reading: TextReading, matches: list[UnitMatch], unit, layer) -> list:
    """``(layer, unit, why)`` of each unit shown over the text: the one asked for, else the
    best match, then the best unit of each other property."""
    shown = []
    if unit is not None:
        layer = len(reading.cells) - 1 if layer is None else layer
        if not 0 <= layer < len(reading.cells) or not 0 <= unit < reading.cells[0].shape[1]:
            raise ReportError(
                f"--unit {unit} --layer {layer} is not in the model: it has "
                f"{len(reading.cells)} layer(s) (0..{len(reading.cells) - 1}) of "
                f"{reading.cells[0].shape[1]} units (0..{reading.cells[0].shape[1] - 1})"
            )
        shown.append((layer, unit, "chosen with --unit"))
    seen_props = set()
    for m in sorted(matches, key=lambda m: -abs(m.r)):
        if m.prop not in seen_props and (m.layer, m.unit) not in [s[:2] for s in shown]:
            shown.append((m.layer, m.unit, f"r = {m.r:+.2f} with {m.prop}"))
            seen_props.add(m.prop)
    if not shown:  # nothing in the text varies: the unit that varies most
        spread = [c[reading.char_step].std(axis=0) for c in reading.cells]
        layer = int(np.argmax([s.max() for s in spread]))
        shown.append((layer, int(spread[layer].argmax()), "the unit that varies most"))
    return shown


def gates_section(reading: TextReading, cell: str, text_label: str, unit, layer) -> str:
    """Text views, the property table, the saturation chart and the most saturated gates."""
    matches = best_units(reading)
    what = "tanh(c<t>), the cell state" if cell == "lstm" else "a<t>, the hidden state"
    parts = [
        f"<p>{html.escape(text_label)}; each character is coloured by {html.escape(what)} of one "
        "unit after reading it (red positive, blue negative; hover for the value).</p>"
    ]
    for lay, u, why in _chosen_units(reading, matches, unit, layer):
        values = reading.cells[lay][reading.char_step, u]
        parts.append(text_view(reading.text, values, f"layer {lay}, unit {u}", why))
    if matches:
        rows = [[m.prop, m.layer, m.unit, f"{m.r:+.3f}"] for m in matches]
        parts.append("<h3>Units that track simple properties of the text</h3>")
        parts.append(_table(["property", "layer", "unit", "Pearson r"], rows))
    if reading.gates:
        rows = saturation(reading)
        parts.append("<h3>Gate saturation</h3>" + saturation_chart(rows))
        top = [
            [
                r["gate"],
                r["layer"],
                r["unit"],
                f"{100 * r['left']:.0f}%",
                f"{100 * r['right']:.0f}%",
            ]
            for r in rows[:8]
        ]
        parts.append("<h4>The most saturated gates</h4>")
        parts.append(_table(["gate", "layer", "unit", "left (< 0.1)", "right (> 0.9)"], top))
    else:
        parts.append("<p>The vanilla RNN has no gates: its state is all there is.</p>")
    return "".join(parts)


def samples_section(record: Record) -> str:
    """The samples of each checkpoint, with the validation loss nearest before it."""
    if not record.samples:
        return "<p>The record holds no samples.</p>"
    rows = []
    for entry in record.samples:
        before = [e for e in record.evals if e["step"] <= entry["step"] and e.get("bits")]
        bits = f"{before[-1]['bits']:.3f}" if before else ""
        text = "\n".join(s.replace("\n", "⏎") for s in entry["samples"])
        rows.append(
            f"<tr><td>{entry['step']:,}</td><td>{bits}</td><td><pre>{html.escape(text)}"
            "</pre></td></tr>"
        )
    return (
        '<table class="samples"><tr><th>step</th><th>validation bits/token</th>'
        "<th>samples</th></tr>" + "".join(rows) + "</table>"
    )


def config_section(meta: dict, record_info: dict, num_parameters: int, vocab: Vocabulary) -> str:
    """The model, the training settings and the data, as saved in the checkpoint and record."""
    spec, options, config = meta.get("model", {}), meta.get("options", {}), meta.get("config", {})
    history = meta.get("history", {})
    model_rows = [[k, v] for k, v in spec.items()] + [
        ["parameters", f"{num_parameters:,}"],
        ["vocabulary", f"{len(vocab):,} tokens, {vocab.level} level"],
    ]
    train_rows = [[k, v] for k, v in config.items()] + [
        ["steps done", meta.get("step")],
        ["best validation loss (nats/token)", f"{history.get('best_val', math.nan):.4f}"],
        ["at step", history.get("best_step")],
        ["rnnkit", f"{meta.get('library_version', '?')} (report by {__version__})"],
    ]
    data_rows = [["source", meta.get("source", "?")]]
    data_rows += [[k.replace("_", " "), f"{v:,}"] for k, v in record_info.get("sizes", {}).items()]
    data_rows += [[k, v] for k, v in options.items() if k not in config and k not in spec]
    return (
        "<h3>Model</h3>"
        + _table(["model", ""], model_rows)
        + "<h3>Training</h3>"
        + _table(["training", ""], train_rows)
        + "<h3>Data</h3>"
        + _table(["data", ""], data_rows)
    )


STYLE = """
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1200px; padding: 0 1.5em;
       color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; margin-top: 1.6em; }
nav a { margin-right: 1em; } small { color: #666; font-weight: normal; }
.grid { display: grid; grid-template-columns: 1fr 1fr; gap: 0.5em; }
.textview { font-family: ui-monospace, monospace; white-space: pre-wrap; line-height: 1.5;
            border: 1px solid #ddd; padding: 0.6em; max-height: 18em; overflow-y: auto; }
table { border-collapse: collapse; margin: 0.4em 0; } td, th { padding: 0.2em 0.8em;
        border-bottom: 1px solid #eee; text-align: left; vertical-align: top; }
pre { margin: 0; white-space: pre-wrap; overflow-wrap: anywhere; }
"""
SECTIONS = {
    "curves": "Training curves",
    "samples": "Samples over training",
    "gates": "Gates and cells over a text",
    "gradients": "Gradients through time",
    "config": "Model and data",
}


def page(title: str, summary: str, sections: dict[str, str]) -> str:
    """The whole HTML document, with the charting library's script inlined."""
    _, get_plotlyjs = _plotly()
    nav = "".join(f'<a href="#{key}">{SECTIONS[key]}</a>' for key in sections)
    body = "".join(
        f'<section id="{key}"><h2>{SECTIONS[key]}</h2>{content}</section>'
        for key, content in sections.items()
    )
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}'
        f"</title><style>{STYLE}</style><script>{get_plotlyjs()}</script></head><body>"
        f"<header><h1>{html.escape(title)}</h1><p>{html.escape(summary)}</p><nav>{nav}</nav>"
        f"</header>{body}</body></html>"
    )


# ---------------------------------------------------------------- the report


def _record_of(folder: str | os.PathLike, notes: list[str]) -> Record:
    """The run's record; an empty one, with a note, for a run trained without one."""
    if not (Path(folder) / RECORD_NAME).exists():
        notes.append(f"{Path(folder) / RECORD_NAME} is missing: no curves and no samples")
        return Record(info={})
    try:
        return read_record(folder)
    except RecordError as e:
        raise ReportError(f"{e}; the report needs a readable record") from None


def _text_to_read(text: str | None, info: dict) -> tuple[str, str]:
    """``(text, what it is)``: the one given, else the record's held-out text."""
    if text is None:
        text = info.get("held_out")
        if not text:
            raise ReportError(
                "the run's record keeps no text to read the gates over; give one with --text FILE"
            )
        what = (
            "held-out text of the run"
            if info.get("held_out_is_validation")
            else ("training text of the run (it held none out)")
        )
    else:
        what = "the text given with --text"
    if not text.strip():
        raise ReportError("the text to read the gates over is empty; give another with --text")
    if len(text) > MAX_TEXT_CHARS:  # cut at a line break where there is one
        cut = text.rfind("\n", 0, MAX_TEXT_CHARS)
        text = text[: cut if cut > 0 else MAX_TEXT_CHARS]
        what += f" (its first {len(text):,} characters)"
    return text, what


def write_report(
    folder: str | os.PathLike,
    model,
    vocab: Vocabulary,
    meta: dict,
    start_id: int,
    text: str | None = None,
    unit: int | None = None,
    layer: int | None = None,
    out: str | os.PathLike | None = None,
) -> tuple[Path, list[str]]:
    """Write the report of the run in ``folder`` (its model, vocabulary and checkpoint metadata
    already loaded, in evaluation mode) to ``out`` (default ``folder/report.html``).

    Args:
        start_id: the token the model reads before a stream (lines start with ``<eos>``).
        text: the text to read the gates over (default: the record's held-out text).
        unit, layer: a unit to show over the text (layer default: the top one); the units that
            track properties of the text are shown in any case.

    Returns:
        ``(path written, notes)``: notes say what the report could not show.
    """
    _plotly()  # before any work: a missing library is the first thing said
    notes: list[str] = []
    record = _record_of(folder, notes)
    text, text_label = _text_to_read(text, record.info)
    mode, level = meta["options"]["mode"], vocab.level
    read = "".join(split_lines(text)) if mode == "lines" else text  # lines lose their breaks
    unknown = vocab.unknown(read) if level == "char" else []  # unknown words read as <unk>
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:20])
        raise ReportError(f"the text has characters the model never saw: {shown}")
    reading = read_over_text(model, vocab, mode, start_id, text)
    config = meta.get("config", {})
    clip, clip_mode = config.get("clip"), config.get("clip_mode", "norm")
    sections = {
        "curves": curve_charts(record, level == "char", clip, clip_mode),
        "samples": samples_section(record),
        "gates": gates_section(reading, model.cell, text_label, unit, layer),
        "gradients": gradient_section(model, reading, mode, vocab),
        "config": config_section(meta, record.info, model.num_parameters(), vocab),
    }
    spec = meta.get("model", {})
    title = f"rnnkit report: {Path(folder).resolve().name}"
    summary = (
        f"{spec.get('cell', '?')} x {spec.get('num_layers', '?')}, hidden "
        f"{spec.get('hidden_size', '?')}, {model.num_parameters():,} parameters, {level} level, "
        f"{mode} mode; {meta.get('step', '?')} steps"
    )
    path = Path(out) if out is not None else Path(folder) / REPORT_NAME
    atomic_write_text(path, page(title, summary, sections))
    return path, notes


def gradient_section(model, reading: TextReading, mode: str, vocab: Vocabulary) -> str:
    """The gradient-through-time chart, with what it measured."""
    stop = vocab.eos_id if mode == "lines" else None
    norms = gradient_through_time(model, reading.sequences, stop)
    ratio = norms[0, -1] / norms[0, 0] if norms[0, 0] > 0 else math.nan
    what = (
        "each line, predicting its end"
        if stop is not None
        else (f"windows of up to {GRADIENT_WINDOW} steps, predicting the next token")
    )
    return (
        f"<p>The loss sits at the last step of {what}, over the text above; the chart shows how "
        f"much of its gradient reaches each earlier state: {norms.shape[1] - 1} steps back, the "
        f"bottom layer keeps {ratio:.2e} of what it gets at the loss.</p>"
        + gradient_chart(norms, model.cell)
    )
