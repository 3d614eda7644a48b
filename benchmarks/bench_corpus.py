"""Corpora streamed from disk: peak resident memory of ``rnnkit train`` against the corpus
size, and the time of the vocabulary pass.

Generates text corpora of the given sizes (words of a fixed alphabet, lines of 4 to 16 words:
every size holds the same characters, so the model is the same), times
``rnnkit.corpus.scan`` over each, then runs ``rnnkit train`` on each (char level, LSTM
H = 256, N = 32, 20 steps, a validation share of 1e-4; stream mode with windows of T = 100,
or --mode lines) as a child of its own process, whose ``ru_maxrss`` is that run's peak
resident memory. Writes
benchmarks/results/corpus.json; the corpora go to --folder (several GB free: each corpus and
its encoding, one byte a character):

    python benchmarks/bench_corpus.py --folder /tmp/rnnkit-corpora
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from rnnkit import corpus

RESULTS = Path(__file__).parent / "results" / "corpus.json"
TRAIN = ["--level", "char", "--cell", "lstm", "--hidden-size", "256"]
TRAIN += ["--batch-size", "32", "--steps", "20", "--val-frac", "0.0001"]
TRAIN += ["--progress", "none"]
# Runs `rnnkit train` and prints its peak resident memory in bytes (Linux: ru_maxrss is in KiB).
PEAK = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
    "stdout=subprocess.DEVNULL); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss"
    " * 1024)"
)


def generate(path: Path, size: int, seed: int = 0) -> None:
    """``size`` bytes of text: lines of 4 to 16 words drawn from 5,000 words of 2 to 9 letters
    (and a few marks), written in blocks of about 10 MB."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.,;:!?'-"))
    words = ["".join(rng.choice(letters, rng.integers(2, 10))) for _ in range(5000)]
    with path.open("w", encoding="utf-8") as f:
        written = 0
        while written < size:
            picks = rng.integers(0, len(words), 2_000_000)
            ends = np.cumsum(rng.integers(4, 17, len(picks) // 4))
            lines = np.split(np.array(words, dtype=object)[picks], ends[ends < len(picks)])
            block = "\n".join(" ".join(line) for line in lines) + "\n"
            block = block[: size - written]
            f.write(block)
            written += len(block)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--folder", type=Path, required=True, help="where the corpora go")
    p.add_argument("--sizes", default="1e7,1e9", help="corpus sizes in bytes")
    p.add_argument("--mode", choices=["stream", "lines"], default="stream")
    p.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes")
    args = p.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in (int(float(s)) for s in args.sizes.split(",")):
        text = args.folder / f"corpus-{size}.txt"
        if not text.exists() or text.stat().st_size != size:
            generate(text, size)
        start = time.perf_counter()
        scanned = corpus.scan(text, "char", args.mode)
        scan_s = time.perf_counter() - start
        run = args.folder / f"run-{size}"
        for name in ("checkpoint.safetensors", "corpus.ids", "corpus.json", "corpus.lines"):
            (run / name).unlink(missing_ok=True)
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", PEAK, sys.executable, "-m", "rnnkit", "train", str(text)]
            + ["--out", str(run), "--mode", args.mode, *TRAIN]
            + (["--seq-len", "100"] if args.mode == "stream" else []),  # lines: each line whole
            capture_output=True,
            text=True,
            check=True,
        )
        row = {
            "mode": args.mode,
            "bytes": size,
            "vocabulary": len(scanned.vocabulary),
            "scan_s": scan_s,
            "scan_mb_s": size / scan_s / 1e6,
            "train_s": time.perf_counter() - start,
            "peak_rss_mb": int(done.stdout.split()[-1]) / 2**20,
            "load_average": os.getloadavg(),
        }
        rows.append(row)
        print(
            f"{size / 1e6:8.0f} MB: vocabulary ({row['vocabulary']} characters) in "
            f"{scan_s:6.1f} s ({row['scan_mb_s']:.0f} MB/s); rnnkit train peak "
            f"{row['peak_rss_mb']:6.1f} MiB resident ({row['train_s']:.0f} s in all); load "
            f"{row['load_average'][0]:.1f}",
            flush=True,
        )
    growth = rows[-1]["peak_rss_mb"] - rows[0]["peak_rss_mb"]
    print(f"peak resident memory, largest corpus - smallest: {growth:.1f} MiB")
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(
        json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "rows": rows}, indent=1) + "\n"
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
