"""ONNX export and import, checked by running the graphs in onnxruntime.

Never with ``onnx.reference``: it ignores ``sequence_lens``, ``clip`` and ``activations``. Every
parameter (weights, biases, peepholes) is drawn at random, so a swapped gate block or bias half
shows. Tests of the layer options ``reverse``, ``peephole="gers"`` and ``proj_size`` skip where
this rnnkit's layers lack them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from conftest import as_tuple, make_layer, random_lengths  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import rnnkit  # noqa: E402
import rnnkit.onnx as rx  # noqa: E402
from rnnkit.layers import Linear  # noqa: E402
from rnnkit.models import LanguageModel, Seq2Seq, SequenceClassifier, SequenceTagger  # noqa: E402
from rnnkit.onnx import OnnxError, export, import_layer, to_onnx  # noqa: E402

TOL = 1e-5
ROOT = Path(__file__).resolve().parent.parent
EXPORTED = ["rnn_tanh", "rnn_relu", "gru", "gru_reset_before", "gru_simple", "lstm"]


def option_available(cls: type, **options) -> bool:
    """Whether the layer takes these options and keeps them as given."""
    try:
        layer = cls(2, 3, **options)
    except TypeError:
        return False
    return all(getattr(layer, k, None) == v for k, v in options.items())


REVERSE = option_available(rnnkit.GRU, reverse=True)
GERS = option_available(rnnkit.LSTM, peephole="gers")
PROJ = option_available(rnnkit.LSTM, proj_size=2)
needs_reverse = pytest.mark.skipif(not REVERSE, reason="layer option reverse not available")
needs_gers = pytest.mark.skipif(not GERS, reason="layer option peephole='gers' not available")
needs_proj = pytest.mark.skipif(not PROJ, reason="layer option proj_size not available")


def session(model) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    source = model if isinstance(model, (str, Path)) else model.SerializeToString()
    return ort.InferenceSession(str(source) if isinstance(source, Path) else source, options)


def run(model, feeds: dict) -> dict[str, np.ndarray]:
    s = session(model)
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, feeds)))


def randomize(module, rng: np.random.Generator, scale: float = 0.6):
    """Every parameter from U(-scale, scale): non-zero biases and peepholes included."""
    for _, value in module.named_parameters():
        value[...] = rng.uniform(-scale, scale, value.shape)
    return module.eval()


def random_states(layer, N: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """A random ``h0`` (and ``c0``); ``h`` has ``proj_size`` features where the LSTM projects."""
    rows = layer.num_layers * layer.num_directions
    sizes = [getattr(layer, "proj_size", 0) or layer.hidden_size, layer.hidden_size]
    count = 2 if layer.mode == "lstm" else 1
    return tuple(
        (0.5 * rng.standard_normal((rows, N, size))).astype(np.float32) for size in sizes[:count]
    )


def check_layer(layer, rng, T: int, N: int, lengths: bool, initial_state: bool, tol=TOL):
    """onnxruntime's outputs and final states equal rnnkit's; returns the exported graph."""
    D = layer.input_size
    x = rng.standard_normal((N, T, D) if layer.batch_first else (T, N, D)).astype(np.float32)
    lens = random_lengths(T, N, rng) if lengths else None
    states = random_states(layer, N, rng) if initial_state else None
    state = None if states is None else states if len(states) == 2 else states[0]
    out, final, _ = layer.forward(x, state, lens)
    feeds = {"input": x}
    if lengths:
        feeds["lengths"] = lens
    if initial_state:
        feeds.update(zip(("h0", "c0"), states))
    model = to_onnx(layer, lengths=lengths, initial_state=initial_state)
    got = run(model, feeds)
    expected = {"output": out, **dict(zip(("h_n", "c_n"), as_tuple(final)))}
    assert sorted(got) == sorted(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, rtol=0, atol=tol, err_msg=f"{name} {layer}")
    return model


# ---------------------------------------------------------------- layers, every option


def random_config(seed: int) -> dict:
    """One draw of every option; the new layer options only where this rnnkit has them (the
    draws are made either way, so the other options stay the same when they land)."""
    rng = np.random.default_rng(seed)
    variant = EXPORTED[seed % len(EXPORTED)]
    L = int(rng.integers(1, 4))
    config = {
        "variant": variant,
        "input_size": int(rng.integers(1, 8)),
        "hidden_size": int(rng.integers(1, 9)),
        "num_layers": L,
        "bidirectional": bool(rng.random() < 0.5),
        "bias": bool(rng.random() < 0.75),
        "batch_first": bool(rng.random() < 0.4),
        "dropout": 0.3 if L > 1 and rng.random() < 0.5 else 0.0,  # left out: eval mode
        "T": int(rng.integers(2, 7)),
        "N": int(rng.integers(1, 5)),
        "lengths": bool(rng.random() < 0.6),
        "initial_state": bool(rng.random() < 0.6),
    }
    reverse, gers, proj = rng.random() < 0.3, rng.random() < 0.5, rng.random() < 0.7
    if REVERSE and reverse and not config["bidirectional"]:
        config["reverse"] = True
    if variant == "lstm" and GERS and gers:
        config["peephole"] = "gers"
    elif variant == "lstm" and PROJ and proj and config["hidden_size"] > 1:
        config["proj_size"] = int(rng.integers(1, config["hidden_size"]))
    return config


CONFIGS = [random_config(seed) for seed in range(42)]


def build(config: dict, rng: np.random.Generator):
    options = {k: v for k, v in config.items() if k not in ("variant", "T", "N", "lengths")}
    options.pop("initial_state")
    D, H = options.pop("input_size"), options.pop("hidden_size")
    return randomize(make_layer(config["variant"], D, H, rng=rng, **options), rng)


@pytest.mark.parametrize("seed", range(len(CONFIGS)))
def test_random_configurations_match_onnxruntime(seed):
    config, rng = CONFIGS[seed], np.random.default_rng(1000 + seed)
    layer = build(config, rng)
    check_layer(layer, rng, config["T"], config["N"], config["lengths"], config["initial_state"])


def test_random_configurations_cover_every_option():
    seen = {key: {str(c.get(key)) for c in CONFIGS} for key in CONFIGS[0]}
    assert seen["variant"] == set(EXPORTED)
    assert seen["num_layers"] == {"1", "2", "3"}
    for key in ("bidirectional", "bias", "batch_first", "lengths", "initial_state"):
        assert seen[key] == {"True", "False"}, key
    assert len(seen["hidden_size"]) >= 5 and seen["dropout"] == {"0.0", "0.3"}
    for key, available in (("reverse", REVERSE), ("peephole", GERS), ("proj_size", PROJ)):
        assert any(key in c for c in CONFIGS) == available, key


def test_dynamic_batch_and_time_axes():
    rng = np.random.default_rng(0)
    layer = randomize(rnnkit.LSTM(3, 4, 2, bidirectional=True), rng)
    s = session(to_onnx(layer, lengths=True, initial_state=False))
    for T, N in ((1, 1), (9, 5), (3, 2)):
        x = rng.standard_normal((T, N, 3)).astype(np.float32)
        lens = rng.integers(1, T + 1, N)
        out, (h, c), _ = layer.forward(x, lengths=lens)
        got = s.run(None, {"input": x, "lengths": lens})
        for a, b in zip(got, (out, h, c)):
            np.testing.assert_allclose(a, b, atol=TOL)


def test_float64_layers_export_as_float32():
    rng = np.random.default_rng(1)
    layer = randomize(rnnkit.GRU(3, 5, dtype=np.float64), rng)
    model = to_onnx(layer)
    assert all(w.data_type == TensorProto.FLOAT for w in model.graph.initializer if "W" in w.name)
    x = rng.standard_normal((4, 2, 3))
    h0 = np.zeros((1, 2, 5))
    out, h, _ = layer.forward(x, h0)
    got = run(model, {"input": x.astype(np.float32), "h0": h0.astype(np.float32)})
    np.testing.assert_allclose(got["output"], out, atol=TOL)


@needs_reverse
@pytest.mark.parametrize("variant", ["rnn_tanh", "gru", "gru_reset_before", "lstm"])
def test_reverse_layers(variant):
    rng = np.random.default_rng(2)
    layer = randomize(make_layer(variant, 3, 4, num_layers=2, reverse=True), rng)
    model = check_layer(layer, rng, 6, 4, lengths=True, initial_state=True)
    directions = {a.s for n in model.graph.node for a in n.attribute if a.name == "direction"}
    assert directions == {b"reverse"}


@needs_gers
@pytest.mark.parametrize("bidirectional", [False, True])
def test_gers_peepholes(bidirectional):
    rng = np.random.default_rng(3)
    layer = randomize(rnnkit.LSTM(3, 5, 2, bidirectional=bidirectional, peephole="gers"), rng)
    model = check_layer(layer, rng, 6, 3, lengths=True, initial_state=True)
    assert all(len(n.input) == 8 and n.input[7] for n in model.graph.node if n.op_type == "LSTM")


@needs_proj
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("lengths", [False, True])
def test_proj_size_exports_as_a_scan_of_the_cell(bidirectional, lengths):
    rng = np.random.default_rng(4)
    layer = randomize(rnnkit.LSTM(3, 6, 2, bidirectional=bidirectional, proj_size=2), rng)
    model = check_layer(layer, rng, 5, 3, lengths=lengths, initial_state=True)
    ops = {n.op_type for n in model.graph.node}
    assert "Scan" in ops and "LSTM" not in ops
    with pytest.raises(OnnxError, match="exports as a Scan, which does not import"):
        import_layer(model)


def test_notes_peepholes_are_refused_naming_what_exports():
    layer = rnnkit.LSTM(3, 4, peephole=True)
    with pytest.raises(OnnxError) as e:
        to_onnx(layer)
    assert "notes' peepholes" in str(e.value) and "peephole='gers'" in str(e.value)


def test_modules_without_an_export_are_refused():
    with pytest.raises(OnnxError, match="Linear has no ONNX export; rnnkit exports RNN, GRU"):
        to_onnx(Linear(2, 3))


def test_missing_extra_is_one_clear_message(monkeypatch):
    monkeypatch.setattr(rx, "onnx", None)
    with pytest.raises(OnnxError, match=r"pip install 'rnnkit\[onnx\]'"):
        to_onnx(rnnkit.RNN(2, 3))
    with pytest.raises(OnnxError, match=r"pip install 'rnnkit\[onnx\]'"):
        import_layer("model.onnx")


# ---------------------------------------------------------------- files


def test_file_is_checked_with_an_ir_version_onnxruntime_reads(tmp_path, durable_writes):
    path = tmp_path / "gru.onnx"
    assert export(rnnkit.GRU(3, 4, 2), path) == [path]
    assert durable_writes == [path]
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == rx.IR_VERSION <= 13  # what onnxruntime 1.31 reads at most
    assert [(o.domain, o.version) for o in model.opset_import] == [("", rx.OPSET)]
    info = json.loads({p.key: p.value for p in model.metadata_props}["rnnkit"])
    assert info == {"version": rnnkit.__version__, "module": "GRU"}
    session(path)  # onnxruntime loads it


# ---------------------------------------------------------------- models

CELLS = ["lstm", "gru", "rnn"]


@pytest.mark.parametrize("cell", CELLS)
def test_language_model_over_a_sequence_and_step_by_step(cell):
    rng = np.random.default_rng(5)
    lm = randomize(LanguageModel(11, 6, 2, cell, embedding_dim=4), rng)
    T, N = 7, 3
    ids = rng.integers(0, 11, (T, N))
    states = random_states(lm.rnn, N, rng)
    logits, final, _ = lm.forward(ids, states if len(states) == 2 else states[0])
    s = session(to_onnx(lm))
    names = [i.name for i in s.get_inputs()]
    assert names == ["ids", "h0", "c0"][: 1 + len(states)]
    whole = s.run(None, dict(zip(names, (ids, *states))))
    np.testing.assert_allclose(whole[0], logits, atol=TOL)
    for a, b in zip(whole[1:], as_tuple(final)):
        np.testing.assert_allclose(a, b, atol=TOL)
    state = list(states)
    for t in range(T):  # generation feeds one token at a time with the returned state
        step, *state = s.run(None, dict(zip(names, (ids[t : t + 1], *state))))
        np.testing.assert_allclose(step[0], logits[t], atol=TOL)


def test_language_model_with_lengths_and_course_gru():
    rng = np.random.default_rng(6)
    lm = randomize(LanguageModel(9, 5, 1, "gru", rnn_options={"reset_after": False}), rng)
    ids, lens = rng.integers(0, 9, (6, 4)), np.array([6, 1, 3, 5])
    logits, h, _ = lm.forward(ids, None, lens)
    got = run(to_onnx(lm, lengths=True, initial_state=False), {"ids": ids, "lengths": lens})
    np.testing.assert_allclose(got["logits"], logits, atol=TOL)
    np.testing.assert_allclose(got["h_n"], h, atol=TOL)


CLASSIFIERS = [
    (pooling, bi, vectors, lengths)
    for pooling in ("last", "mean", "max")
    for bi in (False, True)
    for vectors in (False, True)
    for lengths in (False, True)
]


@pytest.mark.parametrize("pooling, bidirectional, vectors, lengths", CLASSIFIERS)
def test_classifier(pooling, bidirectional, vectors, lengths):
    rng = np.random.default_rng(len(CLASSIFIERS))
    cell = CELLS[CLASSIFIERS.index((pooling, bidirectional, vectors, lengths)) % 3]
    model = SequenceClassifier(
        None if vectors else 10,
        3,
        5,
        2,
        cell,
        bidirectional,
        input_size=4 if vectors else None,
        pooling=pooling,
    )
    randomize(model, rng)
    T, N = 6, 4
    x = (
        rng.standard_normal((T, N, 4)).astype(np.float32)
        if vectors
        else rng.integers(0, 10, (T, N))
    )
    lens = random_lengths(T, N, rng) if lengths else None
    logits, _ = model.forward(x, lens)
    feeds = {"inputs": x, **({"lengths": lens} if lengths else {})}
    got = run(to_onnx(model, lengths=lengths), feeds)
    np.testing.assert_allclose(got["logits"], logits, atol=TOL)


@pytest.mark.parametrize("cell", CELLS)
def test_tagger(cell):
    rng = np.random.default_rng(7)
    model = randomize(SequenceTagger(10, 4, 5, 2, cell), rng)
    ids, lens = rng.integers(0, 10, (6, 3)), np.array([2, 6, 4])
    logits, _ = model.forward(ids, lens)
    got = run(to_onnx(model, lengths=True), {"ids": ids, "lengths": lens})
    np.testing.assert_allclose(got["logits"], logits, atol=TOL)


def onnx_greedy_decode(encoder, decoder, src, lengths, bos_id, eos_id, max_len):
    """Greedy decoding with the two graphs alone, as ``Seq2Seq.greedy_decode`` does it."""
    state = session(encoder).run(None, {"src": src, "src_lengths": lengths})
    step = session(decoder)
    names = [i.name for i in step.get_inputs()]
    N = src.shape[1]
    ids, done, outputs = np.full(N, bos_id), np.zeros(N, dtype=bool), [[] for _ in range(N)]
    for _ in range(max_len):
        logits, *state = step.run(None, dict(zip(names, (ids, *state))))
        ids = logits.argmax(axis=1)
        for n in np.flatnonzero(~done):
            if ids[n] == eos_id:
                done[n] = True
            else:
                outputs[n].append(int(ids[n]))
        if done.all():
            break
    return outputs


@pytest.mark.parametrize("cell", CELLS)
def test_seq2seq_greedy_decode_gives_the_same_tokens(cell, tmp_path):
    rng = np.random.default_rng(6)  # a draw whose decodes differ in length and tokens
    model = randomize(Seq2Seq(9, 8, 6, 2, cell, bos_id=1, eos_id=2), rng, scale=1.5)
    src, lens = rng.integers(0, 9, (7, 5)), np.array([7, 3, 1, 5, 6])
    paths = export(model, tmp_path / "mt.onnx", lengths=True)
    assert [p.name for p in paths] == ["mt.encoder.onnx", "mt.decoder.onnx"]
    encoder, decoder = (onnx.load(str(p)) for p in paths)
    info = json.loads({p.key: p.value for p in decoder.metadata_props}["rnnkit"])
    assert (info["bos_id"], info["eos_id"]) == (1, 2)
    expected, _ = model.greedy_decode(src, lens, max_len=12)
    assert onnx_greedy_decode(encoder, decoder, src, lens, 1, 2, 12) == expected
    assert len({len(t) for t in expected}) > 1  # some end at eos, some run on


# ---------------------------------------------------------------- import


ROUND_TRIPS = [
    (variant, {"bidirectional": bi, "bias": bias, "batch_first": bf})
    for variant in ("rnn_tanh", "rnn_relu", "gru", "gru_reset_before", "lstm")
    for bi, bias, bf in ((False, True, False), (True, False, True))
] + [
    pytest.param("gru", {"reverse": True}, marks=needs_reverse, id="gru-reverse"),
    pytest.param("lstm", {"peephole": "gers", "bidirectional": True}, marks=needs_gers, id="gers"),
]


@pytest.mark.parametrize("variant, options", ROUND_TRIPS)
def test_round_trip_gives_the_same_weights_and_outputs(variant, options, tmp_path):
    rng = np.random.default_rng(9)
    batch_first = options.get("batch_first", False)
    layer = make_layer(variant, 3, 5, num_layers=2, **options)
    randomize(layer, rng)
    path = export(layer, tmp_path / "layer.onnx")[0]
    back = import_layer(path, batch_first=batch_first)
    assert repr(back) == repr(layer)
    assert type(back) is type(layer) and back.mode == layer.mode
    original, imported = layer.state_dict(), back.state_dict()
    assert sorted(imported) == sorted(original)
    for name, value in original.items():
        np.testing.assert_array_equal(imported[name], value, err_msg=name)
    x = rng.standard_normal((4, 6, 3)).astype(np.float32)
    lens = np.array([6, 2, 5, 1]) if batch_first else np.array([4, 1, 3, 2, 4, 2])
    for a, b in zip(layer.forward(x, lengths=lens)[:2], back.forward(x, lengths=lens)[:2]):
        for u, v in zip(as_tuple(a), as_tuple(b)):
            np.testing.assert_array_equal(u, v)


def test_simplified_gru_comes_back_as_a_gru_with_the_reset_gate_open():
    rng = np.random.default_rng(10)
    layer = randomize(make_layer("gru_simple", 3, 4, num_layers=2), rng)
    back = import_layer(to_onnx(layer))
    assert back.mode in ("gru", "gru_reset_before")
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    out, h, _ = layer.forward(x)
    out2, h2, _ = back.forward(x)
    np.testing.assert_allclose(out2, out, atol=TOL)


def test_the_recurrent_layer_of_a_model_export_imports():
    model = randomize(LanguageModel(7, 4, 2, "lstm"), np.random.default_rng(11))
    back = import_layer(to_onnx(model))
    for name, value in model.rnn.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[name], value)


def foreign_lstm(rng, H=4, D=3, direction="bidirectional", P=False, **attrs):
    """An ONNX LSTM written by hand in ONNX's own gate order, weights in Constant nodes."""
    dirs = 2 if direction == "bidirectional" else 1
    arrays = {
        "W": rng.uniform(-0.6, 0.6, (dirs, 4 * H, D)),
        "R": rng.uniform(-0.6, 0.6, (dirs, 4 * H, H)),
        "B": rng.uniform(-0.6, 0.6, (dirs, 8 * H)),
    }
    if P:
        arrays["P"] = rng.uniform(-0.6, 0.6, (dirs, 3 * H))
    nodes = [
        helper.make_node("Constant", [], [k], value=numpy_helper.from_array(v.astype(np.float32)))
        for k, v in arrays.items()
    ]
    inputs = ["X", "W", "R", "B", "", "", ""] + (["P"] if P else [])
    nodes.append(
        helper.make_node(
            "LSTM",
            inputs,
            ["Y", "Y_h", "Y_c"],
            name="lstm",
            hidden_size=H,
            direction=direction,
            **attrs,
        )
    )
    graph = helper.make_graph(
        nodes,
        "foreign",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "N", D])],
        [
            helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["T", dirs, "N", H]),
            helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, [dirs, "N", H]),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_a_hand_written_onnx_lstm_imports_and_runs_the_same():
    rng = np.random.default_rng(12)
    model = foreign_lstm(rng)
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    got = run(model, {"X": x})
    layer = import_layer(model)
    assert layer.bidirectional and layer.bias and not layer.batch_first
    out, (h, _), _ = layer.forward(x)
    np.testing.assert_allclose(out, got["Y"].transpose(0, 2, 1, 3).reshape(5, 2, 8), atol=TOL)
    np.testing.assert_allclose(h, got["Y_h"], atol=TOL)
    assert import_layer(foreign_lstm(rng, layout=1)).batch_first


