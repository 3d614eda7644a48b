"""Training speed with the machine to ourselves and with one busy process beside us.

A user's machine is rarely idle. This starts one process that keeps a core busy (a Python loop,
as another user's job would) and measures, each quiet and then busy, in turn:

- ``rnnkit demo``'s training, as a user runs it (its printed steps per second, the command in
  a fresh process each time: the compiled kernels load from Numba's cache);
- a training step (forward and backward) of the LSTM and GRU layers at N = 32, T = 100,
  H = 128 and 512, and the same step of PyTorch's layers for comparison.

It prints, for each, the busy speed as a share of the quiet one, and writes
benchmarks/results/busy.json. ``--pin`` pins the busy process to the last core (as "another job
on the other core"); by default the system places it.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_busy.py
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import bench_layers
import numpy as np

RESULTS = Path(__file__).parent / "results" / "busy.json"
BUSY_LOOP = "while True: pass"


@contextmanager
def busy(pin: bool):
    """One process spinning on a core for the duration."""
    command = [sys.executable, "-c", BUSY_LOOP]
    if pin:
        command = ["taskset", "-c", str(os.cpu_count() - 1), *command]
    process = subprocess.Popen(command)
    time.sleep(0.5)  # running before the measurement starts
    try:
        yield
    finally:
        process.kill()
        process.wait()


def demo_steps_per_second() -> float:
    """``rnnkit demo``'s training speed, the last steps/s figure it prints."""
    with tempfile.TemporaryDirectory() as folder:
        result = subprocess.run(
            [sys.executable, "-m", "rnnkit", "demo", "--out", f"{folder}/r", "--progress", "line"],
            capture_output=True,
            text=True,
            check=True,
        )
    rates = re.findall(r"\(([\d.]+) steps/s\)", result.stderr + result.stdout)
    return float(rates[-1])


def step_time(lib: str, cell: str, N: int, H: int) -> float:
    """The best of several training steps of one layer, in seconds."""
    layer = bench_layers.make_rnnkit(cell, H)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((bench_layers.T, N, H), dtype=np.float32)
    dout = rng.standard_normal((bench_layers.T, N, H), dtype=np.float32)
    if lib == "torch":
        steps = bench_layers.torch_steps(bench_layers.make_torch(cell, H, layer), x, dout)
    else:
        steps = bench_layers.rnnkit_steps(layer, x, dout)
    return bench_layers.timed(steps[0], calls=7)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pin", action="store_true", help="pin the busy process to the last core")
    p.add_argument("--rounds", type=int, default=3, help="quiet/busy pairs, the median kept")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    libs = ["rnnkit"]
    try:
        import torch

        torch.set_num_threads(2)
        libs.append("torch")
    except ImportError:
        pass
    cases = [("demo", "rnnkit", None, None, None)]
    cases += [("layer", lib, cell, 32, H) for cell in ("lstm", "gru") for H in (128, 512)
              for lib in libs]  # fmt: skip
    rows = []
    for what, lib, cell, N, H in cases:
        quiet, loaded = [], []
        for _ in range(args.rounds):  # alternate, so drift hits both alike
            if what == "demo":
                quiet.append(demo_steps_per_second())
                with busy(args.pin):
                    loaded.append(demo_steps_per_second())
            else:
                quiet.append(1 / step_time(lib, cell, N, H))
                with busy(args.pin):
                    loaded.append(1 / step_time(lib, cell, N, H))
        row = {"what": what, "lib": lib, "cell": cell, "N": N, "H": H}
        row["quiet_per_s"], row["busy_per_s"] = float(np.median(quiet)), float(np.median(loaded))
        row["share"] = row["busy_per_s"] / row["quiet_per_s"]
        rows.append(row)
        name = "rnnkit demo" if what == "demo" else f"{lib} {cell} N={N} H={H}"
        unit = "steps/s" if what == "demo" else "train steps/s"
        print(
            f"{name:28} quiet {row['quiet_per_s']:8.1f} busy {row['busy_per_s']:8.1f} {unit}: "
            f"{100 * row['share']:5.1f}% kept",
            flush=True,
        )
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(
        json.dumps({"command": " ".join(sys.argv), "pinned": args.pin, "rows": rows}, indent=1)
        + "\n",
        encoding="utf-8",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
