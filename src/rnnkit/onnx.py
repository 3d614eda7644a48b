"""ONNX export and import, checked against onnxruntime (the optional extra ``rnnkit[onnx]``).

:func:`export` writes a layer or a model as an ONNX graph that onnxruntime runs from Python,
C++, C#, Java or JavaScript; :func:`import_layer` reads the weights of ONNX ``RNN``, ``GRU`` and
``LSTM`` nodes back into an rnnkit layer.

The two sides stack their gates in different orders (one table, :mod:`rnnkit.gates`):

============================  ==============  ===========  ==========
                              LSTM            GRU          peepholes
============================  ==============  ===========  ==========
rnnkit, PyTorch               i, f, g, o      r, z, n      i, f, o
ONNX                          i, o, f, c      z, r, h      i, o, f
============================  ==============  ===========  ==========

A direction's weights are ONNX's ``W[d]`` (``weight_ih``), ``R[d]`` (``weight_hh``) and
``B[d] = [Wb, Rb]`` (``bias_ih`` then ``bias_hh``), each in ONNX's gate order. The GRU's
``linear_before_reset=1`` is rnnkit's default ``reset_after=True`` (PyTorch's form), ``0`` the
course's ``reset_after=False``; the simplified GRU exports as a full GRU whose reset gate is held
open (zero weights, bias 40: σ(40) = 1 in float32).

Graphs are float32 and time-major inside: onnxruntime's recurrent kernels have no float64 and
reject ``layout=1``, so a ``batch_first`` layer transposes at the graph's boundary. Batch and time
axes are dynamic. Variable lengths go through ONNX's ``sequence_lens``, which has rnnkit's
meaning: outputs past a sequence's end are zero, the final state is the one at its last step,
and a reverse direction starts at that step.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import numpy as np

from .checkpoint import atomic_write_bytes
from .gates import (
    GRU_GATES,
    LSTM_GATES,
    ONNX_GRU_GATES,
    ONNX_LSTM_GATES,
    ONNX_PEEPHOLE_GATES,
    PEEPHOLE_GATES,
    RNN_GATES,
    reorder_gates,
)
from .layers import Embedding, Linear
from .models import LanguageModel, Seq2Seq, SequenceClassifier, SequenceTagger
from .recurrent import GRU, LSTM, RNN, RNNBase
from .version import __version__

try:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
except ImportError:  # the optional extra: said when it is needed
    onnx = None

OPSET = 17  # onnxruntime has run it since 1.13
IR_VERSION = 8  # opset 17's; onnx 1.23 writes 14 by default, which onnxruntime 1.31 refuses
RESET_GATE_OPEN = 40.0  # reset-gate bias of an exported simplified GRU: σ(40) = 1 in float32
EXPORTS = "RNN, GRU, LSTM, LanguageModel, SequenceClassifier, SequenceTagger and Seq2Seq"
ONNX_OPS = {"rnn": "RNN", "gru": "GRU", "lstm": "LSTM"}
# rnnkit's and ONNX's gate orders of each operator.
GATE_ORDERS = {
    "RNN": (RNN_GATES, RNN_GATES),
    "GRU": (GRU_GATES, ONNX_GRU_GATES),
    "LSTM": (LSTM_GATES, ONNX_LSTM_GATES),
}
DEFAULT_ACTIVATIONS = {
    "RNN": ["Tanh"],
    "GRU": ["Sigmoid", "Tanh"],
    "LSTM": ["Sigmoid", "Tanh", "Tanh"],
}


class OnnxError(ValueError):
    """A module or option with no ONNX form, or an ONNX graph that rnnkit cannot read."""


def _need_onnx() -> None:
    if onnx is None:
        raise OnnxError(
            "ONNX export and import need the onnx package: pip install 'rnnkit[onnx]' "
            "(onnx, and onnxruntime to run the graphs)"
        )


# ---------------------------------------------------------------- building a graph


class _Graph:
    """An ONNX graph being assembled: nodes, stored weights (initializers), inputs, outputs."""

    def __init__(self, parent: _Graph | None = None) -> None:
        self.nodes: list = []
        self.weights: list = []
        self.inputs: list = []
        self.outputs: list = []
        self.counter = parent.counter if parent else itertools.count(1)  # names unique in all

    def fresh(self, base: str) -> str:
        return f"{base}_{next(self.counter)}"

    def const(self, base: str, array: np.ndarray) -> str:
        name = self.fresh(base)
        self.weights.append(numpy_helper.from_array(np.asarray(array, order="C"), name))
        return name

    def ints(self, *values: int) -> str:
        return self.const("ints", np.array(values, dtype=np.int64))

    def op(self, op_type: str, inputs: list[str], outputs: int = 1, **attrs) -> str | list[str]:
        names = [self.fresh(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, **attrs))
        return names[0] if outputs == 1 else names

    def input(self, name: str, dtype: int, shape: list, doc: str) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, dtype, shape, doc))
        return name

    def output(self, tensor: str, name: str, shape: list, doc: str) -> None:
        self.nodes.append(helper.make_node("Identity", [tensor], [name]))
        self.outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape, doc))

    def model(self, module: object, metadata: dict | None, doc: str) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, type(module).__name__, self.inputs, self.outputs, self.weights
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            ir_version=IR_VERSION,
            producer_name="rnnkit",
            producer_version=__version__,
            doc_string=doc,
        )
        info = {"version": __version__, "module": type(module).__name__, **(metadata or {})}
        helper.set_model_props(model, {"rnnkit": json.dumps(info)})
        onnx.checker.check_model(model, full_check=True)
        return model


# ---------------------------------------------------------------- recurrent layers


class _Form:
    """How one rnnkit layer is written in ONNX: operator, attributes, gate orders."""

    def __init__(self, layer: RNNBase):
        kind = layer.mode.split("_")[0]
        self.op = ONNX_OPS[kind]
        self.hidden_size, self.dirs = layer.hidden_size, layer.num_directions
        self.num_states = 2 if self.op == "LSTM" else 1
        self.simplified = bool(getattr(layer, "simplified", False))
        self.peephole = getattr(layer, "peephole", False)
        self.proj_size = int(getattr(layer, "proj_size", 0) or 0)
        self.reverse = bool(getattr(layer, "reverse", False))
        if self.peephole is True or self.peephole == "notes":
            raise OnnxError(
                f"{type(layer).__name__}(peephole={self.peephole!r}) has the notes' peepholes, "
                f"where the output gate sees c<t-1>; ONNX's LSTM cannot express them (its output "
                f"gate sees the new c<t>). An LSTM with peephole='gers' or without peepholes "
                f"exports"
            )
        direction = "bidirectional" if layer.bidirectional else "forward"
        self.attrs: dict = {
            "hidden_size": self.hidden_size,
            "direction": "reverse" if self.reverse else direction,
        }
        if getattr(layer, "nonlinearity", "tanh") == "relu":
            self.attrs["activations"] = ["Relu"] * self.dirs
        if self.op == "GRU":  # the simplified GRU has no reset gate: either form holds
            self.attrs["linear_before_reset"] = int(layer.reset_after or self.simplified)
        self.source, self.target = GATE_ORDERS[self.op]

    def direction_weights(self, weights: dict, sfx: str) -> dict[str, np.ndarray | None]:
        """One direction's ``W, R, B, P`` in ONNX's gate order (``B``, ``P`` None if absent)."""
        get = {k: weights.get(k + sfx) for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
        if self.simplified:
            get = _open_reset_gate(get, self.hidden_size)
        H = self.hidden_size
        out = {
            "W": reorder_gates(get["weight_ih"], self.source, self.target, H),
            "R": reorder_gates(get["weight_hh"], self.source, self.target, H),
            "B": None,
            "P": None,
        }
        if get["bias_ih"] is not None:
            halves = [get["bias_ih"], get["bias_hh"]]  # B = [Wb, Rb]
            out["B"] = np.concatenate(
                [reorder_gates(b, self.source, self.target, H) for b in halves]
            )
        if self.peephole == "gers":
            rows = weights["weight_peephole" + sfx]  # (3, H), gates i, f, o
            out["P"] = reorder_gates(rows.reshape(-1), PEEPHOLE_GATES, ONNX_PEEPHOLE_GATES, H)
        return out


def _open_reset_gate(weights: dict, H: int) -> dict:
    """A simplified GRU's weights (gates z, n) as a full GRU's (r, z, n) whose reset gate is
    always open: zero weights and bias ``RESET_GATE_OPEN``, so Γr * a<t-1> = a<t-1>."""
    w_ih = weights["weight_ih"]
    b_ih, b_hh = weights["bias_ih"], weights["bias_hh"]
    if b_ih is None:
        b_ih = b_hh = np.zeros(2 * H, dtype=w_ih.dtype)
    r_bias = np.full(H, RESET_GATE_OPEN, dtype=w_ih.dtype)
    zeros = np.zeros((H, w_ih.shape[1]), dtype=w_ih.dtype)
    return {
        "weight_ih": np.concatenate([zeros, w_ih]),
        "weight_hh": np.concatenate([np.zeros((H, H), dtype=w_ih.dtype), weights["weight_hh"]]),
        "bias_ih": np.concatenate([r_bias, b_ih]),
        "bias_hh": np.concatenate([np.zeros(H, dtype=w_ih.dtype), b_hh]),
    }


def _add_layer_node(
    g: _Graph, form: _Form, weights: dict, k: int, x: str, lengths: str, initial: list[str]
) -> tuple[str, list[str]]:
    """One layer of the stack as one ONNX node: ``x (T, N, D)`` -> ``Y (T, dirs, N, H)``."""
    sfxs = [f"_l{k}", f"_l{k}_reverse"][: form.dirs]
    per_dir = [form.direction_weights(weights, s) for s in sfxs]

    def stacked(key: str) -> str:
        if per_dir[0][key] is None:
            return ""
        return g.const(f"{key}_l{k}", np.stack([d[key] for d in per_dir]).astype(np.float32))

    inputs = [x, stacked("W"), stacked("R"), stacked("B"), lengths]
    inputs += initial or [""] * form.num_states
    if form.op == "LSTM":
        inputs.append(stacked("P"))
    while inputs[-1] == "":  # trailing optional inputs are left out
        inputs.pop()
    y, *final = g.op(form.op, inputs, outputs=1 + form.num_states, **form.attrs)
    return y, final


def _add_projected_lstm(
    g: _Graph, form: _Form, weights: dict, k: int, x: str, lengths: str, initial: list[str]
) -> tuple[str, list[str]]:
    """One layer of an LSTM with projections (``proj_size``), which ONNX's LSTM lacks, as a
    ``Scan`` over the cell: ``x (T, N, D)`` -> ``(T, N, dirs*P)`` and the final ``h``, ``c``."""
    H, P = form.hidden_size, form.proj_size
    keep = _real_steps(g, x, lengths) if lengths else ""  # (T, N, 1)
    outputs, finals = [], [[], []]
    for d, sfx in enumerate([f"_l{k}", f"_l{k}_reverse"][: form.dirs]):
        xw = g.op("MatMul", [x, g.const("w_ih_t", weights["weight_ih" + sfx].T.astype(np.float32))])
        if "bias_ih" + sfx in weights:
            b = weights["bias_ih" + sfx] + weights["bias_hh" + sfx]
            xw = g.op("Add", [xw, g.const("b", b.astype(np.float32))])  # (T, N, 4H)
        backwards = d == 1 or form.reverse
        flip = backwards and lengths  # each sequence reversed within its length, then back
        if flip:
            lengths64 = g.op("Cast", [lengths], to=TensorProto.INT64)
            xw = g.op("ReverseSequence", [xw, lengths64], batch_axis=1, time_axis=0)
        start = [
            _direction_state(g, s, d, x, size) for s, size in zip(initial or [None] * 2, (P, H))
        ]
        body = _projected_cell(g, form, weights, sfx, bool(keep))
        scan_inputs = [xw, keep] if keep else [xw]
        way = [int(backwards and not flip)]
        h, c, y = g.op(
            "Scan",
            start + scan_inputs,
            outputs=3,
            body=body,
            num_scan_inputs=len(scan_inputs),
            scan_input_directions=way * len(scan_inputs),
            scan_output_directions=way,
        )
        if flip:
            y = g.op("ReverseSequence", [y, lengths64], batch_axis=1, time_axis=0)
        outputs.append(y)
        finals[0].append(g.op("Unsqueeze", [h, g.ints(0)]))
        finals[1].append(g.op("Unsqueeze", [c, g.ints(0)]))
    merged = [f[0] if len(f) == 1 else g.op("Concat", f, axis=0) for f in finals]
    return (outputs[0] if len(outputs) == 1 else g.op("Concat", outputs, axis=2)), merged


def _direction_state(g: _Graph, state: str | None, d: int, x: str, size: int) -> str:
    """Direction ``d``'s ``(N, size)`` initial state from ``(dirs, N, size)``, or zeros."""
    if state:
        return g.op("Gather", [state, g.const("d", np.int64(d))], axis=0)
    shape = g.op("Concat", [g.op("Shape", [x], start=1, end=2), g.ints(size)], axis=0)
    return g.op("ConstantOfShape", [shape], value=numpy_helper.from_array(np.zeros(1, np.float32)))