@pytest.mark.parametrize(
    "attrs, named",
    [
        ({"clip": 3.0}, ["clip=3"]),
        ({"input_forget": 1}, ["input_forget=1"]),
        ({"activations": ["Sigmoid", "Relu", "Tanh"] * 2}, ["activations="]),
        (
            {"clip": 0.5, "input_forget": 1, "activations": ["HardSigmoid", "Tanh", "Tanh"] * 2},
            ["clip=0.5", "input_forget=1", "HardSigmoid"],
        ),
    ],
)
def test_attributes_rnnkit_lacks_are_named(attrs, named):
    with pytest.raises(OnnxError) as e:
        import_layer(foreign_lstm(np.random.default_rng(13), **attrs))
    message = str(e.value)
    assert message.startswith("the LSTM node 'lstm' uses ") and "rnnkit's layers lack" in message
    assert all(n in message for n in named), message


@pytest.mark.skipif(REVERSE, reason="this rnnkit has reverse: test_reverse_import covers it")
def test_reverse_import_without_the_option_is_refused():
    with pytest.raises(OnnxError, match="needs the layer option reverse=True"):
        import_layer(foreign_lstm(np.random.default_rng(14), direction="reverse"))


@pytest.mark.skipif(GERS, reason="this rnnkit has peephole='gers': test_gers_import covers it")
def test_peephole_import_without_the_option_is_refused():
    with pytest.raises(OnnxError, match="needs the layer option peephole='gers'"):
        import_layer(foreign_lstm(np.random.default_rng(15), direction="forward", P=True))


