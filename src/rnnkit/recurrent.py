"""Sequence layers RNN, GRU and LSTM: stacked, bidirectional, variable lengths.

A layer is a loop over a cell of :mod:`rnnkit.cells`. What does not depend on time order runs
once for the whole sequence: the input projection of every step is one matrix product, and so
are the input gradient and the input-weight gradient in the backward pass. Only the recurrent
product runs step by step.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from . import loops
from .cells import CELL_KINDS, CellParams
from .gates import gate_slices
from .init import as_generator, uniform
from .module import Module, is_inference_mode

State = np.ndarray | tuple[np.ndarray, np.ndarray]

# Cell gradient key -> stored parameter name (PyTorch's).
_PARAM_NAMES = {
    "w_ih": "weight_ih",
    "w_hh": "weight_hh",
    "b_ih": "bias_ih",
    "b_hh": "bias_hh",
    "w_peep": "weight_peephole",
    "w_hr": "weight_hr",
}
_PEEPHOLES = (False, "notes", "gers")


@dataclass
class RecurrentCache:
    """What :meth:`RNNBase.backward` needs from its forward pass."""

    inputs: list  # [layer][direction] the (T, N, D) input that direction saw (flipped if reverse)
    steps: list  # [layer][direction] that direction's time-loop cache (rnnkit.loops)
    mask: np.ndarray | None  # (T, N, 1) 1 where t < length
    flip: np.ndarray | None  # (T, N) time index of the reversed sequences, None without lengths
    dropout_masks: list  # [layer] scaled keep mask applied to that layer's input, or None
    shape: tuple[int, int]  # (T, N)
    used: bool = False  # the fast loops reuse the forward buffers in the backward pass
    inference: bool = False  # made under inference_mode: holds nothing for a backward pass


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _as_float_array(name: str, value: object, dtype: np.dtype) -> np.ndarray:
    array = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value)
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise TypeError(f"{name} must hold real numbers, got dtype {array.dtype}")
    array = array.astype(dtype, copy=False)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} holds non-finite values (nan or inf); check the data upstream")
    return array


class RNNBase(Module):
    """The generic recurrent layer; use :class:`RNN`, :class:`GRU` or :class:`LSTM`.

    ``layer.backend`` picks the time loop: ``"fast"`` (default, the compiled loop of
    :mod:`rnnkit.kernels` on rnnkit's threads) or ``"reference"``, the readable loop over the
    cells of :mod:`rnnkit.cells`; :mod:`rnnkit.loops` decides, once per call. Both give the
    same numbers. The fast loop's backward pass reuses the forward buffers, so a cache serves
    one backward pass (as in PyTorch, where a graph is freed by ``backward``).
    """

    def __init__(
        self,
        mode: str,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        *,
        reverse: bool = False,
        peephole: bool | str = False,
        proj_size: int = 0,
        rng: np.random.Generator | int | None = None,
        dtype: object = np.float32,
    ):
        super().__init__()
        self.input_size = _check_int("input_size", input_size, 1)
        self.hidden_size = _check_int("hidden_size", hidden_size, 1)
        self.num_layers = _check_int("num_layers", num_layers, 1)
        self.proj_size = _check_int("proj_size", proj_size, 0)
        if self.proj_size >= self.hidden_size:
            raise ValueError(
                f"proj_size must be smaller than hidden_size ({self.hidden_size}), "
                f"got {self.proj_size}; 0 means no projection"
            )
        self.peephole = "notes" if peephole is True else peephole
        if self.peephole not in _PEEPHOLES:
            raise ValueError(
                f"peephole must be False, True (or 'notes': every gate sees c<t-1>) or 'gers' "
                f"(the output gate sees c<t>, as in Gers et al. and ONNX), got {peephole!r}"
            )
        if reverse and bidirectional:
            raise ValueError(
                "reverse=True runs one direction backwards in time; bidirectional=True already "
                "has a reverse direction: choose one"
            )
        if not isinstance(dropout, numbers.Real) or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype must be float32 or float64, got {dtype}")
        self.kind = CELL_KINDS[mode]
        self.mode = mode
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = float(dropout)
        self.bidirectional = bool(bidirectional)
        self.reverse = bool(reverse)
        if self.peephole == "gers":
            self.kind = CELL_KINDS["lstm_gers"]
        self.dtype = dtype
        self.rng = as_generator(rng)
        self.backend = "fast"  # or "reference": the readable loop over rnnkit.cells
        self._workspaces: dict[tuple[int, int], loops.Workspace] = {}

        H, P = self.hidden_size, self.output_size
        gh = len(self.kind.gates) * H
        bound = 1.0 / math.sqrt(H)  # PyTorch's default initialisation
        for layer in range(self.num_layers):
            in_size = self.input_size if layer == 0 else P * self.num_directions
            for sfx in self._suffixes(layer):
                self.add_param("weight_ih" + sfx, uniform(self.rng, (gh, in_size), bound, dtype))
                self.add_param("weight_hh" + sfx, uniform(self.rng, (gh, P), bound, dtype))
                if self.bias:
                    self.add_param("bias_ih" + sfx, uniform(self.rng, (gh,), bound, dtype))
                    self.add_param("bias_hh" + sfx, uniform(self.rng, (gh,), bound, dtype))
                if self.peephole:
                    self.add_param("weight_peephole" + sfx, uniform(self.rng, (3, H), bound, dtype))
                if self.proj_size:
                    self.add_param("weight_hr" + sfx, uniform(self.rng, (P, H), bound, dtype))

    @property
    def output_size(self) -> int:
        """The size of a<t> in each direction: ``proj_size`` where the LSTM projects it, else
        ``hidden_size``."""
        return self.proj_size or self.hidden_size

    def _add_to_initial_bias(self, gate: str, value: float) -> None:
        """Shift one gate's initial bias (in ``bias_ih``) in every layer and direction."""
        if value and self.bias:
            cols = gate_slices(self.kind.gates, self.hidden_size)[gate]
            for name, array in self.params.items():
                if name.startswith("bias_ih"):
                    array[cols] += value

    @property
    def num_directions(self) -> int:
        """2 when bidirectional, else 1."""
        return 2 if self.bidirectional else 1

    def _suffixes(self, layer: int) -> list[str]:
        return [f"_l{layer}", f"_l{layer}_reverse"][: self.num_directions]

    def cell_params(self, layer: int, direction: int) -> CellParams:
        """The parameters of one layer and direction as the cells take them (views, not copies)."""
        sfx = self._suffixes(layer)[direction]
        get = self.params.get
        return CellParams(
            get("weight_ih" + sfx),
            get("weight_hh" + sfx),
            get("bias_ih" + sfx),
            get("bias_hh" + sfx),
            get("weight_peephole" + sfx),
            get("weight_hr" + sfx),
        )

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self._extra_repr().items())
        return (
            f"{type(self).__name__}({self.input_size}, {self.hidden_size}, "
            f"num_layers={self.num_layers}{extra})"
        )

    def _extra_repr(self) -> dict:
        out = {}
        for key, default in (
            ("bias", True),
            ("batch_first", False),
            ("dropout", 0.0),
            ("bidirectional", False),
            ("reverse", False),
        ):
            if getattr(self, key) != default:
                out[key] = getattr(self, key)
        return out

    # ------------------------------------------------------------ input checks

    def _check_input(self, x: object) -> np.ndarray | loops.TableRows:
        if isinstance(x, loops.TableRows):
            return self._check_rows(x)
        x = _as_float_array("input", x, self.dtype)
        order = "(N, T, D)" if self.batch_first else "(T, N, D)"
        if x.ndim != 3:
            raise ValueError(
                f"input must be 3-D {order}, got shape {x.shape}; "
                f"a single sequence needs a batch axis of size 1"
            )
        if self.batch_first:
            x = np.ascontiguousarray(x.transpose(1, 0, 2))
        if x.shape[2] != self.input_size:
            raise ValueError(
                f"input has feature size {x.shape[2]}, expected "
                f"input_size={self.input_size} (shape {order})"
            )
        if x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(
                f"input must have at least one time step and one sequence, "
                f"got shape {x.shape if not self.batch_first else x.shape[::-1]}"
            )
        return x

    def _check_rows(self, x: loops.TableRows) -> loops.TableRows:
        if x.table.dtype != self.dtype or x.table.shape[1] != self.input_size:
            raise ValueError(
                f"the table of the input's rows must be (V, input_size={self.input_size}) of "
                f"{self.dtype}, got {x.table.shape} of {x.table.dtype}"
            )
        ids = x.ids
        if not np.issubdtype(ids.dtype, np.integer) or ids.ndim != 2 or 0 in ids.shape:
            raise ValueError(f"the input's ids must be 2-D integers, got {ids.shape} {ids.dtype}")
        if ids.min() < 0 or ids.max() >= len(x.table):
            raise ValueError(f"the input's ids must lie in [0, {len(x.table)}), got {ids.min()} "
                             f"to {ids.max()}")  # fmt: skip
        return loops.TableRows(x.table, np.ascontiguousarray(ids.T)) if self.batch_first else x

    def _check_state(self, name: str, state: object, N: int) -> tuple[np.ndarray, ...]:
        n = self.kind.num_states
        k = self.num_layers * self.num_directions
        shapes = [(k, N, self.output_size), (k, N, self.hidden_size)][:n]
        if state is None:
            return tuple(np.zeros(shape, dtype=self.dtype) for shape in shapes)
        if n == 2:
            if not isinstance(state, (tuple, list)) or len(state) != 2:
                raise TypeError(
                    f"{name} of an LSTM must be a tuple (h, c), got {type(state).__name__}"
                )
            parts = [(f"{name}[0] (h)", state[0]), (f"{name}[1] (c)", state[1])]
        else:
            if isinstance(state, (tuple, list)):
                raise TypeError(
                    f"{name} of {type(self).__name__} must be one array h, "
                    f"got a {type(state).__name__}"
                )
            parts = [(name, state)]
        out = []
        for (part_name, part), shape in zip(parts, shapes):
            array = _as_float_array(part_name, part, self.dtype)
            if array.shape != shape:
                size = "proj_size" if shape[2] != self.hidden_size else "hidden_size"
                raise ValueError(
                    f"{part_name} must have shape (num_layers * num_directions, N, "
                    f"{size}) = {shape}, got {array.shape}"
                )
            out.append(array)
        return tuple(out)

    def _check_lengths(self, lengths: object, T: int, N: int) -> np.ndarray | None:
        if lengths is None:
            return None
        raw = np.asarray(lengths.detach().cpu().numpy() if hasattr(lengths, "detach") else lengths)
        if raw.dtype == bool or not np.issubdtype(raw.dtype, np.number):
            raise TypeError(f"lengths must hold integers, got dtype {raw.dtype}")
        if raw.shape != (N,):
            raise ValueError(f"lengths must have shape (N,) = ({N},), got {raw.shape}")
        if not np.all(np.isfinite(raw)) or not np.all(raw == np.round(raw)):
            raise ValueError(f"lengths must be whole numbers, got {raw.tolist()}")
        out = raw.astype(np.int64)
        if out.min() < 1 or out.max() > T:
            raise ValueError(
                f"lengths must lie in [1, T={T}], got min {out.min()} and max {out.max()}"
            )
        return out

    # ------------------------------------------------------------ forward

    def forward(
        self, x: object, state: State | None = None, lengths: object = None
    ) -> tuple[np.ndarray, State, RecurrentCache]:
        """Run the layer over a batch of sequences.

        Args:
            x: ``(T, N, D)``, or ``(N, T, D)`` with ``batch_first``; or
                :class:`rnnkit.loops.TableRows`, the rows of a table picked by ids ``(T, N)``
                (``(N, T)``), as an embedding gives them: the same numbers, with the input
                projection of V rows instead of T*N (:meth:`backward` then returns the
                table's gradient).
            state: initial state, ``h_0`` or for the LSTM ``(h_0, c_0)``, each
                ``(num_layers * num_directions, N, H)``; zeros when None.
            lengths: ``(N,)`` true length of each sequence, in ``[1, T]``. Outputs past a
                sequence's end are zero, its final state is the one at its last step, and the
                reverse direction starts at its last step.

        Returns:
            ``(output, h_n or (h_n, c_n), cache)``; output is ``(T, N, num_directions * H)``
            (batch first if the layer is), the forward direction first on the feature axis.
            Under :func:`rnnkit.inference_mode` the cache holds the mask alone.
        """
        x = self._check_input(x)
        T, N, _ = x.shape
        lengths = self._check_lengths(lengths, T, N)
        state0 = self._check_state("state", state, N)
        mask = flip = None
        if lengths is not None:
            t = np.arange(T)[:, None]
            mask = (t < lengths[None, :])[:, :, None].astype(self.dtype)  # (T, N, 1)
            flip = np.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)  # (T, N)
        mode = "training" if self.training else "evaluation"
        mode = "inference" if is_inference_mode() else mode
        cache = RecurrentCache([], [], mask, flip, [], (T, N))
        finals: list[list[np.ndarray]] = [[] for _ in range(self.kind.num_states)]
        layer_input = x
        for layer in range(self.num_layers):
            drop = None
            if layer > 0 and self.dropout > 0 and self.training:
                keep = self.rng.random(layer_input.shape) >= self.dropout
                drop = keep.astype(self.dtype) / (1 - self.dropout)
                layer_input = layer_input * drop
            cache.dropout_masks.append(drop)
            outputs, inputs, steps = [], [], []
            for direction in range(self.num_directions):
                k = layer * self.num_directions + direction
                backwards = self._runs_backwards(direction)
                seq = self._flip(layer_input, flip) if backwards else layer_input
                out, final, step_caches = self._run(
                    seq, tuple(s[k] for s in state0), layer, direction, mask, mode
                )
                outputs.append(self._flip(out, flip) if backwards else out)
                inputs.append(seq)
                steps.append(step_caches)
                for i, s in enumerate(final):
                    finals[i].append(s)
            cache.inputs.append(inputs)
            cache.steps.append(steps)
            layer_input = outputs[0] if len(outputs) == 1 else np.concatenate(outputs, axis=2)
        output = layer_input.transpose(1, 0, 2) if self.batch_first else layer_input
        states = tuple(np.stack(f) for f in finals)
        if mode == "inference":
            cache.inputs, cache.steps, cache.inference = [], [], True
        return output, (states if len(states) == 2 else states[0]), cache

    @staticmethod
    def _flip(seq: np.ndarray, flip: np.ndarray | None) -> np.ndarray:
        """Reverse each sequence in time within its length (its own inverse), as a new array."""
        if isinstance(seq, loops.TableRows):
            return loops.TableRows(seq.table, RNNBase._flip(seq.ids, flip))
        if flip is None:
            return np.ascontiguousarray(seq[::-1])
        return seq[flip, np.arange(seq.shape[1])]

    def _runs_backwards(self, direction: int) -> bool:
        """Whether a direction runs from the last step to the first (it sees the flipped
        sequence): the second of a bidirectional layer, or the one of a ``reverse`` layer."""
        return direction == 1 or self.reverse

    def _workspace(self, layer: int, direction: int) -> loops.Workspace:
        key = (layer, direction)
        if key not in self._workspaces:
            self._workspaces[key] = loops.Workspace()
        return self._workspaces[key]

    def _run(
        self,
        x: np.ndarray,
        state: tuple,
        layer: int,
        direction: int,
        mask: np.ndarray | None,
        mode: str,
    ) -> tuple[np.ndarray, tuple, object]:
        """One direction of one layer, forward in time (``mode``: :data:`rnnkit.loops.MODES`).
        x is (T, N, D)."""
        p, ws = self.cell_params(layer, direction), self._workspace(layer, direction)
        return loops.forward(self.kind, self.backend, x, state, p, mask, ws, mode)

    # ------------------------------------------------------------ backward

    def backward(
        self, doutput: object, cache: RecurrentCache, dstate: State | None = None
    ) -> tuple[np.ndarray, State]:
        """Backpropagation through time.

        Args:
            doutput: gradient of the loss with respect to ``output``, same shape.
            cache: the cache that :meth:`forward` returned.
            dstate: gradient with respect to the final state (``h_n`` or ``(h_n, c_n)``), or
                None for zero.

        Returns:
            ``(dx, dstate_0)``: the gradients of the input (of the table ``(V, D)``, where the
            input was :class:`rnnkit.loops.TableRows`) and of the initial state. Every
            parameter gradient is added into ``self.grads``.
        """
        if cache.inference:
            raise ValueError(
                "this forward pass ran under rnnkit.inference_mode(), which keeps nothing for "
                "a backward pass; run the forward pass outside it to take gradients"
            )
        if cache.used:
            raise ValueError(
                "this cache was already used by a backward pass, which reuses its "
                "buffers; run forward again before another backward"
            )
        T, N = cache.shape
        H, dirs = self.output_size, self.num_directions
        dout = _as_float_array("doutput", doutput, self.dtype)
        expected = (N, T, dirs * H) if self.batch_first else (T, N, dirs * H)
        if dout.shape != expected:
            raise ValueError(f"doutput must have the output's shape {expected}, got {dout.shape}")
        if self.batch_first:
            dout = dout.transpose(1, 0, 2)
        dfinal = self._check_state("dstate", dstate, N)
        dstate0 = [np.empty_like(d) for d in dfinal]
        for layer in reversed(range(self.num_layers)):
            dinput = None
            for direction in range(dirs):
                k = layer * dirs + direction
                d = dout[:, :, direction * H : (direction + 1) * H]
                backwards = self._runs_backwards(direction)
                if backwards:
                    d = self._flip(d, cache.flip)
                dx, ds0 = self._run_backward(
                    d, tuple(s[k] for s in dfinal), cache, layer, direction
                )
                if backwards and dx.ndim == 3:
                    dx = self._flip(dx, cache.flip)
                dinput = dx if dinput is None else dinput + dx
                for i, s in enumerate(ds0):
                    dstate0[i][k] = s
            if cache.dropout_masks[layer] is not None:
                dinput = dinput * cache.dropout_masks[layer]
            dout = dinput
        cache.used = any(isinstance(c, loops.LoopCache) for row in cache.steps for c in row)
        dx = dout.transpose(1, 0, 2) if self.batch_first and dout.ndim == 3 else dout
        return dx, (tuple(dstate0) if len(dstate0) == 2 else dstate0[0])

    def _run_backward(
        self, dout: np.ndarray, dstate: tuple, cache: RecurrentCache, layer: int, direction: int
    ) -> tuple[np.ndarray, tuple]:
        """Backward through one direction of one layer; dout is (T, N, H) in its own time order."""
        p = self.cell_params(layer, direction)
        x, steps = cache.inputs[layer][direction], cache.steps[layer][direction]
        sfx = self._suffixes(layer)[direction]
        grads = {key: self.grads[name + sfx] for key, name in _PARAM_NAMES.items()
                 if name + sfx in self.grads}  # fmt: skip
        ws = self._workspace(layer, direction)
        return loops.backward(self.kind, x, dout, dstate, steps, p, cache.mask, grads, ws)


