"""How one layer and direction runs its time loop, decided in one place (:func:`forward`).

Two ways, the same numbers (the tests hold them equal for every variant):

- the reference: a loop over the step functions of :mod:`rnnkit.cells`, one NumPy call after
  another, the code to read (``layer.backend = "reference"``, ``RNNKIT_COMPILED=0``, or where
  Numba or NumPy's OpenBLAS is missing);
- the compiled loop of :mod:`rnnkit.kernels` (the default): the input projection of all steps
  in one product, then each chunk of sequences through all T steps in one compiled call, the
  chunks on rnnkit's threads (:mod:`rnnkit.parallel`), then the weight and input gradients as
  products over all steps, split over the threads by rows.

Buffers a loop keeps between a forward pass and its backward pass (gates, states) come from
the layer's own :class:`Workspace` and go back to it after the backward pass, or, in evaluation
mode, when the forward pass's cache is dropped unused: a fresh large array costs a page fault
per 4 KiB on first write, 5% to 15% of a training step. In inference mode
(:func:`rnnkit.module.inference_mode`) nothing is kept for a backward pass: they go back at
once, and where the loop projects its inputs step by step, the gates are one step's, reused
by every step, instead of all steps' (which the backward pass would read).
"""

from __future__ import annotations

import math
import threading
import weakref

import numpy as np

from . import blas, kernels, packed, parallel
from .cells import CellKind, CellParams, input_projection, input_projection_backward

MODES = ("training", "evaluation", "inference")  # what a forward pass keeps for a backward one

# ---------------------------------------------------------------- the reference loop


def reference_forward(
    kind: CellKind, xw: np.ndarray, state: tuple, p: CellParams, mask: np.ndarray | None
) -> tuple[np.ndarray, tuple, list]:
    """A loop over the cell: one ``kind.forward`` per step."""
    T, N, _ = xw.shape
    out = np.empty((T, N, state[0].shape[1]), dtype=xw.dtype)
    caches = []
    for t in range(T):
        new, step_cache = kind.forward(xw[t], state, p)
        caches.append(step_cache)
        if mask is None:
            state = new
            out[t] = new[0]
        else:  # finished sequences keep their state and output zeros
            m = mask[t]
            state = tuple(np.where(m > 0, s_new, s_old) for s_new, s_old in zip(new, state))
            out[t] = new[0] * m
    return out, state, caches


def reference_backward(
    kind: CellKind,
    dout: np.ndarray,
    dstate: tuple,
    caches: list,
    p: CellParams,
    mask: np.ndarray | None,
) -> tuple[np.ndarray, tuple, dict]:
    """Backpropagation through time with one ``kind.backward`` per step."""
    T, N, _ = dout.shape
    dxw = np.empty((T, N, p.w_ih.shape[0]), dtype=dout.dtype)
    grads: dict[str, np.ndarray] = {}
    for t in reversed(range(T)):
        if mask is None:
            dnew = (dstate[0] + dout[t],) + dstate[1:]
            dxw[t], dstate, g = kind.backward(dnew, caches[t], p)
        else:  # a finished sequence passes its state (and gradient) straight through
            m = mask[t]
            dnew = ((dstate[0] + dout[t]) * m,) + tuple(d * m for d in dstate[1:])
            dxw[t], dprev, g = kind.backward(dnew, caches[t], p)
            dstate = tuple(dp + d * (1 - m) for dp, d in zip(dprev, dstate))
        for key, value in g.items():
            grads[key] = grads[key] + value if key in grads else value
    return dxw, dstate, grads


# ---------------------------------------------------------------- buffers of one layer


class Workspace:
    """The buffers of one layer and direction, kept from call to call of that layer only.

    A buffer is taken by name and handed back after use; one of any size reuses the memory of
    one as large or larger (a batch of shorter sequences takes a view of the longer one's).
    """

    def __init__(self) -> None:
        self._free: dict[tuple[str, np.dtype], list[np.ndarray]] = {}
        self._lock = threading.Lock()

    def take(self, name: str, shape: tuple, dtype: np.dtype) -> np.ndarray:
        """A buffer of ``shape`` (contents undefined)."""
        size, dtype = math.prod(shape), np.dtype(dtype)
        with self._lock:
            spares = self._free.get((name, dtype), [])
            flat = spares.pop() if spares else None
        if flat is None or flat.size < size:
            flat = np.empty(size, dtype=dtype)
        return flat[:size].reshape(shape)

    def give(self, name: str, array: np.ndarray) -> None:
        """Hand ``array`` (one :meth:`take` returned) back for the next call."""
        flat = array.base if array.base is not None else array
        with self._lock:
            self._free.setdefault((name, array.dtype), []).append(flat.reshape(-1))