def _projected_cell(g: _Graph, form: _Form, weights: dict, sfx: str, masked: bool):
    """The ``Scan`` body of one LSTM step with projection (PyTorch's ``proj_size``):
    ``(a<t-1>, c<t-1>, xw<t>[, keep<t>]) -> (a<t>, c<t>, y<t>)``."""
    H, P = form.hidden_size, form.proj_size
    b = _Graph(g)
    names = [b.fresh(n) for n in ("a_prev", "c_prev", "xw_t", "keep_t")]
    a_prev, c_prev, xw_t, keep_t = names
    types = [(TensorProto.FLOAT, ["N", P]), (TensorProto.FLOAT, ["N", H])]
    types += [(TensorProto.FLOAT, ["N", 4 * H]), (TensorProto.BOOL, ["N", 1])]
    for name, (dtype, shape) in list(zip(names, types))[: 3 + masked]:
        b.input(name, dtype, shape, "")
    w_hh_t = g.const("w_hh_t", weights["weight_hh" + sfx].T.astype(np.float32))  # (P, 4H)
    z = b.op("Add", [xw_t, b.op("MatMul", [a_prev, w_hh_t])])  # (N, 4H), gates i, f, g, o
    z_i, z_f, z_g, z_o = b.op("Split", [z], outputs=4, axis=1)
    peep = None
    if form.peephole == "gers":  # Γu and Γf see c<t-1>, Γo sees c<t>
        peep = [g.const("p", row.astype(np.float32)) for row in weights["weight_peephole" + sfx]]
        z_i = b.op("Add", [z_i, b.op("Mul", [c_prev, peep[0]])])
        z_f = b.op("Add", [z_f, b.op("Mul", [c_prev, peep[1]])])
    gamma_u, gamma_f = b.op("Sigmoid", [z_i]), b.op("Sigmoid", [z_f])
    c_tilde = b.op("Tanh", [z_g])
    c_t = b.op("Add", [b.op("Mul", [gamma_f, c_prev]), b.op("Mul", [gamma_u, c_tilde])])
    if peep:
        z_o = b.op("Add", [z_o, b.op("Mul", [c_t, peep[2]])])
    gamma_o = b.op("Sigmoid", [z_o])
    w_hr_t = g.const("w_hr_t", weights["weight_hr" + sfx].T.astype(np.float32))  # (H, P)
    a_t = b.op("MatMul", [b.op("Mul", [gamma_o, b.op("Tanh", [c_t])]), w_hr_t])  # W_hr (Γo*tanh c)
    y_t = a_t
    if masked:  # past a sequence's end: state kept, output zero
        a_t = b.op("Where", [keep_t, a_t, a_prev])
        c_t = b.op("Where", [keep_t, c_t, c_prev])
        y_t = b.op("Where", [keep_t, y_t, g.const("zero", np.float32(0))])
    for tensor, shape in ((a_t, ["N", P]), (c_t, ["N", H]), (y_t, ["N", P])):
        b.output(tensor, b.fresh("out"), shape, "")
    return helper.make_graph(b.nodes, b.fresh("lstm_step"), b.inputs, b.outputs)


