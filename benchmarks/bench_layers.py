"""rnnkit's recurrent layers against PyTorch's on the CPU, in one run, interleaved.

For each cell (RNN, GRU, LSTM), batch N and hidden size H (input size = H, T = 100, float32)
it times a training step (forward + backward) and inference (forward only) of both libraries,
and the "GEMM-only" bound: the same matrix products in NumPy and nothing else, the limit of
NumPy's BLAS here. It prints a table and writes benchmarks/results/layers.json. Each point
is timed in ``--repeats`` rounds, the libraries in turn; a ratio is the median of the rounds'
own ratios.

This machine sets OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE for old OpenBLAS builds, which slows a
current NumPy; run the benchmark with both unset, in that command only:

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_layers.py

Options: --cells lstm,gru --batches 1,32 --hiddens 128 --repeats 5 --no-memory --out FILE.
With Numba installed (rnnkit[fast]) the layers use the compiled kernels; RNNKIT_COMPILED=0
measures the pure NumPy path.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import rnnkit

T = 100
PAUSE = 0.25  # seconds between two libraries' timings
RESULTS = Path(__file__).parent / "results" / "layers.json"
GATES = {"rnn": 1, "gru": 3, "lstm": 4}


def make_rnnkit(cell: str, H: int):
    cls = {"rnn": rnnkit.RNN, "gru": rnnkit.GRU, "lstm": rnnkit.LSTM}[cell]
    return cls(H, H, rng=0)


def make_torch(cell: str, H: int, layer):
    import torch

    cls = {"rnn": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[cell]
    m = cls(H, H)
    m.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
    return m


def rnnkit_steps(layer, x: np.ndarray, dout: np.ndarray):
    def train():
        layer.train()
        out, _, cache = layer.forward(x)
        layer.backward(dout, cache)

    def infer():  # as PyTorch's: evaluation mode, under inference_mode (no backward follows)
        layer.eval()
        with rnnkit.inference_mode():
            layer.forward(x)

    return train, infer


def torch_steps(m, x: np.ndarray, dout: np.ndarray):
    import torch

    xt, dt = torch.from_numpy(x), torch.from_numpy(dout)

    def train():
        m.zero_grad(set_to_none=True)
        out, _ = m(xt)
        out.backward(dt)

    def infer():
        with torch.inference_mode():
            m(xt)

    return train, infer


def gemm_steps(cell: str, N: int, H: int):
    """The products a layer cannot avoid, in the layout rnnkit keeps (states as columns, the
    gates of all steps one (G*H, T*N) matrix), with preallocated outputs and nothing else, on
    NumPy's BLAS with its own threads."""
    G = GATES[cell]
    rng = np.random.default_rng(0)
    f = np.float32
    x = rng.standard_normal((T * N, H), dtype=f)
    w_ih, w_hh = rng.standard_normal((G * H, H), dtype=f), rng.standard_normal((G * H, H), dtype=f)
    w_hh_t = np.ascontiguousarray(w_hh.T)
    z, hw = np.empty((G * H, T * N), f), np.empty((G * H, N), f)
    h = rng.standard_normal((H, N), dtype=f)
    dz = rng.standard_normal((G * H, T * N), dtype=f)
    dh, dw, dx = np.empty((H, N), f), np.empty((G * H, H), f), np.empty((T * N, H), f)

    def infer():
        np.matmul(w_ih, x.T, out=z)  # input projection, all steps
        for _ in range(T):
            np.matmul(w_hh, h, out=hw)  # the recurrent product, step by step

    def train():
        infer()
        for t in range(T):
            np.matmul(w_hh_t, dz[:, t * N : (t + 1) * N], out=dh)  # da<t-1>, step by step
        np.matmul(dz, x, out=dw)  # dW_ih, all steps
        np.matmul(dz, x, out=dw)  # dW_hh, all steps (same shape)
        np.matmul(dz.T, w_ih, out=dx)  # dx, all steps

    return train, infer


