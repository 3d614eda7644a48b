"""How much memory there is, and a clear refusal when a request would not fit.

Sizes that can be estimated before anything is allocated (a model's weights, a batch's
activations, a number of samples) are checked against :func:`available_bytes`, so an
impossible request ends in one message saying how much it needs and how much there is,
instead of an out-of-memory kill minutes later.
"""

from __future__ import annotations

import resource


class NotEnoughMemory(Exception):
    """A request would not fit in memory; the message says how much it needs and how much
    there is."""


def _meminfo_bytes(path: str, field: str) -> int | None:
    try:
        with open(path, encoding="ascii") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name == field:
                    return int(rest.split()[0]) * 1024  # the file counts in kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def available_bytes() -> int | None:
    """Memory this process can still take: the system's ``MemAvailable`` (Linux), lowered
    to what a limit on the address space (``ulimit -v``) leaves; None where neither is known."""
    found = _meminfo_bytes("/proc/meminfo", "MemAvailable")
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        used = _meminfo_bytes("/proc/self/status", "VmSize") or 0
        left = max(0, soft - used)
        found = left if found is None else min(found, left)
    return found


def format_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def check_fits(needed: int, what: str, hint: str = "") -> None:
    """Raise :class:`NotEnoughMemory` if ``needed`` bytes exceed what is available.

    ``what`` names the request (``"a batch of 10 samples"``); ``hint`` says what to do."""
    there = available_bytes()
    if there is not None and needed > there:
        raise NotEnoughMemory(
            f"{what} needs about {format_bytes(needed)} of memory, and "
            f"{format_bytes(there)} is available" + (f"; {hint}" if hint else "")
        )