@needs_reverse
def test_reverse_import():
    rng = np.random.default_rng(14)
    model = foreign_lstm(rng, direction="reverse")
    layer = import_layer(model)
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    out, _, _ = layer.forward(x)
    assert layer.reverse
    np.testing.assert_allclose(out, run(model, {"X": x})["Y"][:, 0], atol=TOL)


@needs_gers
def test_gers_import():
    rng = np.random.default_rng(15)
    model = foreign_lstm(rng, direction="forward", P=True)
    layer = import_layer(model)
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    out, _, _ = layer.forward(x)
    assert layer.peephole == "gers"
    np.testing.assert_allclose(out, run(model, {"X": x})["Y"][:, 0], atol=TOL)


def test_graphs_that_hold_no_layer_are_refused(tmp_path):
    with pytest.raises(OnnxError, match="the model has no RNN, GRU or LSTM node"):
        import_layer(helper.make_model(helper.make_graph([], "empty", [], [])))
    with pytest.raises(OnnxError, match="no such file"):
        import_layer(tmp_path / "missing.onnx")
    (tmp_path / "text.onnx").write_text("not a model", encoding="utf-8")
    with pytest.raises(OnnxError, match="cannot read .*text.onnx as an ONNX model"):
        import_layer(tmp_path / "text.onnx")