def _merge_directions(g: _Graph, y: str, dirs: int) -> str:
    """ONNX's ``Y (T, dirs, N, H)`` -> rnnkit's ``(T, N, dirs*H)``, forward direction first."""
    if dirs == 1:
        return g.op("Squeeze", [y, g.ints(1)])
    return g.op("Reshape", [g.op("Transpose", [y], perm=[0, 2, 1, 3]), g.ints(0, 0, -1)])


def _add_recurrent(
    g: _Graph, layer: RNNBase, x: str, lengths: str, state: list[str]
) -> tuple[str, list[str]]:
    """The nodes of a recurrent layer: ``x`` in the layer's layout -> ``(output, final states)``.

    ``lengths`` names an int32 ``(N,)`` tensor or is ``""``; ``state`` names ``h0`` (and ``c0``),
    ``(L*dirs, N, H)``, or is empty for zeros. The final states are ``h_n`` (and ``c_n``).
    """
    form = _Form(layer)
    weights = layer.state_dict()
    if layer.batch_first:
        x = g.op("Transpose", [x], perm=[1, 0, 2])
    L, dirs = layer.num_layers, form.dirs
    finals: list[list[str]] = [[] for _ in range(form.num_states)]
    per_layer = [[s] if L == 1 else g.op("Split", [s], outputs=L, axis=0) for s in state]
    for k in range(L):
        initial = [parts[k] for parts in per_layer]  # (dirs, N, H) each
        if form.proj_size:
            x, final = _add_projected_lstm(g, form, weights, k, x, lengths, initial)
        else:
            y, final = _add_layer_node(g, form, weights, k, x, lengths, initial)
            x = _merge_directions(g, y, dirs)
        for i, s in enumerate(final):
            finals[i].append(s)
    if layer.batch_first:
        x = g.op("Transpose", [x], perm=[1, 0, 2])
    return x, [f[0] if L == 1 else g.op("Concat", f, axis=0) for f in finals]