_NONLINEARITIES = ("tanh", "relu")


class RNN(RNNBase):
    """Vanilla (Elman) RNN: a<t> = g(W_aa a<t-1> + W_ax x<t> + b_a), g = tanh or relu.

    Args:
        input_size: D, features of x<t>.
        hidden_size: H, features of a<t>.
        num_layers: stacked layers; each passes its whole output sequence up.
        nonlinearity: ``"tanh"`` or ``"relu"``.
        bias: with ``bias_ih`` and ``bias_hh`` (their sum is the course's ``b_a``).
        batch_first: inputs and outputs are ``(N, T, .)`` instead of ``(T, N, .)``.
        dropout: drop probability on the outputs of every layer but the last, in training mode.
        bidirectional: add a reverse direction; outputs are ``[forward, backward]``.
        rng: Generator (or int seed) for the initial weights and for dropout.
        dtype: float32 (default) or float64.

    Parameters follow PyTorch names and shapes: ``weight_ih_l{k}`` ``(H, D)``,
    ``weight_hh_l{k}`` ``(H, H)``, ``bias_ih_l{k}``, ``bias_hh_l{k}`` ``(H,)``, with a
    ``_reverse`` suffix for the backward direction; ``torch.nn.RNN`` loads the state dict as is.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        *,
        reverse: bool = False,
        rng: np.random.Generator | int | None = None,
        dtype: object = np.float32,
    ):
        if nonlinearity not in _NONLINEARITIES:
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(
            f"rnn_{nonlinearity}",
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            reverse=reverse,
            rng=rng,
            dtype=dtype,
        )


class GRU(RNNBase):
    """Gated recurrent unit.

    With the course's Γu (update) and Γr (reset) gates::

        Γr = σ(W_r [a<t-1>, x<t>] + b_r)        Γu = σ(W_u [a<t-1>, x<t>] + b_u)
        c̃<t> = tanh(W_c [Γr*a<t-1>, x<t>] + b_c)     (reset_after=False, the course)
        c̃<t> = tanh(W_in x<t> + b_in + Γr*(W_hn a<t-1> + b_hn))   (reset_after=True, PyTorch)
        a<t> = Γu*c̃<t> + (1-Γu)*a<t-1>

    Parameters are stored as PyTorch's, gates ``r, z, n`` with ``z = 1 - Γu``, so with the
    default ``reset_after=True`` ``torch.nn.GRU`` loads the state dict as is.
    ``simplified=True`` is the course's simplified GRU: no reset gate, gates ``z, n``.
    ``carry_bias`` is added to the initial bias of gate z, so that Γu = σ(-carry_bias) starts
    small and the state is carried over long spans; the default 0 keeps PyTorch's
    initialisation.
    The other arguments are those of :class:`RNN`.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        *,
        reset_after: bool = True,
        simplified: bool = False,
        carry_bias: float = 0.0,
        reverse: bool = False,
        rng: np.random.Generator | int | None = None,
        dtype: object = np.float32,
    ):
        self.reset_after = bool(reset_after)
        self.simplified = bool(simplified)
        mode = "gru_simple" if simplified else "gru" if reset_after else "gru_reset_before"
        super().__init__(
            mode,
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            reverse=reverse,
            rng=rng,
            dtype=dtype,
        )
        self._add_to_initial_bias("z", carry_bias)

    def _extra_repr(self) -> dict:
        out = super()._extra_repr()
        if self.simplified:
            out["simplified"] = True
        elif not self.reset_after:
            out["reset_after"] = False
        return out