def test_nodes_that_do_not_stack_are_refused():
    model = to_onnx(rnnkit.LSTM(3, 4, 2))
    second = [n for n in model.graph.node if n.op_type == "LSTM"][1]
    next(a for a in second.attribute if a.name == "direction").s = b"reverse"
    with pytest.raises(OnnxError, match="do not form one stack: .* differs from the first in"):
        import_layer(model)


def test_weights_of_the_wrong_shape_are_refused():
    model = foreign_lstm(np.random.default_rng(18))
    del model.graph.node[0].attribute[:]  # W becomes (1, 16, 3): one direction, not two
    w = np.zeros((1, 16, 3), np.float32)
    model.graph.node[0].attribute.append(helper.make_attribute("value", numpy_helper.from_array(w)))
    with pytest.raises(OnnxError, match=r"has W of shape \(1, 16, 3\), where hidden_size=4 and "):
        import_layer(model)


def test_weights_computed_in_the_graph_are_refused():
    model = foreign_lstm(np.random.default_rng(17))
    weights = next(n for n in model.graph.node if n.output[0] == "W")
    weights.op_type = "Identity"  # W now comes from an operator, not from the file
    with pytest.raises(OnnxError, match="computes its input 'W' inside the graph"):
        import_layer(model)


# ---------------------------------------------------------------- command line and example