def _state_shapes(layer: RNNBase) -> list[list]:
    """Shapes of ``h`` (and ``c``) of a layer, the batch axis named N."""
    rows = layer.num_layers * layer.num_directions
    proj = int(getattr(layer, "proj_size", 0) or 0)
    h = [rows, "N", proj or layer.hidden_size]
    return [h, [rows, "N", layer.hidden_size]] if layer.mode == "lstm" else [h]


def _state_inputs(g: _Graph, layer: RNNBase, names: tuple[str, ...] = ("h0", "c0")) -> list[str]:
    doc = "initial {} of every layer and direction, (num_layers * num_directions, N, H)"
    shapes = _state_shapes(layer)
    return [
        g.input(name, TensorProto.FLOAT, shape, doc.format(what))
        for name, shape, what in zip(names, shapes, ("hidden state", "cell state"))
    ]


def _state_outputs(g: _Graph, layer: RNNBase, finals: list[str]) -> None:
    doc = "final {} of every layer and direction, each at its sequence's last step"
    for tensor, name, shape, what in zip(
        finals, ("h_n", "c_n"), _state_shapes(layer), ("hidden state", "cell state")
    ):
        g.output(tensor, name, shape, doc.format(what))


def _lengths_input(g: _Graph, name: str = "lengths") -> str:
    """An int64 ``(N,)`` graph input, cast to the int32 that ``sequence_lens`` takes."""
    g.input(name, TensorProto.INT64, ["N"], "length of each sequence, in [1, T]")
    return g.op("Cast", [name], to=TensorProto.INT32)


# ---------------------------------------------------------------- the graphs of each module


def _embedding(g: _Graph, emb: Embedding, ids: str) -> str:
    return g.op("Gather", [g.const("embedding", emb.params["weight"].astype(np.float32)), ids])