def timed(fn, calls: int = 3) -> float:
    """The best of ``calls`` timed calls, after an untimed one (caches, thread pools): on
    these shared cores other work only ever adds time."""
    fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def peak_memory(lib: str, cell: str, N: int, H: int) -> float:
    """Peak resident memory (MiB) added by one training step, in a fresh process.

    A twin of the layer first runs the same step, so that lazy set-up (compiled code loaded
    for each path a call takes, thread pools, a library's own caches) is not counted; the twin
    and what it freed then go back to the system (malloc_trim) and the peak restarts
    (/proc/self/clear_refs), so the measured layer's first step allocates all it needs."""
    code = f"""
import ctypes, gc, sys, numpy as np
sys.path.insert(0, {str(Path(__file__).parent)!r})
import bench_layers as b
layer, twin = b.make_rnnkit({cell!r}, {H}), b.make_rnnkit({cell!r}, {H})
rng = np.random.default_rng(0)
x = rng.standard_normal(({T}, {N}, {H}), dtype=np.float32)
dout = rng.standard_normal(({T}, {N}, {H}), dtype=np.float32)
if {lib!r} == "torch":
    import torch
    torch.set_num_threads(2)
    train, _ = b.torch_steps(b.make_torch({cell!r}, {H}, layer), x, dout)
    warm_up, _ = b.torch_steps(b.make_torch({cell!r}, {H}, twin), x, dout)
else:
    train, _ = b.rnnkit_steps(layer, x, dout)
    warm_up, _ = b.rnnkit_steps(twin, x, dout)
warm_up()
del warm_up, twin
gc.collect()
ctypes.CDLL("libc.so.6").malloc_trim(0)
def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # VmHWM restarts from the resident memory now
before = status("VmRSS")
train()
print((status("VmHWM") - before) / 1024)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ
    )
    return float(out.stdout.strip())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", default="rnn,gru,lstm")
    p.add_argument("--batches", default="1,32,128")
    p.add_argument("--hiddens", default="128,512")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    p.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes")
    args = p.parse_args()
    try:
        import torch

        torch.set_num_threads(2)
    except ImportError:
        torch = None
    kernel = "unknown"
    try:
        from threadpoolctl import threadpool_info

        kernel = ", ".join(
            f"{i['internal_api']} {i.get('architecture')}" for i in threadpool_info()
        )
    except ImportError:
        pass
    compiled = f"Numba {rnnkit.kernels.numba.__version__}" if rnnkit.kernels.AVAILABLE else "off"
    print(
        f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')!r} "
        f"OPENBLAS_L2_SIZE={os.environ.get('OPENBLAS_L2_SIZE')!r}; BLAS: {kernel}; "
        f"compiled kernels: {compiled}"
    )
    rows = []
    header = (
        f"{'cell':5} {'N':>4} {'H':>4} {'mode':6} {'rnnkit tok/s':>13} "
        f"{'torch tok/s':>12} {'ratio':>6} {'of GEMM':>8} {'mem MiB':>15}"
    )
    print(header)
    for cell in args.cells.split(","):
        for H in map(int, args.hiddens.split(",")):
            for N in map(int, args.batches.split(",")):
                layer = make_rnnkit(cell, H)
                rng = np.random.default_rng(1)
                x = rng.standard_normal((T, N, H), dtype=np.float32)
                dout = rng.standard_normal((T, N, H), dtype=np.float32)
                ours = rnnkit_steps(layer, x, dout)
                bound = gemm_steps(cell, N, H)
                theirs = torch_steps(make_torch(cell, H, layer), x, dout) if torch else None
                mem = {}
                if not args.no_memory:
                    mem = {
                        lib: peak_memory(lib, cell, N, H)
                        for lib in (["rnnkit", "torch"] if torch else ["rnnkit"])
                    }
                for mode, k in (("train", 0), ("infer", 1)):
                    t_ours, t_bound, t_theirs = [], [], []
                    for _ in range(args.repeats):  # interleave, so drift hits both alike
                        # The pauses outlast the spin of idle BLAS and OpenMP threads after a
                        # product (about 0.1 s), which would otherwise take the next one's core.
                        t_ours.append(timed(ours[k]))
                        time.sleep(PAUSE)
                        t_bound.append(timed(bound[k]))
                        time.sleep(PAUSE)
                        if theirs:
                            t_theirs.append(timed(theirs[k]))
                            time.sleep(PAUSE)
                    row = {
                        "cell": cell,
                        "N": N,
                        "H": H,
                        "T": T,
                        "mode": mode,
                        "rnnkit_s": statistics.median(t_ours),
                        "gemm_s": statistics.median(t_bound),
                        "torch_s": statistics.median(t_theirs) if theirs else None,
                    }
                    row["rnnkit_tok_s"] = T * N / row["rnnkit_s"]
                    # Ratios are the median of each repeat's own ratio, as bench_train's: a
                    # load that comes and goes on this shared host then slows both sides.
                    row["of_gemm"] = statistics.median(g / o for g, o in zip(t_bound, t_ours))
                    row["vs_torch"] = (
                        statistics.median(t / o for t, o in zip(t_theirs, t_ours))
                        if theirs
                        else None
                    )
                    row["vs_torch_of_medians"] = (
                        row["torch_s"] / row["rnnkit_s"] if theirs else None
                    )
                    if mode == "train":
                        row["mem_rnnkit_mib"] = mem.get("rnnkit")
                        row["mem_torch_mib"] = mem.get("torch")
                    rows.append(row)
                    torch_tok = f"{T * N / row['torch_s']:12.0f}" if theirs else f"{'-':>12}"
                    ratio = f"{row['vs_torch']:6.2f}" if theirs else f"{'-':>6}"
                    m = (
                        f"{mem.get('rnnkit', 0):6.1f} / {mem.get('torch', 0):6.1f}"
                        if mode == "train" and mem
                        else ""
                    )
                    print(
                        f"{cell:5} {N:4} {H:4} {mode:6} {row['rnnkit_tok_s']:13.0f} "
                        f"{torch_tok} {ratio} {row['of_gemm']:8.2f} {m:>15}",
                        flush=True,
                    )
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "machine": platform.platform(),
                "cpus": os.cpu_count(),
                "python": sys.version.split()[0],
                "numpy": np.__version__,
                "torch": torch.__version__ if torch else None,
                "blas": kernel,
                "compiled_kernels": compiled,
                "command": " ".join(sys.argv),
                "rows": rows,
            },
            indent=1,
        )
        + "\n",
        encoding="utf-8",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
