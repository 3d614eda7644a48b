"""Data-parallel training: one process with 2 threads against ``mpiexec -n 2`` with one thread
each (BLAS and rnnkit's own threads alike), on the same global batch.

The language models of bench_train.py (embedding -> LSTM or GRU -> linear head, H = 256,
N = 32, T = 100, float32, Adam, clipping), trained by ``rnnkit.train.train`` on the bundled
dinosaur names (repeated) as a character stream. Reports training tokens per second (of the
global batch) of each way to run, their ratio, the share of each step the processes spend in
the allreduce (waiting for the slower one included), the gradient bytes of a step, and a model
of K machines: each computes 1/K of the measured one-process step, then a ring allreduce sends
2 (K - 1) / K of the gradient bytes over a link of the given bandwidth. Writes
benchmarks/results/distributed.json. Needs ``rnnkit[mpi]``; run it on a quiet machine:

    python benchmarks/bench_distributed.py
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from rnnkit import distributed
from rnnkit.allocator import keep_freed_memory
from rnnkit.cli.runs import bundled_names
from rnnkit.models import LanguageModel
from rnnkit.text import Vocabulary, read_text
from rnnkit.train import StreamLMTask, TrainConfig, train

RESULTS = Path(__file__).parent / "results" / "distributed.json"
RUNS = [(1, 2), (1, 1), (2, 1)]  # (processes, threads each: BLAS and rnnkit's own)
MACHINES = (1, 2, 4, 8, 16, 32)
GBITS = (1, 10, 25, 100)  # link bandwidths of the model, Gbit/s


class Timed(distributed.MPI):
    """The MPI communicator, adding up the seconds its allreduce calls take."""

    seconds = 0.0

    def allreduce(self, buffer: np.ndarray) -> None:
        start = time.perf_counter()
        super().allreduce(buffer)
        self.seconds += time.perf_counter() - start


def worker(args: argparse.Namespace) -> None:
    """One way to run (alone, or as a process of an MPI job): prints a JSON line on rank 0."""
    keep_freed_memory()  # as the rnnkit command does
    _, size = distributed.launched()
    comm = Timed() if size > 1 else distributed.Communicator()
    names = read_text(bundled_names())
    text = names * (args.batch * args.seq_len * (args.steps + args.warmup + 2) // len(names) + 1)
    vocab = Vocabulary.build([text], "char")
    ids = np.asarray(vocab.encode(text))
    model = LanguageModel(len(vocab), args.hidden, cell=args.cell, rng=0)

    def run(steps: int) -> float:
        task = StreamLMTask(ids, ids[:2], args.batch, args.seq_len)  # validation: one token
        config = TrainConfig(steps=steps, lr=2e-3, clip=5.0, progress="none")
        start = time.perf_counter()
        train(model, task, config, comm=comm)
        return time.perf_counter() - start

    run(args.warmup)  # compiled kernels loaded, buffers sized
    comm.seconds = 0.0
    seconds = run(args.steps)
    shares = [comm.seconds / seconds]
    if size > 1:
        shares = comm.comm.gather(shares[0], root=0)
    if comm.rank == 0:
        grads = [g for _, g in model.named_grads()]
        row = {
            "cell": args.cell,
            "processes": size,
            "blas_threads": int(os.environ.get("OPENBLAS_NUM_THREADS", "0")),
            "step_s": seconds / args.steps,
            "tokens_per_s": args.batch * args.seq_len * args.steps / seconds,
            "allreduce_share": shares,
            "gradient_bytes": int(sum(g.nbytes for g in grads)),
            "parameters": int(sum(g.size for g in grads)),
        }
        print(json.dumps(row), flush=True)


def measure(args: argparse.Namespace, cell: str, processes: int, threads: int) -> dict:
    """Run one worker (under mpiexec when ``processes`` > 1) and read its row."""
    command = [sys.executable, __file__, "--worker", "--cell", cell]
    command += ["--hidden", str(args.hidden), "--batch", str(args.batch)]
    command += ["--seq-len", str(args.seq_len), "--steps", str(args.steps)]
    if processes > 1:
        beside = Path(sys.executable).parent / "mpiexec"  # where the mpich wheel puts it
        mpiexec = str(beside) if beside.exists() else shutil.which("mpiexec")
        command = [mpiexec, "-n", str(processes), *command]
    # the threads of each process: its BLAS, and rnnkit's own (rnnkit.parallel)
    variables = (*distributed.BLAS_THREAD_VARIABLES, distributed.OWN_THREAD_VARIABLE)
    env = {**os.environ, **{v: str(threads) for v in variables}}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def machines_model(step_s: float, gradient_bytes: int) -> list[dict]:
    """Tokens per second of K machines relative to one, from one machine's step time and the
    bytes a ring allreduce moves (latency left out: a few microseconds a message)."""
    rows = []
    for gbit in GBITS:
        for k in MACHINES:
            send_s = 2 * (k - 1) / k * gradient_bytes * 8 / (gbit * 1e9)
            rows.append(
                {
                    "machines": k,
                    "gbit_s": gbit,
                    "compute_s": step_s / k,
                    "allreduce_s": send_s,
                    "speedup": step_s / (step_s / k + send_s),
                }
            )
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes")
    p.add_argument("--cells", default="lstm,gru")
    p.add_argument("--cell", default="lstm", help=argparse.SUPPRESS)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=100)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return 0
    rows, models = [], {}
    for cell in args.cells.split(","):
        for processes, threads in RUNS:
            row = measure(args, cell, processes, threads)
            rows.append(row)
            share = ", ".join(f"{s:.1%}" for s in row["allreduce_share"])
            print(
                f"{cell:5} H={args.hidden} N={args.batch} T={args.seq_len}: {processes} "
                f"process(es) x {threads} thread(s): {row['tokens_per_s']:8.0f} tok/s, "
                f"step {row['step_s'] * 1e3:6.1f} ms, allreduce {share} of each step",
                flush=True,
            )
        alone = next(r for r in rows if r["cell"] == cell and r["processes"] == 1)
        two = next(r for r in rows if r["cell"] == cell and r["processes"] == 2)
        print(
            f"{cell:5} 2 processes / 1 process (2 threads): "
            f"{two['tokens_per_s'] / alone['tokens_per_s']:.2f}x; gradient "
            f"{alone['gradient_bytes'] / 1e6:.2f} MB a step"
        )
        models[cell] = machines_model(alone["step_s"], alone["gradient_bytes"])
        for gbit in GBITS:
            speedups = ", ".join(
                f"{m['machines']}: {m['speedup']:.2f}x" for m in models[cell] if m["gbit_s"] == gbit
            )
            print(f"      model, machines at {gbit:3} Gbit/s: {speedups}")
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "date": time.strftime("%Y-%m-%d %H:%M"),
                "load_average": os.getloadavg(),
                "rows": rows,
                "model": models,
            },
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