class LSTM(RNNBase):
    """Long short-term memory::

        Γu = σ(W_u [a<t-1>, x<t>] + b_u)   Γf = σ(W_f [..] + b_f)   Γo = σ(W_o [..] + b_o)
        c̃<t> = tanh(W_c [a<t-1>, x<t>] + b_c)
        c<t> = Γf*c<t-1> + Γu*c̃<t>          a<t> = Γo*tanh(c<t>)

    ``peephole=True`` lets the three gates also see c<t-1>, element-wise: an extra
    ``weight_peephole_l{k}`` ``(3, H)`` (rows for gates i, f, o) that ``torch.nn.LSTM`` lacks.
    ``forget_bias`` is added to the initial forget-gate bias (Keras's ``unit_forget_bias``
    adds 1): with Γf near 1 at the start, gradients survive long spans (Jozefowicz et al.
    2015). The default 0 keeps PyTorch's initialisation.
    As in the notes, the output gate too sees c<t-1>; Gers and Schmidhuber (and ONNX) let it
    see c<t> instead.
    State is ``(h, c)``. Parameters are PyTorch's, gates ``i, f, g, o``
    (course: Γu, Γf, c̃, Γo). The other arguments are those of :class:`RNN`.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        *,
        peephole: bool | str = False,
        proj_size: int = 0,
        forget_bias: float = 0.0,
        reverse: bool = False,
        rng: np.random.Generator | int | None = None,
        dtype: object = np.float32,
    ):
        super().__init__(
            "lstm",
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            reverse=reverse,
            peephole=peephole,
            proj_size=proj_size,
            rng=rng,
            dtype=dtype,
        )
        self._add_to_initial_bias("f", forget_bias)

    def _extra_repr(self) -> dict:
        out = super()._extra_repr()
        if self.peephole:
            out["peephole"] = self.peephole
        if self.proj_size:
            out["proj_size"] = self.proj_size
        return out