class LoopCache(dict):
    """What a compiled loop's backward pass needs; ``kept`` names its workspace buffers."""


def _recycle_when_dropped(cache: LoopCache, workspace: Workspace) -> None:
    """Evaluation mode: the buffers go back when the cache is dropped unused (a backward pass
    that uses it takes them out first)."""
    kept = [(name, cache[name]) for name in cache["kept"]]
    cache["unused"] = weakref.finalize(cache, _give_all, workspace, kept)
    cache["unused"].atexit = False


def _give_all(workspace: Workspace, kept: list) -> None:
    for name, array in kept:
        workspace.give(name, array)


class TableRows:
    """A layer's input given as rows of a table, ``x[t, n] = table[ids[t, n]]``: an embedding
    feeding the layer. ``x<t> W_ih^T`` is then row ``ids[t, n]`` of the table's own projection
    ``table W_ih^T``, a product of V rows instead of T*N; backward, the gates' gradients summed
    by id give ``dW_ih`` and the table's gradient from V rows the same way. Same numbers as the
    dense input (sums in another order)."""

    def __init__(self, table: np.ndarray, ids: np.ndarray):
        self.table, self.ids = table, ids  # (V, D), (T, N) integers in [0, V)
        self.shape, self.dtype = (*ids.shape, table.shape[1]), table.dtype

    def dense(self) -> np.ndarray:
        """The rows themselves, ``(T, N, D)``."""
        return self.table[self.ids]

    @property
    def projected(self) -> bool:
        """Whether the compiled loop projects the table: where it has fewer rows than the
        input (a vocabulary of characters, not one of many words)."""
        return len(self.table) < self.ids.size

    def project(self, w_ih: np.ndarray, gates: np.ndarray) -> None:
        """``gates = x W_ih^T`` for all steps, ``(T*N, G)``, read from ``table W_ih^T``."""
        np.take(self.table @ w_ih.T, self.ids.reshape(-1), axis=0, out=gates)

    def by_id(self, rows: np.ndarray) -> np.ndarray:
        """``(T*N, K)`` rows, one per step and sequence, summed by the id each step read:
        ``(V, K)``."""
        sums = np.zeros((len(self.table), rows.shape[1]), dtype=rows.dtype)
        if kernels.AVAILABLE:
            kernels.add_rows(sums, self.ids.reshape(-1), np.ascontiguousarray(rows))
        else:
            np.add.at(sums, self.ids.reshape(-1), rows)
        return sums


# ---------------------------------------------------------------- the one place that chooses


def compiled(backend: str) -> bool:
    """Whether a layer with this ``backend`` runs the compiled loop."""
    if backend not in ("fast", "reference"):
        raise ValueError(f"backend must be 'fast' or 'reference', got {backend!r}")
    return backend == "fast" and kernels.AVAILABLE


_PIECE = 1 << 20  # multiply-adds below which work is not split over threads (a few us)
_CACHED = 3 << 18  # bytes of weights a core's cache keeps from step to step (of its 1 MiB)
_WIDE = 16  # a chunk's rows from which its step products keep up with weights from L3
_LONG = 100 << 20  # multiply-adds from which a piece wants a core of its own (a few ms)


