"""Markdown tables for BENCHMARKS.md from the JSON that bench_layers.py writes.

    python benchmarks/report.py [benchmarks/results/layers.json]

Prints the grid (tokens per second, ratio to PyTorch, fraction of the GEMM-only bound, peak
memory), the min / median / max ratio per cell, and the points where PyTorch is faster than
NumPy's matrix products alone.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

DEFAULT = Path(__file__).parent / "results" / "layers.json"


def main() -> int:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT
    data = json.loads(path.read_text(encoding="utf-8"))
    rows = data["rows"]
    print(f"compiled kernels: {data.get('compiled_kernels', 'off')}\n")
    print(
        "| cell | N | H | mode | rnnkit tok/s | PyTorch tok/s | rnnkit / PyTorch "
        "| of GEMM-only | peak MiB rnnkit / PyTorch |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        torch_tok = r["T"] * r["N"] / r["torch_s"]
        mem = ""
        if r.get("mem_rnnkit_mib") is not None:
            mem = f"{r['mem_rnnkit_mib']:.1f} / {r['mem_torch_mib']:.1f}"
        print(
            f"| {r['cell']} | {r['N']} | {r['H']} | {r['mode']} | {r['rnnkit_tok_s']:,.0f} "
            f"| {torch_tok:,.0f} | {r['vs_torch']:.2f} | {r['of_gemm']:.2f} | {mem} |"
        )
    print("\n| rnnkit / PyTorch | training: min / median / max | inference: min / median / max |")
    print("|---|---|---|")
    for cell in dict.fromkeys(r["cell"] for r in rows):
        parts = []
        for mode in ("train", "infer"):
            v = [r["vs_torch"] for r in rows if r["cell"] == cell and r["mode"] == mode]
            parts.append(f"{min(v):.2f} / {statistics.median(v):.2f} / {max(v):.2f}")
        print(f"| {cell.upper()} | {parts[0]} | {parts[1]} |")
    print("\nPyTorch faster than the GEMM-only bound (tokens/s: PyTorch, NumPy's products alone):")
    for r in rows:
        bound = r["T"] * r["N"] / r["gemm_s"]
        torch_tok = r["T"] * r["N"] / r["torch_s"]
        if torch_tok > bound:
            print(
                f"- {r['cell']} N = {r['N']}, H = {r['H']}, {r['mode']}: "
                f"{torch_tok:,.0f} against {bound:,.0f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