def rnnkit_cli(cwd: Path, *args: str, rc: int = 0) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "rnnkit", *args], cwd=cwd, capture_output=True, text=True
    )
    assert result.returncode == rc, result.stderr
    return result


def example(cwd: Path, *args: str, rc: int = 0) -> subprocess.CompletedProcess:
    """Run examples/onnx_names.py where rnnkit cannot be imported."""
    code = (
        "import runpy, sys; sys.modules['rnnkit'] = None; "
        f"sys.argv = ['onnx_names.py', *{list(args)!r}]; "
        f"runpy.run_path({str(ROOT / 'examples' / 'onnx_names.py')!r}, run_name='__main__')"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True)
    assert result.returncode == rc, result.stderr
    return result


@pytest.fixture(scope="module")
def demo_export(tmp_path_factory) -> Path:
    """The demo's model (its configuration, trained for fewer steps), exported."""
    from rnnkit.cli.train import DEMO

    work = tmp_path_factory.mktemp("onnx_demo")
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in {**DEMO, "steps": 40}.items()]
    rnnkit_cli(work, "train", "--out", "run", "--progress", "none", *flags)
    result = rnnkit_cli(work, "export", "run", "names.onnx")
    assert "exported to names.onnx" in result.stdout
    return work


SAMPLINGS = [
    ["--greedy"],  # one sample: they would all be the same
    ["--greedy", "--prime", "ty"],
    ["--num", "12", "--temperature", "0.8", "--seed", "3"],
    ["--num", "8", "--top-k", "4", "--seed", "5"],
    ["--num", "8", "--top-p", "0.9", "--prime", "a", "--seed", "7"],
]