def _linear(g: _Graph, lin: Linear, x: str) -> str:
    y = g.op("MatMul", [x, g.const("weight", lin.params["weight"].T.astype(np.float32))])
    if "bias" in lin.params:
        y = g.op("Add", [y, g.const("bias", lin.params["bias"].astype(np.float32))])
    return y


def _layer_graph(layer: RNNBase, lengths: bool, initial_state: bool) -> _Graph:
    g = _Graph()
    D, H = layer.input_size, layer.num_directions * _state_shapes(layer)[0][2]
    order, axes = ("(N, T, D)", ["N", "T"]) if layer.batch_first else ("(T, N, D)", ["T", "N"])
    x = g.input("input", TensorProto.FLOAT, [*axes, D], f"the sequences, {order}")
    seq = _lengths_input(g) if lengths else ""
    state = _state_inputs(g, layer) if initial_state else []
    y, finals = _add_recurrent(g, layer, x, seq, state)
    g.output(y, "output", [*axes, H], "every step's top-layer output, directions concatenated")
    _state_outputs(g, layer, finals)
    return g


def _ids_input(g: _Graph, name: str, shape: list) -> str:
    return g.input(name, TensorProto.INT64, shape, "token ids")


def _language_model_graph(model: LanguageModel, lengths: bool, initial_state: bool) -> _Graph:
    g = _Graph()
    ids = _ids_input(g, "ids", ["T", "N"])
    seq = _lengths_input(g) if lengths else ""
    state = _state_inputs(g, model.rnn) if initial_state else []
    out, finals = _add_recurrent(g, model.rnn, _embedding(g, model.embedding, ids), seq, state)
    V = model.head.out_features
    g.output(_linear(g, model.head, out), "logits", ["T", "N", V], "next-token logits")
    _state_outputs(g, model.rnn, finals)
    return g


def _tagger_graph(model: SequenceTagger, lengths: bool) -> _Graph:
    g = _Graph()
    ids = _ids_input(g, "ids", ["T", "N"])
    seq = _lengths_input(g) if lengths else ""
    out, _ = _add_recurrent(g, model.rnn, _embedding(g, model.embedding, ids), seq, [])
    C = model.head.out_features
    g.output(_linear(g, model.head, out), "logits", ["T", "N", C], "tag logits of every token")
    return g


def _classifier_graph(model: SequenceClassifier, lengths: bool) -> _Graph:
    g = _Graph()
    if model.embedding is None:
        D = model.rnn.input_size
        x = g.input("inputs", TensorProto.FLOAT, ["T", "N", D], "input vectors, (T, N, D)")
    else:
        x = _embedding(g, model.embedding, _ids_input(g, "inputs", ["T", "N"]))
    seq = _lengths_input(g) if lengths else ""
    out, finals = _add_recurrent(g, model.rnn, x, seq, [])  # (T, N, F)
    dirs = model.rnn.num_directions
    if model.pooling == "last":  # the top layer's final h of each direction, (N, dirs*H)
        rows = finals[0]
        L = model.rnn.num_layers
        if L > 1:
            rows = g.op("Slice", [rows, g.ints((L - 1) * dirs), g.ints(L * dirs), g.ints(0)])
        feat = g.op("Reshape", [g.op("Transpose", [rows], perm=[1, 0, 2]), g.ints(0, -1)])
    elif model.pooling == "mean":  # outputs past the end are zero: the sum covers real steps
        count = g.op("Unsqueeze", [seq, g.ints(1)]) if seq else g.op("Shape", [out], start=0, end=1)
        feat = g.op(
            "Div",
            [
                g.op("ReduceSum", [out, g.ints(0)], keepdims=0),
                g.op("Cast", [count], to=TensorProto.FLOAT),
            ],
        )
    else:
        if seq:
            out = g.op(
                "Where", [_real_steps(g, out, seq), out, g.const("inf", np.float32(-np.inf))]
            )
        feat = g.op("ReduceMax", [out], axes=[0], keepdims=0)
    C = model.head.out_features
    g.output(_linear(g, model.head, feat), "logits", ["N", C], "class logits of each sequence")
    return g


def _real_steps(g: _Graph, out: str, lengths: str) -> str:
    """``(T, N, 1)`` true where step t lies within sequence n: ``t < lengths[n]``."""
    T = g.op("Squeeze", [g.op("Shape", [out], start=0, end=1), g.ints(0)])
    steps = g.op(
        "Range",
        [
            g.const("zero", np.int32(0)),
            g.op("Cast", [T], to=TensorProto.INT32),
            g.const("one", np.int32(1)),
        ],
    )
    below = g.op(
        "Less", [g.op("Unsqueeze", [steps, g.ints(1)]), g.op("Unsqueeze", [lengths, g.ints(0)])]
    )
    return g.op("Unsqueeze", [below, g.ints(2)])


def _encoder_graph(model: Seq2Seq, lengths: bool) -> _Graph:
    g = _Graph()
    src = _ids_input(g, "src", ["T", "N"])
    seq = _lengths_input(g, "src_lengths") if lengths else ""
    _, finals = _add_recurrent(g, model.encoder, _embedding(g, model.src_embedding, src), seq, [])
    _state_outputs(g, model.encoder, finals)
    return g


