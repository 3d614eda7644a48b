"""keep_freed_memory: a loop that allocates and frees the same large arrays stops faulting."""

import subprocess
import sys

import pytest

CODE = """
import resource, sys
import numpy as np
from rnnkit.allocator import keep_freed_memory
if sys.argv[1] == "keep" and not keep_freed_memory():
    print("unsupported"); raise SystemExit
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):  # a step's arrays of 1 to 3 MiB, freed in an order that leaves the top free
    a = [np.ones(size) for size in (150_000, 250_000, 400_000, 300_000)]
    del a
before = faults()
for _ in range(20):
    a = [np.ones(size) for size in (150_000, 250_000, 400_000, 300_000)]
    del a
print((faults() - before) / 20)
"""


def faults_per_step(mode: str) -> float | None:
    out = subprocess.run(
        [sys.executable, "-c", CODE, mode], capture_output=True, text=True, check=True
    ).stdout.strip()
    return None if out == "unsupported" else float(out)


def test_freed_memory_is_reused_without_page_faults():
    kept = faults_per_step("keep")
    if kept is None:
        pytest.skip("the C library has no mallopt (not glibc)")
    assert kept < 50  # the arrays' ~2,700 pages come back from the process's own heap
    # (by default glibc hands most of them back to the system: ~1,800 faults a step here)


def test_cli_keeps_freed_memory(monkeypatch):
    import rnnkit.cli

    calls = []
    monkeypatch.setattr(rnnkit.cli, "keep_freed_memory", lambda: calls.append(1) or True)
    with pytest.raises(SystemExit):
        rnnkit.cli.main(["--help"])
    assert calls == [1]
