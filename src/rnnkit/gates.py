"""Gate order of every cell, defined once, and the course <-> PyTorch parameter mapping.

Stored weights follow PyTorch: ``weight_ih`` is ``(G*H, D)``, ``weight_hh`` is ``(G*H, H)``,
the gate blocks stacked along the first axis in the orders below. The course writes one
matrix per gate acting on ``concat([a_prev, x_t])`` and a single bias per gate.
"""

from __future__ import annotations

import numpy as np

LSTM_GATES = ("i", "f", "g", "o")  # course: Γu, Γf, c̃, Γo
GRU_GATES = ("r", "z", "n")  # course: Γr, 1 - Γu, c̃ (z = 1 - Γu)
SIMPLE_GRU_GATES = ("z", "n")  # the course's simplified GRU: no reset gate
RNN_GATES = ("h",)
PEEPHOLE_GATES = ("i", "f", "o")  # rows of an LSTM's peephole weights (3, H)

# Course parameter name of each LSTM gate, in LSTM_GATES order.
COURSE_LSTM = ("Wi", "Wf", "Wc", "Wo")


def gate_slices(gates: tuple[str, ...], hidden_size: int) -> dict[str, slice]:
    """Column slice of each gate in a ``(N, G*H)`` pre-activation, by gate name."""
    return {g: slice(k * hidden_size, (k + 1) * hidden_size) for k, g in enumerate(gates)}


def _split(w: np.ndarray, n_a: int) -> tuple[np.ndarray, np.ndarray]:
    """Split a course matrix acting on [a_prev; x_t] into its (hidden, input) parts."""
    return w[:, :n_a], w[:, n_a:]


def course_to_pytorch(params: dict[str, np.ndarray], cell: str) -> dict[str, np.ndarray]:
    """Course parameters of one cell to PyTorch-named layer-0 weights.

    Args:
        params: the course's dict. ``cell="rnn"``: ``Wax (n_a, n_x), Waa (n_a, n_a), ba (n_a, 1)``;
            ``"lstm"``: ``Wi, Wf, Wc, Wo (n_a, n_a + n_x)`` and ``bi, bf, bc, bo (n_a, 1)``;
            ``"gru"``: ``Wu, Wr, Wc`` and ``bu, br, bc``; ``"gru_simple"``: ``Wu, Wc, bu, bc``.
            Output-layer entries (``Wya``, ``Wy``, ``by``) are ignored.
        cell: ``"rnn"``, ``"lstm"``, ``"gru"`` (reset before the product, as in the course)
            or ``"gru_simple"``.

    Returns:
        ``weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0``. The course's single bias goes
        to ``bias_ih`` and ``bias_hh`` is zero, since only their sum matters. For the GRU the
        update gate is negated: ``z = 1 - Γu = sigmoid(-(Wu [a; x] + bu))``.
    """
    if cell == "rnn":
        w_hh, w_ih, b = params["Waa"], params["Wax"], params["ba"]
    else:
        if cell == "lstm":
            blocks = [(params[w], params["b" + w[1]]) for w in COURSE_LSTM]
        elif cell == "gru":
            blocks = [
                (params["Wr"], params["br"]),
                (-params["Wu"], -params["bu"]),
                (params["Wc"], params["bc"]),
            ]
        elif cell == "gru_simple":
            blocks = [(-params["Wu"], -params["bu"]), (params["Wc"], params["bc"])]
        else:
            raise ValueError(f"cell must be 'rnn', 'lstm', 'gru' or 'gru_simple', got {cell!r}")
        n_a = blocks[0][1].shape[0]
        w = np.concatenate([wb[0] for wb in blocks], axis=0)  # (G*n_a, n_a + n_x)
        w_hh, w_ih = _split(w, n_a)
        b = np.concatenate([wb[1] for wb in blocks], axis=0)
    b = b.reshape(-1)
    return {
        "weight_ih_l0": np.array(w_ih, order="C"),  # copies, never the caller's arrays
        "weight_hh_l0": np.array(w_hh, order="C"),
        "bias_ih_l0": b.copy(),
        "bias_hh_l0": np.zeros_like(b),
    }


def pytorch_to_course(state: dict[str, np.ndarray], cell: str, suffix: str = "_l0") -> dict:
    """PyTorch-named weights of one layer (and direction) to the course's parameters.

    The inverse of :func:`course_to_pytorch`: ``bias_ih + bias_hh`` becomes the course's single
    bias (a missing bias counts as zero), and the GRU's update gate is negated back.
    ``suffix`` picks the layer and direction, e.g. ``"_l1_reverse"``.

    ``cell="gru"`` means the course's GRU, ``rnnkit.GRU(reset_after=False)``. The weights of a
    reset-after GRU (``rnnkit.GRU()``'s default, ``torch.nn.GRU``) have no course form: their
    ``bias_hh`` of gate n sits inside the reset product and cannot merge into one bias.
    """
    w_ih, w_hh = state["weight_ih" + suffix], state["weight_hh" + suffix]
    b = np.zeros(w_ih.shape[0], dtype=w_ih.dtype)
    for name in ("bias_ih" + suffix, "bias_hh" + suffix):
        if name in state:
            b = b + state[name]
    if cell == "rnn":
        return {"Wax": w_ih.copy(), "Waa": w_hh.copy(), "ba": b.reshape(-1, 1)}
    w = np.concatenate([w_hh, w_ih], axis=1)  # acts on [a_prev; x_t]
    n_a = w_hh.shape[1]
    gates = {"lstm": LSTM_GATES, "gru": GRU_GATES, "gru_simple": SIMPLE_GRU_GATES}.get(cell)
    if gates is None:
        raise ValueError(f"cell must be 'rnn', 'lstm', 'gru' or 'gru_simple', got {cell!r}")
    blocks = {g: (w[s], b[s].reshape(-1, 1)) for g, s in gate_slices(gates, n_a).items()}
    if cell == "lstm":
        out = {}
        for g, name in zip(LSTM_GATES, COURSE_LSTM):
            out[name], out["b" + name[1]] = blocks[g][0].copy(), blocks[g][1].copy()
        return out
    out = {
        "Wu": -blocks["z"][0],
        "bu": -blocks["z"][1],
        "Wc": blocks["n"][0].copy(),
        "bc": blocks["n"][1].copy(),
    }
    if cell == "gru":
        out["Wr"], out["br"] = blocks["r"][0].copy(), blocks["r"][1].copy()
    return out


# ONNX's gate orders, in the gate names above: LSTM i, o, f, c; GRU z, r, h; peepholes i, o, f.
ONNX_LSTM_GATES = ("i", "o", "f", "g")
ONNX_GRU_GATES = ("z", "r", "n")
ONNX_PEEPHOLE_GATES = ("i", "o", "f")


def reorder_gates(
    array: np.ndarray, source: tuple[str, ...], target: tuple[str, ...], hidden_size: int
) -> np.ndarray:
    """The gate blocks of ``array`` (stacked along the first axis in the order ``source``)
    restacked in the order ``target``, e.g. PyTorch's LSTM weights into ONNX's."""
    blocks = gate_slices(source, hidden_size)
    return np.concatenate([array[blocks[g]] for g in target], axis=0)