def _decoder_step_graph(model: Seq2Seq) -> _Graph:
    g = _Graph()
    ids = g.op("Unsqueeze", [_ids_input(g, "ids", ["N"]), g.ints(0)])  # (1, N)
    state = _state_inputs(g, model.decoder)
    out, finals = _add_recurrent(
        g, model.decoder, _embedding(g, model.tgt_embedding, ids), "", state
    )
    logits = _linear(g, model.head, g.op("Squeeze", [out, g.ints(0)]))
    g.output(logits, "logits", ["N", model.head.out_features], "next-token logits")
    _state_outputs(g, model.decoder, finals)
    return g


def to_onnx(
    module: object,
    *,
    lengths: bool = False,
    initial_state: bool = True,
    metadata: dict | None = None,
) -> onnx.ModelProto | tuple[onnx.ModelProto, onnx.ModelProto]:
    """The ONNX graph of a layer or model, checked with ``onnx.checker``; see :func:`export`.

    Returns one ``onnx.ModelProto``, or for a :class:`~rnnkit.models.Seq2Seq` the pair
    ``(encoder, decoder_step)``.
    """
    _need_onnx()
    info = dict(metadata or {})
    if isinstance(module, RNNBase):
        return _layer_graph(module, lengths, initial_state).model(module, info, "rnnkit layer")
    if isinstance(module, LanguageModel):
        g = _language_model_graph(module, lengths, initial_state)
        return g.model(module, info, "rnnkit language model")
    if isinstance(module, SequenceTagger):
        return _tagger_graph(module, lengths).model(module, info, "rnnkit sequence tagger")
    if isinstance(module, SequenceClassifier):
        g = _classifier_graph(module, lengths)
        return g.model(module, info, "rnnkit sequence classifier")
    if isinstance(module, Seq2Seq):
        info.update(bos_id=module.bos_id, eos_id=module.eos_id)
        encoder = _encoder_graph(module, lengths).model(module, info, "rnnkit encoder")
        decoder = _decoder_step_graph(module).model(module, info, "rnnkit decoder, one step")
        return encoder, decoder
    raise OnnxError(f"{type(module).__name__} has no ONNX export; rnnkit exports {EXPORTS}")


def export(
    module: object,
    path: str | os.PathLike,
    *,
    lengths: bool = False,
    initial_state: bool = True,
    metadata: dict | None = None,
) -> list[Path]:
    """Write a layer or model as an ONNX file that onnxruntime runs.

    Graph inputs and outputs, by module (``T`` and ``N`` are dynamic axes; states are
    ``(num_layers * num_directions, N, H)``):

    - ``RNN``, ``GRU``, ``LSTM``: ``input (T, N, D)`` (``(N, T, D)`` when batch first),
      ``lengths``, ``h0`` (and ``c0``) -> ``output``, ``h_n`` (and ``c_n``).
    - ``LanguageModel``: ``ids (T, N)``, ``lengths``, ``h0`` (and ``c0``) ->
      ``logits (T, N, V)``, ``h_n`` (and ``c_n``): fed one token at a time with the state
      it returned, it generates step by step.
    - ``SequenceClassifier``: ``inputs (T, N)`` ids (or ``(T, N, D)`` vectors), ``lengths``
      -> ``logits (N, C)``. ``SequenceTagger``: ``ids (T, N)``, ``lengths`` ->
      ``logits (T, N, C)``.
    - ``Seq2Seq``: two files beside ``path``, ``NAME.encoder.onnx`` (``src (T, N)``,
      ``src_lengths`` -> ``h_n`` (and ``c_n``)) and ``NAME.decoder.onnx``, one decoder step
      (``ids (N,)``, ``h0`` (and ``c0``) -> ``logits (N, V)``, ``h_n`` (and ``c_n``)).

    Args:
        module: the layer or model; it is read, never changed. Dropout is left out (the graph
            is the model in evaluation mode); float64 weights are rounded to float32.
        path: the file to write (atomically: a temporary file, then renamed).
        lengths: add the int64 ``lengths`` input (ONNX's ``sequence_lens``).
        initial_state: layers and language models take ``h0`` (and ``c0``) as inputs; with
            False they start from zeros.
        metadata: more JSON-serialisable entries for the ``rnnkit`` metadata property (which
            holds the rnnkit version and the module's class; Seq2Seq adds ``bos_id``, ``eos_id``).

    Returns:
        The paths written.

    Layer options map to ONNX's: ``reverse=True`` to ``direction="reverse"``,
    ``peephole="gers"`` to the input ``P``; an LSTM with ``proj_size`` (which ONNX's LSTM
    lacks) becomes a ``Scan`` over its cell.

    Raises:
        OnnxError: a form ONNX's recurrent operators cannot express (the notes' peepholes),
            with what does export; or a module that has no export.
    """
    graphs = to_onnx(module, lengths=lengths, initial_state=initial_state, metadata=metadata)
    path = Path(path)
    if isinstance(graphs, tuple):
        suffix = path.suffix or ".onnx"
        paths = [path.with_name(f"{path.stem}.{part}{suffix}") for part in ("encoder", "decoder")]
    else:
        graphs, paths = (graphs,), [path]
    for graph, target in zip(graphs, paths):
        atomic_write_bytes(target, graph.SerializeToString())
    return paths


