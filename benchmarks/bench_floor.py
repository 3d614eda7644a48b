"""How close to the GEMM-only bound a layer can come while its gate arithmetic runs on one core.

For each point of the layer grid (bench_layers.py) it times the bound (the layer's matrix
products in NumPy, nothing else) and the compiled step kernels of rnnkit.kernels alone, T
times on one step's buffers: the gate arithmetic of the whole sequence with its data in
cache and nothing else around it, the least a single core spends on it. A layer's time is at
least the sum of the two, so bound / (bound + kernels) is the highest fraction of the bound it
can reach (training: the forward and backward kernels). Where that is below 0.85, no schedule
on one core meets the bar; only running the gate arithmetic on the second core too would,
and that core's BLAS thread keeps spinning after every product (BENCHMARKS.md).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_floor.py

Needs Numba (rnnkit[fast]). Options: --cells, --batches, --hiddens, --out, as bench_layers.py.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import bench_layers
import numpy as np

from rnnkit import kernels

T = bench_layers.T
RESULTS = Path(__file__).parent / "results" / "floor.json"


if kernels.AVAILABLE:  # the loops over the steps compiled too: no Python between kernels
    jit = kernels.numba.njit

    @jit
    def _lstm(train, zt, z, rows, stride, c_all, h_all, tanh_c, bias, dh, dc, carry, none2,
              none1):  # fmt: skip
        for _ in range(T):
            kernels.lstm_forward_step(zt, z, rows, 0, stride, c_all, h_all, tanh_c, none2,
                                      none1, bias, none2, 0)  # fmt: skip
            if train:
                kernels.lstm_backward_step(z, rows, 0, stride, c_all, tanh_c, dh, dc, carry,
                                           none1, none2, 0)  # fmt: skip

    @jit
    def _gru(train, gates, hw, b_x, b_hn, h_prev, h, reset_in, d_out, dh, d_hidden, dhn,
             direct, empty, none1):  # fmt: skip
        for _ in range(T):
            kernels.gru_forward_step(gates, hw, b_x, b_hn, h_prev, h, reset_in, empty, none1)
            if train:
                kernels.gru_backward_step(gates, h_prev, reset_in, d_out, dh, d_hidden, dhn,
                                          direct, none1)  # fmt: skip

    @jit
    def _rnn(train, z, hw, bias, h_prev, h, d_out, dh, carry, empty, none1):
        for _ in range(T):
            kernels.rnn_forward_step(z, hw, bias, h_prev, h, empty, none1, False)
            if train:
                kernels.rnn_backward_step(z, d_out, dh, carry, none1, False)


def kernel_steps(cell: str, N: int, H: int):
    """(train, infer): T calls of the cell's compiled step kernels on one step's buffers,
    forward only for inference, forward then backward for training (the forward step rewrites
    the gates that the backward step turned into dz)."""
    f = np.float32
    rng = np.random.default_rng(0)

    def filled(*shape):
        return rng.standard_normal(shape, dtype=f) * f(0.5)

    none2, none1, empty = np.empty((1, 0), f), np.empty(0, f), np.empty((0, 0), f)
    if cell == "lstm":  # columns, as the layer runs them: 4H rows of N; one sequence, one row
        rows, stride = (1, H) if N == 1 else (H, N)
        gates = (filled(4 * H * N), filled(4 * H * N))  # W_aa a<t-1>, and the rest of z
        states = (filled(2, H * N), filled(2, H * N), filled(1, H * N), filled(4 * H * N))
        grads = (filled(H * N), filled(H * N), np.empty((2, 0), f))
        args = (*gates, rows, stride, *states, *grads, none2, none1)
        run = _lstm
    elif cell == "gru":  # rows, reset after
        gates = (filled(N, 3 * H), filled(N, 3 * H), filled(3 * H), filled(H))
        states = tuple(filled(N, H) for _ in range(5))  # a<t-1>, a<t>, reset_in, da, dh
        grads = (filled(N, 3 * H), filled(N, H), filled(N, H))
        args = (*gates, *states, *grads, empty, none1)
        run = _gru
    else:  # the tanh RNN, rows
        args = (filled(N, H), filled(N, H), filled(H), *(filled(N, H) for _ in range(5)))
        args = (*args, empty, none1)
        run = _rnn

    return (lambda: run(True, *args)), (lambda: run(False, *args))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", default="rnn,gru,lstm")
    p.add_argument("--batches", default="1,32,128")
    p.add_argument("--hiddens", default="128,512")
    p.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes")
    args = p.parse_args()
    if not kernels.AVAILABLE:
        print("bench_floor.py: needs the compiled kernels; pip install 'rnnkit[fast]'")
        return 2
    print(f"{'cell':5} {'N':>4} {'H':>4} {'mode':6} {'bound ms':>9} {'kernels ms':>11} "
          f"{'highest of GEMM':>16}")  # fmt: skip
    rows = []
    for cell in args.cells.split(","):
        for H in map(int, args.hiddens.split(",")):
            for N in map(int, args.batches.split(",")):
                bound = bench_layers.gemm_steps(cell, N, H)
                steps = kernel_steps(cell, N, H)
                for mode, k in (("train", 0), ("infer", 1)):
                    gemm_s = bench_layers.timed(bound[k], calls=5)
                    kernels_s = bench_layers.timed(steps[k], calls=5)
                    row = {"cell": cell, "N": N, "H": H, "T": T, "mode": mode,
                           "gemm_s": gemm_s, "kernels_s": kernels_s,
                           "highest_of_gemm": gemm_s / (gemm_s + kernels_s)}  # fmt: skip
                    rows.append(row)
                    print(f"{cell:5} {N:4} {H:4} {mode:6} {gemm_s * 1e3:9.2f} "
                          f"{kernels_s * 1e3:11.2f} {row['highest_of_gemm']:16.2f}",
                          flush=True)  # fmt: skip
    args.out.parent.mkdir(exist_ok=True)
    meta = {"machine": platform.platform(), "numpy": np.__version__,
            "command": " ".join(sys.argv)}  # fmt: skip
    args.out.write_text(json.dumps({**meta, "rows": rows}, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