def _chunks(x: np.ndarray, p: CellParams) -> list[tuple[int, int]]:
    """The batch in chunks of sequences, each run through all steps on a thread of its own:
    one chunk where there is little work, one thread, or too few sequences (then NumPy's BLAS
    may use its own threads in the products)."""
    T, N, D = x.shape
    per_sequence = T * p.w_hh.shape[0] * (D + p.w_hh.shape[1])  # multiply-adds
    parts = min(parallel.num_threads(), N // 8, N * per_sequence // _PIECE)
    return parallel.spans(N, max(parts, 1), align=16 if N >= 32 else 8)


def _apart(x: np.ndarray, chunks: list, p: CellParams) -> bool:
    """Whether each chunk is long enough to want a core of its own (``parallel.run``'s
    ``apart``); a short call is done sooner where the system first puts its threads."""
    T, _, D = x.shape
    width = min(n1 - n0 for n0, n1 in chunks)
    return T * width * p.w_hh.shape[0] * (D + p.w_hh.shape[1]) >= _LONG


def _own_threads(x: np.ndarray, chunks: list, p: CellParams) -> bool:
    """Whether NumPy's BLAS stays on one thread for the call: where rnnkit's threads run the
    chunks, and where one chunk's products are small (OpenBLAS would still split each step's
    product over its threads, and every step would wait for the slower one). A single chunk
    with recurrent weights past 1 MiB in float32 lets OpenBLAS split its products; a call
    with little work needs nothing (OpenBLAS keeps small products on one thread)."""
    T, N, D = x.shape
    work = T * N * p.w_hh.shape[0] * (D + p.w_hh.shape[1])
    return len(chunks) > 1 or (p.w_hh.size <= 1 << 18 and work > _PIECE)


def _products(jobs: list, split: bool, then: tuple = ()) -> None:
    """Run products ``c = a @ b + beta * c``, given as ``(a, b, c, beta)``; products into one
    output run in turn, in order. With ``split``, each output is split by rows where large.
    Where NumPy's BLAS is held to one thread (inside rnnkit's calls), the pieces and the calls
    ``then`` run side by side on rnnkit's threads, and ``b`` packed once
    (:mod:`rnnkit.packed`) beats BLAS's own product; where it is not, every piece is a
    product on BLAS's own threads, and all run in turn (two at once would put four threads on
    two cores)."""
    alone = blas.threads() == 1
    by_output: dict[int, list] = {}
    for a, b, c, beta in jobs:
        by_output.setdefault(id(c), []).append((a, b, _packed(a, b) if alone else None, c, beta))
    pieces, total = [], 0
    for group in by_output.values():
        rows, cols = group[0][3].shape
        work = rows * cols * sum(job[0].shape[1] for job in group)
        parts = min(parallel.num_threads(), work // _PIECE) if split else 1
        for r0, r1 in parallel.spans(rows, parts, 8):
            pieces.append(_rows_of(group, r0, r1))
        total += work
    if alone:
        parallel.run(pieces + list(then), total >= _LONG * len(pieces))
    else:
        for piece in pieces + list(then):
            piece()


def _packed(a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """The panels of ``b^T`` for :func:`rnnkit.packed.product`, where ``a``'s rows are
    contiguous and many enough for its tiles; else None (BLAS)."""
    if not kernels.AVAILABLE or a.strides[1] != a.itemsize or a.shape[0] < 8 * packed.SEQUENCES:
        return None
    rows = packed.tile_rows(b.shape[1], b.itemsize)
    return packed.pack(b.T, rows) if rows else None


def _rows_of(group: list, r0: int, r1: int):
    def piece():  # one compiled call a product (BLAS's, where there are no panels)
        for a, b, panels, c, beta in group:
            if panels is None:
                panels = np.empty((0, 0, 0), dtype=b.dtype)
            kernels.product((b.T, panels), a[r0:r1], c[r0:r1], beta)

    return piece


def forward(
    kind: CellKind,
    backend: str,
    x: np.ndarray,
    state: tuple,
    p: CellParams,
    mask: np.ndarray | None,
    workspace: Workspace,
    mode: str,
) -> tuple[np.ndarray, tuple, object]:
    """One direction of one layer forward in time: ``x (T, N, D)``, ``state`` a tuple of
    ``(N, H)`` arrays, ``mask (T, N, 1)`` or None. Returns ``(output (T, N, H), final state,
    cache)``. ``mode`` (one of :data:`MODES`): in evaluation mode the buffers return when the
    cache is dropped; in inference mode at once, and the cache is None."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if isinstance(x, TableRows) and not (compiled(backend) and x.projected):
        x = x.dense()
    if not compiled(backend):
        xw = input_projection(x, p)  # (T, N, G*H): every step's input projection, one product
        out, final, cache = reference_forward(kind, xw, state, p, mask)
        return out, final, None if mode == "inference" else cache
    chunks = _chunks(x, p)
    cell = _CELLS[kind.name]
    with parallel.region(_own_threads(x, chunks, p)):
        out, final, cache = cell.forward(x, state, p, mask, workspace, chunks, mode)
    if mode == "inference":
        _give_all(workspace, [(name, cache[name]) for name in cache["kept"]])
        return out, final, None
    if mode == "evaluation":
        _recycle_when_dropped(cache, workspace)
    return out, final, cache


def backward(
    kind: CellKind,
    x: np.ndarray,
    dout: np.ndarray,
    dstate: tuple,
    cache: object,
    p: CellParams,
    mask: np.ndarray | None,
    grads: dict[str, np.ndarray],
    workspace: Workspace,
) -> tuple[np.ndarray, tuple]:
    """Backpropagation through the loop that made ``cache``; adds every parameter's gradient
    into ``grads`` (keys as in :class:`rnnkit.cells.CellParams`). Returns ``(dx, dstate0)``;
    for :class:`TableRows`, dx is the table's gradient ``(V, D)``."""
    if isinstance(x, TableRows) and not (isinstance(cache, LoopCache) and x.projected):
        dx, dstate = backward(kind, x.dense(), dout, dstate, cache, p, mask, grads, workspace)
        return x.by_id(dx.reshape(-1, dx.shape[2])), dstate  # the forward pass read the rows
    if not isinstance(cache, LoopCache):  # the reference loop's
        dxw, dstate, hidden = reference_backward(kind, dout, dstate, cache, p, mask)
        dx, inputs = input_projection_backward(dxw, x, p, hidden.pop("b_ih", None))
        for key, value in {**hidden, **inputs}.items():
            grads[key] += value
        return dx, dstate
    unused = cache.pop("unused", None)
    if unused is not None:
        unused.detach()  # used: this pass gives the buffers back itself
    chunks = _chunks(x, p)
    with parallel.region(_own_threads(x, chunks, p)):
        dx, dstate = _CELLS[kind.name].backward(x, dout, dstate, cache, p, mask, grads, chunks)
    for name in cache["kept"]:
        workspace.give(name, cache[name])
    return dx, dstate


# ---------------------------------------------------------------- pieces the cells share


def _spread(values: np.ndarray, N: int, H: int) -> np.ndarray:
    """Per-unit values (``(..., H)``, rows of H) spread over N sequences as the states lie,
    ``(rows, N, H)`` raveled."""
    rows = values.reshape(-1, 1, H)
    spread = np.empty((rows.shape[0], N, H), dtype=values.dtype)
    spread[...] = rows
    return spread.reshape(-1)


def _keep(mask: np.ndarray | None, dtype) -> np.ndarray:
    """The mask as the kernels read it: ``(T, N)`` raveled; empty: none."""
    if mask is None:
        return np.empty(0, dtype=dtype)
    return np.ascontiguousarray(mask[:, :, 0], dtype=dtype).reshape(-1)


def _gates(workspace: Workspace | None, name: str, G: int, T: int, N: int, dtype) -> np.ndarray:
    """A ``(T*N, G)`` matrix of gates, step t in rows ``t*N .. t*N + N``; from the workspace,
    or fresh without one."""
    if workspace is None:
        return np.empty((T * N, G), dtype=dtype)
    return workspace.take(name, (T * N, G), dtype)


def _project(x: np.ndarray, w_ih: np.ndarray, gates: np.ndarray, split: bool) -> None:
    """``Z = x W_ih^T`` for all steps at once: the input side of every gate."""
    T, N, D = x.shape
    _products([(x.reshape(T * N, D), w_ih.T, gates, 0.0)], split)


def _bias_grads(Z: np.ndarray) -> np.ndarray:
    """``Σ dZ`` over all steps and sequences, for each gate."""
    return np.ones(Z.shape[0], dtype=Z.dtype) @ Z  # BLAS, 2x to 4x .sum


def _panel_rows(w: np.ndarray, ctx: dict) -> int:
    """The height of the panels :func:`_weights` packs ``w`` in (0: not packed)."""
    one_sequence = min(n1 - n0 for n0, n1 in ctx["chunks"]) == 1
    if ctx["T"] < 8:
        return 0  # packing costs a pass over W: not for a few steps
    if one_sequence and blas.threads() > 1:
        return 0  # BLAS's matrix-vector product reads W on both cores, from both caches
    return packed.tile_rows(w.shape[0], w.itemsize)  # W's rows: outputs of a @ W^T


def _weights(w: np.ndarray | None, ctx: dict) -> tuple[np.ndarray, np.ndarray]:
    """``(W, its panels)`` as the compiled loops take a weight for their step products: W
    packed for the chunks' width (:mod:`rnnkit.packed`), or empty panels where the chunks
    are too narrow (BLAS alone); a missing weight as empty arrays."""
    dt = ctx["dt"]
    if w is None:
        return np.empty((0, 0), dtype=dt), np.empty((0, 0, 0), dtype=dt)
    rows = _panel_rows(w, ctx)
    return w, packed.pack(w, rows) if rows else np.empty((0, 0, 0), dtype=dt)


# ---------------------------------------------------------------- the compiled cells


class _Compiled:
    """What every compiled cell does around its own loops: the input projection, the states,
    the mask, the chunks of the batch, the final state; backward, the products over all steps.

    A cell says its number of gates and returns, for a chunk of sequences, the compiled call
    of its loop (``chunk_forward``, ``chunk_backward``); the other methods add what differs."""

    gates = 1
    kept = ("gates",)  # workspace buffers in the cache, handed back after use

    def forward(self, x, state, p, mask, ws, chunks, mode):
        T, N, _ = x.shape
        H, P, dt = p.w_hh.shape[0] // self.gates, p.w_hh.shape[1], x.dtype
        ctx = {"T": T, "N": N, "H": H, "P": P, "p": p, "ws": ws, "dt": dt, "chunks": chunks}
        inference = mode == "inference"
        # Step by step (no pass of all steps' gates through memory between the projection and
        # the loop) where the weights stay in a core's cache, where a chunk's rows are enough
        # for its products to run at the speed of weights read from the shared cache, or
        # where the gates of past steps need not be kept. For one sequence a step's product
        # would read W_ih for one row: all steps in one product is faster.
        fits = p.w_ih.nbytes + p.w_hh.nbytes <= _CACHED
        wide = min(n1 - n0 for n0, n1 in chunks) >= _WIDE
        rows = isinstance(x, TableRows)  # the input side read from the table's projection
        by_step = _panel_rows(p.w_ih, ctx) > 0 and N > 1 and (fits or wide or inference)
        by_step = by_step and not rows
        ctx["one_step"] = inference and by_step
        Z = ctx["gates"] = _gates(ws, "gates", self.gates * H, 1 if ctx["one_step"] else T, N, dt)
        if by_step:
            ctx["inputs"] = (_weights(p.w_ih, ctx), x)
        else:  # all steps in one product first
            x.project(p.w_ih, Z) if rows else _project(x, p.w_ih, Z, len(chunks) > 1)
            ctx["inputs"] = (_weights(None, ctx), np.empty((0, 0, 0), dtype=dt))
        # S[t] is a<t-1> and S[1:] the output: fresh, as the output leaves with the caller
        S = ctx["states"] = np.empty((T + 1, N, P), dtype=dt)
        S[0] = state[0]
        ctx["keep"] = _keep(mask, dt)
        out = S[1:] if mask is None else np.empty((T, N, P), dtype=dt)
        ctx["output"] = out
        self.prepare(ctx, state)
        parallel.run([self.chunk_forward(ctx, *span) for span in chunks], _apart(x, chunks, p))
        cache = LoopCache({name: ctx[name] for name in self.kept if name in ctx})
        cache.update(kept=tuple(cache), states=S)
        out.flags.writeable = False  # the backward pass reads a<t> from the states
        return out, self.final(ctx), cache

    def prepare(self, ctx: dict, state: tuple) -> None:
        """The cell's own buffers for the forward pass."""
        bias = _bias_sum(ctx["p"], self.gates, ctx["H"], ctx["dt"])
        ctx["bias"] = _spread(bias, ctx["N"], ctx["H"])
        ctx["w_hh"] = _weights(ctx["p"].w_hh, ctx)

    def final(self, ctx: dict) -> tuple:
        return (ctx["states"][ctx["T"]].copy(),)

    def backward(self, x, dout, dstate, cache, p, mask, grads, chunks):
        """Adds this pass's gradients into ``grads`` once they are whole, so that two passes
        give exactly twice one."""
        mine = {key: np.zeros_like(value) for key, value in grads.items()}
        dx, dstate0 = self._backward(x, dout, dstate, cache, p, mask, mine, chunks)
        for key, value in mine.items():
            grads[key] += value
        return dx, dstate0

    def _backward(self, x, dout, dstate, cache, p, mask, grads, chunks):
        T, N, D = x.shape
        H, P, dt = p.w_hh.shape[0] // self.gates, p.w_hh.shape[1], dout.dtype
        ctx = dict(cache, T=T, N=N, H=H, P=P, p=p, dt=dt, chunks=chunks)
        ctx["dh"] = np.array(dstate[0], dtype=dt, order="C")  # (N, P): the chunks take da<0>
        ctx["keep"] = _keep(mask, dt)
        ctx["dout"] = np.ascontiguousarray(dout if mask is None else dout * mask)  # 0 past ends
        ctx["w_hh_t"] = _weights(p.w_hh.T, ctx)
        self.prepare_backward(ctx, dstate)
        parallel.run([self.chunk_backward(ctx, *span) for span in chunks], _apart(x, chunks, p))
        Z = ctx["gates"]
        if isinstance(x, TableRows):  # dz summed by id: Σ_t dz<t> x<t>^T from V rows
            dZ, X = x.by_id(Z), x.table
            dx = np.empty_like(X)
        else:
            dZ, X, dx = Z, x.reshape(T * N, D), np.empty((T, N, D), dtype=dt)
        jobs = [(dZ, p.w_ih, dx.reshape(-1, D), 0.0), (dZ.T, X, grads["w_ih"], 0.0)]
        a_prev = ctx["states"].reshape(-1, P)[: T * N]  # a<t-1> of every step, h0 first
        for dz, dw in self.hidden_side(ctx, grads):  # Σ_t dz<t>^T a<t-1>
            jobs.append((dz.T, a_prev, dw, 1.0))
        biases = [_call(self.bias_grads, ctx, grads)] if p.b_ih is not None else []
        _products(jobs + self.more_products(ctx, grads), len(chunks) > 1, biases)
        self.finish_backward(ctx, grads)
        return dx, self.dfinal(ctx)

    def prepare_backward(self, ctx: dict, dstate: tuple) -> None:
        """The cell's own buffers for the backward pass."""

    def hidden_side(self, ctx: dict, grads: dict) -> list:
        """``(dz, dW)``: the gradient of the hidden side of the gates over all steps, and the
        weights it is for (they multiply a<t-1>)."""
        return [(ctx["gates"], grads["w_hh"])]

    def more_products(self, ctx: dict, grads: dict) -> list:
        return []

    def bias_grads(self, ctx: dict, grads: dict) -> None:
        """Both biases enter one sum: db_ih = db_hh = Σ dz."""
        db = _bias_grads(ctx["gates"])
        grads["b_ih"] += db
        grads["b_hh"] += db

    def finish_backward(self, ctx: dict, grads: dict) -> None:
        """The cell's own gradients after the products."""

    def dfinal(self, ctx: dict) -> tuple:
        return (ctx["dh"],)


def _call(function, *args):
    return lambda: function(*args)


def _bias_sum(p: CellParams, G: int, H: int, dt) -> np.ndarray:
    """``b_ih + b_hh`` (zeros without biases)."""
    return np.zeros(G * H, dtype=dt) if p.b_ih is None else p.b_ih + p.b_hh


def _carry(ctx: dict, rows: int) -> np.ndarray:
    """Scratch for what finished sequences carry past a step (empty without a mask)."""
    return np.empty((rows * ctx["N"] if ctx["keep"].size else 0), dtype=ctx["dt"])


class _Gated(_Compiled):
    """The vanilla RNN (tanh or relu) and the course's simplified GRU: the recurrent product
    goes into the gates, the step's arithmetic follows."""

    def __init__(self, cell: int, gates: int):
        self.cell, self.gates = cell, gates

    def chunk_forward(self, ctx, n0, n1):
        T, N, H, one = ctx["T"], ctx["N"], ctx["H"], ctx["one_step"]
        Z, L = ctx["gates"], kernels.layout(T, N, n0, n1, self.gates, H, one)
        rest = (ctx["states"], ctx["bias"], ctx["keep"], ctx["output"])
        return _call(kernels.gated_forward, self.cell, L, n1, Z, ctx["inputs"], ctx["w_hh"], *rest)

    def chunk_backward(self, ctx, n0, n1):
        Z, L = ctx["gates"], kernels.layout(ctx["T"], ctx["N"], n0, n1, self.gates, ctx["H"])
        rest = (ctx["states"], ctx["keep"], ctx["dout"], ctx["dh"], _carry(ctx, ctx["H"]))
        return _call(kernels.gated_backward, self.cell, L, n1, Z, ctx["w_hh_t"], *rest)


class _GRU(_Compiled):
    """The full GRU, the reset after W_hn (PyTorch, cuDNN) or before (the course)."""

    gates = 3
    kept = ("gates", "reset_in")

    def __init__(self, after: bool):
        self.after = after

    def _reset_layout(self, ctx) -> tuple:
        """Where the reset's input lies (``t*r[0] + a*r[1] + ..``): as one gate of the gates."""
        L = kernels.layout(ctx["T"], ctx["N"], 0, ctx["N"], 1, ctx["H"])
        return (L[5], L[7])

    def prepare(self, ctx, state):
        p, H, N, dt = ctx["p"], ctx["H"], ctx["N"], ctx["dt"]
        bias, b_hn = _bias_sum(p, 3, H, dt), np.zeros(H, dtype=dt)
        if self.after and p.b_ih is not None:  # b_hn stays inside the reset, apart
            bias[2 * H :], b_hn = p.b_ih[2 * H :], p.b_hh[2 * H :]
        ctx["bias"] = _spread(bias, N, H)
        ctx["b_hn"] = _spread(b_hn, N, H) if self.after else None  # None: the reset before
        ctx["reset_in"] = _gates(ctx["ws"], "reset_in", H, ctx["T"], N, dt)
        ctx["w_h"] = _weights(p.w_hh if self.after else p.w_hh[: 2 * H], ctx)
        ctx["w_n"] = _weights(p.w_hh[2 * H :], ctx)

    def chunk_forward(self, ctx, n0, n1):
        N, H, Z, R = ctx["N"], ctx["H"], ctx["gates"], ctx["reset_in"]
        L = kernels.layout(ctx["T"], N, n0, n1, 3, H, ctx["one_step"])
        hw = np.empty(3 * H * N, dtype=ctx["dt"])
        weights = (ctx["w_h"], ctx["w_n"], ctx["states"], hw, ctx["bias"], ctx["b_hn"])
        reset = (R, self._reset_layout(ctx))
        args = (L, n1, Z, ctx["inputs"], *weights, *reset, ctx["keep"], ctx["output"])
        return _call(kernels.gru_forward, *args)

    def prepare_backward(self, ctx, dstate):
        H, w_hh = ctx["H"], ctx["p"].w_hh
        if not self.after:
            ctx["w_hh_t"] = _weights(w_hh[: 2 * H].T, ctx)
        ctx["w_n_t"] = _weights(w_hh[2 * H :].T, ctx)
        if self.after:  # the n row of the hidden side's gradient, over all steps
            ctx["dhn"] = _gates(None, "", H, ctx["T"], ctx["N"], ctx["dt"])

    def chunk_backward(self, ctx, n0, n1):
        N, H, Z, R = ctx["N"], ctx["H"], ctx["gates"], ctx["reset_in"]
        L, hw = kernels.layout(ctx["T"], N, n0, n1, 3, H), np.empty(3 * H * N, dtype=ctx["dt"])
        dhn = ctx["dhn"].reshape(-1) if self.after else None
        weights = (ctx["w_hh_t"], ctx["w_n_t"], ctx["states"], hw)
        reset = (R, self._reset_layout(ctx), dhn)
        grads = (ctx["keep"], ctx["dout"], ctx["dh"], _carry(ctx, H))
        return _call(kernels.gru_backward, L, n1, Z, *weights, *reset, *grads)

    def hidden_side(self, ctx, grads):
        H, dW, Z = ctx["H"], grads["w_hh"], ctx["gates"]
        sides = [(Z[:, : 2 * H], dW[: 2 * H])]  # Γr and z
        if self.after:  # the n row saw Γr * (W_hn a<t-1> + b_hn)
            sides.append((ctx["dhn"], dW[2 * H :]))
        return sides

    def more_products(self, ctx, grads):
        if self.after:
            return []
        H, Z = ctx["H"], ctx["gates"]  # the n row saw Γr * a<t-1>
        return [(Z[:, 2 * H :].T, ctx["reset_in"], grads["w_hh"][2 * H :], 1.0)]

    def bias_grads(self, ctx, grads):
        if not self.after:
            return super().bias_grads(ctx, grads)
        H, db = ctx["H"], _bias_grads(ctx["gates"])
        grads["b_ih"] += db
        grads["b_hh"][: 2 * H] += db[: 2 * H]
        grads["b_hh"][2 * H :] += _bias_grads(ctx["dhn"])


class _LSTM(_Compiled):
    """The LSTM of :func:`rnnkit.cells.lstm_step_forward`: peepholes in either form, and a
    projection of the output (then ``P``, the size of a<t>, is less than H)."""

    gates = 4
    kept = ("gates", "cells", "tanh_cells", "m")

    def __init__(self, gers: bool):
        self.gers = gers

    def prepare(self, ctx, state):
        super().prepare(ctx, state)
        T, N, H, p, ws, dt = ctx["T"], ctx["N"], ctx["H"], ctx["p"], ctx["ws"], ctx["dt"]
        ctx["cells"] = ws.take("cells", ((T + 1) * N * H,), dt)  # c<t-1> as the states, flat
        ctx["cells"][: N * H] = np.asarray(state[1]).reshape(-1)
        ctx["tanh_cells"] = ws.take("tanh_cells", ((T + 1) * N * H,), dt)
        ctx["peep"] = None if p.w_peep is None else _spread(p.w_peep, N, H)
        if p.w_hr is not None:  # Γo*tanh(c<t>) before the projection, (T*N, H)
            ctx["m"] = _gates(ws, "m", H, T, N, dt)

    def _m(self, ctx, n0, n1):
        """Where Γo*tanh(c<t>) goes: M, or without a projection the states themselves."""
        T, N, S = ctx["T"], ctx["N"], ctx["states"]
        if "m" in ctx:
            L = kernels.layout(T, N, n0, n1, 1, ctx["H"])
            return ctx["m"], _weights(ctx["p"].w_hr, ctx), ctx["m"].reshape(-1), (L[5], L[7])
        L, none = kernels.layout(T, N, n0, n1, 4, ctx["P"]), np.empty((0, 0), dtype=ctx["dt"])
        return none, _weights(None, ctx), S.reshape(-1)[L[3] :], (L[3], L[4])

    def _peepholes(self, peep: np.ndarray | None, size: int) -> tuple:
        """The spread peepholes of Γu and Γf, of Γo, and the Gers form's flag (an array, or
        None for the notes' form): each None without peepholes."""
        if peep is None:
            return None, None, None
        return peep[: 2 * size], peep[2 * size :], (peep if self.gers else None)

    def chunk_forward(self, ctx, n0, n1):
        T, N, H, P, Z = ctx["T"], ctx["N"], ctx["H"], ctx["P"], ctx["gates"]
        L = kernels.layout(T, N, n0, n1, 4, H, ctx["one_step"])
        Lp = kernels.layout(T, N, n0, n1, 4, P)
        M, w_hr, m, ml = self._m(ctx, n0, n1)
        peepholes = self._peepholes(ctx["peep"], H * N)
        states = (ctx["states"], ctx["cells"], ctx["tanh_cells"], M, m, ml)
        outputs = (ctx["keep"], ctx["output"])
        weights = (ctx["w_hh"], w_hr, ctx["bias"])
        args = (L, Lp, n1, Z, ctx["inputs"], *weights, peepholes, states, outputs)
        return _call(kernels.lstm_forward, *args)

    def final(self, ctx):
        T, N, H = ctx["T"], ctx["N"], ctx["H"]
        return super().final(ctx) + (ctx["cells"][T * N * H :].reshape(N, H).copy(),)

    def prepare_backward(self, ctx, dstate):
        p, dt, N, H, P, T = ctx["p"], ctx["dt"], ctx["N"], ctx["H"], ctx["P"], ctx["T"]
        ctx["dc"] = np.array(dstate[1], dtype=dt, order="C")  # (N, H): the chunks take dc<0>
        ctx["peep"] = None if p.w_peep is None else _spread(p.w_peep, N, H)
        ctx["dpeep"] = None if p.w_peep is None else np.zeros_like(ctx["peep"])
        proj = p.w_hr is not None
        ctx["dM"] = _gates(None, "", P if proj else 0, T, N, dt)  # da<t> over all steps, for W_hr
        ctx["dm"] = np.empty(H * N if proj else 0, dtype=dt)
        ctx["w_hr_t"] = _weights(p.w_hr.T if proj else None, ctx)

    def chunk_backward(self, ctx, n0, n1):
        T, N, H, P, Z = ctx["T"], ctx["N"], ctx["H"], ctx["P"], ctx["gates"]
        L, Lp = kernels.layout(T, N, n0, n1, 4, H), kernels.layout(T, N, n0, n1, 4, P)
        carry = _carry(ctx, max(H, P)).reshape(1, -1).repeat(2, axis=0)
        peepholes = self._peepholes(ctx["peep"], H * N)
        states = (ctx["cells"], ctx["tanh_cells"], ctx["keep"])
        dpeep_if, dpeep_o, _ = self._peepholes(ctx["dpeep"], H * N)
        grads = (ctx["dout"], ctx["dh"], ctx["dc"], ctx["dM"], ctx["dm"], carry, dpeep_if, dpeep_o)
        weights = (ctx["w_hh_t"], ctx["w_hr_t"])
        return _call(kernels.lstm_backward, L, Lp, n1, Z, *weights, peepholes, states, grads)

    def more_products(self, ctx, grads):
        if "m" not in ctx:
            return []
        return [(ctx["dM"].T, ctx["m"], grads["w_hr"], 1.0)]  # dW_hr = Σ da<t>^T m<t>

    def finish_backward(self, ctx, grads):
        if ctx["dpeep"] is not None:
            grads["w_peep"] += ctx["dpeep"].reshape(3, ctx["N"], ctx["H"]).sum(axis=1)

    def dfinal(self, ctx):
        return super().dfinal(ctx) + (ctx["dc"],)


_CELLS = {
    "rnn_tanh": _Gated(kernels.TANH, gates=1),
    "rnn_relu": _Gated(kernels.RELU, gates=1),
    "gru_simple": _Gated(kernels.SIMPLE, gates=2),
    "gru": _GRU(after=True),
    "gru_reset_before": _GRU(after=False),
    "lstm": _LSTM(gers=False),
    "lstm_gers": _LSTM(gers=True),
}