@pytest.mark.parametrize("flags", SAMPLINGS, ids=[" ".join(f) for f in SAMPLINGS])
def test_example_samples_what_rnnkit_samples(demo_export, flags):
    expected = rnnkit_cli(demo_export, "sample", "run", *flags).stdout.splitlines()[1:]
    got = example(demo_export, "names.onnx", *flags).stdout.splitlines()
    num = int(flags[flags.index("--num") + 1]) if "--num" in flags else 1
    assert got == expected and len(got) == num
    assert len(set(got)) > 1 or "--greedy" in flags


def test_export_command_bad_input_is_one_line(tmp_path):
    err = rnnkit_cli(tmp_path, "export", "nowhere", "m.onnx", rc=2).stderr
    assert err.count("\n") == 1 and "nowhere is not a folder" in err


def test_example_bad_input_is_one_line(tmp_path):
    export(rnnkit.GRU(2, 3), tmp_path / "layer.onnx")
    for args, needle in (
        (["missing.onnx"], "missing.onnx: no such file; write one with: rnnkit export"),
        (["layer.onnx"], "layer.onnx holds no vocabulary"),
        (["layer.onnx", "--temperature", "0"], "--temperature must be > 0"),
    ):
        err = example(tmp_path, *args, rc=2).stderr
        assert err.count("\n") == 1 and needle in err, err