def export_run(
    model: LanguageModel, vocab, path: str | os.PathLike, start_id: int, stop_id: int | None
) -> Path:
    """Export a trained language model with what a sampler needs beside it, in the ``rnnkit``
    metadata property: ``tokens`` (the vocabulary, by id), ``level`` (``char`` or ``word``),
    ``start_id`` (the token read before a new sequence) and ``stop_id`` (the token that ends
    one, or None). ``examples/onnx_names.py`` samples from such a file with onnxruntime alone.
    """
    info = {"tokens": vocab.tokens, "level": vocab.level, "start_id": start_id, "stop_id": stop_id}
    return export(model, path, metadata=info)[0]


# ---------------------------------------------------------------- import


def _read_model(source: object) -> onnx.ModelProto:
    if isinstance(source, onnx.ModelProto):
        return source
    try:
        return onnx.load(os.fspath(source))
    except FileNotFoundError:
        raise OnnxError(f"{source}: no such file") from None
    except Exception as e:  # protobuf's DecodeError and kin: the file is not an ONNX model
        raise OnnxError(
            f"cannot read {source} as an ONNX model ({type(e).__name__}: {e})"
        ) from None


def _constants(graph) -> dict[str, np.ndarray]:
    """The graph's stored tensors by name: initializers and the outputs of Constant nodes."""
    found = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute[0].name == "value":
            found[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return found


def _node_form(node, constants: dict) -> dict:
    """What an ONNX recurrent node holds, as rnnkit's options and arrays."""
    where = f"the {node.op_type} node {node.name!r}" if node.name else f"the {node.op_type} node"
    form = {"op": node.op_type, "where": where, **_node_attributes(node, where)}
    form.update(_node_arrays(node, constants, form))
    return form


def _node_attributes(node, where: str) -> dict:
    """A recurrent node's attributes; refuses, naming them, those rnnkit's layers lack."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    text = {k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()}
    acts = [a.decode() for a in attrs.get("activations", [])]
    direction = text.get("direction", "forward")
    if direction not in ("forward", "reverse", "bidirectional"):
        raise OnnxError(
            f"{where} has direction={direction!r}; ONNX defines forward, reverse and bidirectional"
        )
    dirs = 2 if direction == "bidirectional" else 1
    unsupported = []
    relu = node.op_type == "RNN" and acts == ["Relu"] * dirs
    if acts and not relu and acts != DEFAULT_ACTIVATIONS[node.op_type] * dirs:
        unsupported.append(f"activations={acts}")
    if "clip" in attrs:
        unsupported.append(f"clip={attrs['clip']:g}")
    if attrs.get("input_forget", 0):
        unsupported.append(f"input_forget={attrs['input_forget']}")
    if unsupported:
        raise OnnxError(
            f"{where} uses {', '.join(unsupported)}, which rnnkit's layers lack; nodes with "
            f"ONNX's default activations (or Relu for RNN), no clip and no input_forget import"
        )
    return {
        "direction": direction,
        "dirs": dirs,
        "hidden_size": attrs.get("hidden_size"),
        "layout": attrs.get("layout", 0),
        "linear_before_reset": attrs.get("linear_before_reset", 0),
        "nonlinearity": "relu" if relu else "tanh",
    }


def _node_arrays(node, constants: dict, form: dict) -> dict:
    """A recurrent node's ``W, R, B, P`` (None where absent), shapes checked."""
    where = form["where"]

    def stored(index: int) -> np.ndarray | None:
        name = node.input[index] if len(node.input) > index else ""
        if not name:
            return None
        if name not in constants:
            raise OnnxError(
                f"{where} computes its input {name!r} inside the graph; only weights stored "
                f"in the file (initializers or Constant nodes) import"
            )
        return constants[name].astype(np.float64)

    arrays = {"W": stored(1), "R": stored(2), "B": stored(3)}
    arrays["P"] = stored(7) if node.op_type == "LSTM" else None
    if arrays["W"] is None or arrays["R"] is None:
        raise OnnxError(f"{where} lacks its weights W or R")
    dirs, G = form["dirs"], len(GATE_ORDERS[node.op_type][0])
    H = form["hidden_size"] or arrays["R"].shape[-1]
    D = arrays["W"].shape[-1]
    expected = {"W": (dirs, G * H, D), "R": (dirs, G * H, H), "B": (dirs, 2 * G * H)}
    expected["P"] = (dirs, 3 * H)
    for key, array in arrays.items():
        if array is not None and array.shape != expected[key]:
            raise OnnxError(
                f"{where} has {key} of shape {array.shape}, where hidden_size={H} and "
                f"direction={form['direction']!r} make {expected[key]}"
            )
    return {**arrays, "hidden_size": H, "input_size": D}


def _layer_options(forms: list[dict]) -> dict:
    """Constructor options of the rnnkit layer that stacks these nodes."""
    first = forms[0]
    same = ("op", "direction", "hidden_size", "linear_before_reset", "nonlinearity", "layout")
    for k, form in enumerate(forms[1:], 1):
        differ = [key for key in same if form[key] != first[key]]
        differ += [key for key in "BP" if (form[key] is None) != (first[key] is None)]
        if form["input_size"] != first["dirs"] * first["hidden_size"]:
            differ.append("input size")
        if differ:
            raise OnnxError(
                f"the graph's recurrent nodes do not form one stack: {form['where']} (number "
                f"{k + 1}) differs from the first in {', '.join(differ)}"
            )
    options = {
        "num_layers": len(forms),
        "bias": first["B"] is not None,
        "bidirectional": first["dirs"] == 2,
    }
    if first["op"] == "RNN":
        options["nonlinearity"] = first["nonlinearity"]
    if first["op"] == "GRU":
        options["reset_after"] = bool(first["linear_before_reset"])
    if first["P"] is not None:
        options["peephole"] = "gers"
    if first["direction"] == "reverse":
        options["reverse"] = True
    return options


def _new_layer(first: dict, options: dict, batch_first: bool, dtype) -> RNNBase:
    """The rnnkit layer with these options; refuses options this version of rnnkit lacks."""
    cls = {"RNN": RNN, "GRU": GRU, "LSTM": LSTM}[first["op"]]
    needs = {"reverse": "direction='reverse'", "peephole": "peephole input P"}
    try:
        layer = cls(
            first["input_size"],
            first["hidden_size"],
            batch_first=batch_first,
            rng=0,
            dtype=dtype,
            **options,
        )
    except TypeError:
        layer = None
    for key, what in needs.items():
        if key in options and (layer is None or getattr(layer, key, None) != options[key]):
            raise OnnxError(
                f"{first['where']} has the {what}, which needs the layer option "
                f"{key}={options[key]!r}; this version of rnnkit has no such option"
            )
    return layer


def import_layer(
    source: str | os.PathLike | onnx.ModelProto,
    *,
    batch_first: bool | None = None,
    dtype: object = np.float32,
) -> RNNBase:
    """An rnnkit ``RNN``, ``GRU`` or ``LSTM`` holding the weights of an ONNX graph's recurrent
    nodes: every ``RNN``/``GRU``/``LSTM`` node in graph order becomes one layer of the stack
    (so the recurrent layer of an exported model imports too).

    Gate orders and bias halves are mapped (see the module's table); ``linear_before_reset``
    picks ``reset_after``, the input ``P`` ``peephole="gers"``, ``direction`` ``bidirectional``
    or ``reverse``, and a missing ``B`` ``bias=False``. A simplified GRU exported by rnnkit
    comes back as the full GRU with the reset gate held open.

    Args:
        source: an ONNX file, or a loaded ``onnx.ModelProto``.
        batch_first: the layer's layout; None takes the node's ``layout`` attribute.
        dtype: float32 (default) or float64.

    Raises:
        OnnxError: no recurrent node; nodes that do not stack; weights computed inside the
            graph; attributes rnnkit's layers lack (non-default ``activations``, ``clip``,
            ``input_forget``), each named.
    """
    _need_onnx()
    model = _read_model(source)
    constants = _constants(model.graph)
    nodes = [
        n for n in model.graph.node if n.op_type in GATE_ORDERS and n.domain in ("", "ai.onnx")
    ]
    if not nodes:
        what = "the model" if isinstance(source, onnx.ModelProto) else str(source)
        scan = any(n.op_type == "Scan" for n in model.graph.node)
        hint = " (an LSTM with proj_size exports as a Scan, which does not import)" if scan else ""
        raise OnnxError(f"{what} has no RNN, GRU or LSTM node to import{hint}")
    forms = [_node_form(n, constants) for n in nodes]
    options = _layer_options(forms)
    first = forms[0]
    if batch_first is None:
        batch_first = first["layout"] == 1
    layer = _new_layer(first, options, batch_first, dtype)
    layer.load_state_dict(_rnnkit_weights(forms, layer))
    return layer


def _rnnkit_weights(forms: list[dict], layer: RNNBase) -> dict[str, np.ndarray]:
    """The nodes' arrays under rnnkit's parameter names, in rnnkit's gate order."""
    H = layer.hidden_size
    target, source = GATE_ORDERS[forms[0]["op"]]
    state = {}
    for k, form in enumerate(forms):
        for d, sfx in enumerate([f"_l{k}", f"_l{k}_reverse"][: form["dirs"]]):
            state["weight_ih" + sfx] = reorder_gates(form["W"][d], source, target, H)
            state["weight_hh" + sfx] = reorder_gates(form["R"][d], source, target, H)
            if form["B"] is not None:
                wb, rb = np.split(form["B"][d], 2)  # B = [Wb, Rb]
                state["bias_ih" + sfx] = reorder_gates(wb, source, target, H)
                state["bias_hh" + sfx] = reorder_gates(rb, source, target, H)
            if form["P"] is not None:
                rows = reorder_gates(form["P"][d], ONNX_PEEPHOLE_GATES, PEEPHOLE_GATES, H)
                state["weight_peephole" + sfx] = rows.reshape(3, H)
    return state
