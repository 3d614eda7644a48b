"""rnnkit's own threads, and NumPy's BLAS held to one thread inside rnnkit's calls.

A layer splits its work into pieces that need no step-by-step coordination (the sequences of a
batch, in chunks; the rows of a product) and runs them on a few threads of its own, each piece
a compiled call or a BLAS product that releases the GIL. Pieces are taken in turn by whichever
thread is free, so a thread that another process slows down simply takes fewer.

NumPy's OpenBLAS would otherwise run each product on two threads and keep its worker spinning
on the other core for a while after every product, where rnnkit's own thread needs it. So
inside :func:`region` (every layer call with work to split enters one) NumPy's BLAS runs
single-threaded, and the caller's setting comes back when the last region ends. Nothing
outside rnnkit's calls changes; :func:`set_num_threads` is the documented way to choose how many
threads rnnkit uses (default: the cores this process may run on, or ``RNNKIT_NUM_THREADS``).
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np

from . import blas


def _getcpu_function():
    """The C library's ``sched_getcpu``, where threads can be placed (Linux); else None."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    try:
        function = ctypes.CDLL(None).sched_getcpu
    except (OSError, AttributeError):
        return None
    function.argtypes, function.restype = [], ctypes.c_int
    return function


_sched_getcpu = _getcpu_function()

_lock = threading.Lock()
_local = threading.local()  # .inside: this thread runs one of rnnkit's pieces
_state = {"threads": None, "pool": None, "depth": 0, "restore": 1}


def _default_threads() -> int:
    text = os.environ.get("RNNKIT_NUM_THREADS", "")
    if text.strip():
        try:
            return max(1, int(text))
        except ValueError:
            pass
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def num_threads() -> int:
    """How many threads rnnkit's calls use (the calling thread included)."""
    if _state["threads"] is None:
        _state["threads"] = _default_threads()
    return _state["threads"]


def set_num_threads(n: int) -> None:
    """Use ``n`` threads (the calling thread included) in rnnkit's calls from now on; 1 runs
    everything in the calling thread. NumPy's own BLAS setting is never changed by this."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"the number of threads must be an int >= 1, got {n!r}")
    with _lock:
        _state["threads"] = n
        pool, _state["pool"] = _state["pool"], None
    if pool is not None:
        pool.shutdown(wait=False)


def _pool() -> ThreadPoolExecutor:
    with _lock:
        if _state["pool"] is None:
            workers = max(1, num_threads() - 1)
            _state["pool"] = ThreadPoolExecutor(workers, thread_name_prefix="rnnkit")
        return _state["pool"]


def _forget_pool_in_child() -> None:  # a forked child has none of the parent's threads
    _state["pool"], _state["depth"] = None, 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_in_child)


@contextmanager
def region(needed: bool = True):
    """NumPy's BLAS on one thread for the duration, restored when the last region of any
    thread ends; regions nest. Not ``needed`` for work too small to split (OpenBLAS runs
    products below about 2^18 multiply-adds on one thread anyway): then it does nothing, and
    costs nothing (entering one costs about 10 us)."""
    if not needed:
        yield
        return
    with _lock:
        if _state["depth"] == 0:
            _state["restore"] = blas.threads() if num_threads() > 1 else 1
            if _state["restore"] > 1:
                blas.set_threads(1)
        _state["depth"] += 1
    try:
        yield
    finally:
        with _lock:
            _state["depth"] -= 1
            if _state["depth"] == 0 and _state["restore"] > 1:
                blas.set_threads(_state["restore"])


def run(pieces: Sequence[Callable[[], None]], apart: bool = False) -> None:
    """Run every piece once, on the calling thread and rnnkit's workers, each thread taking
    the next piece when it is free. Returns when all are done; re-raises the first error.
    ``apart``: the pieces are long (milliseconds each), and a helper woken on the caller's
    core moves off it (:func:`_move_off`); short pieces are done sooner where the caller
    woke its helpers."""
    if len(pieces) == 1 or num_threads() == 1 or getattr(_local, "inside", False):
        for piece in pieces:
            piece()
        return
    queue, errors, caller = iter(pieces), [], _cpu() if apart else -1

    def work(helper: bool) -> None:
        _local.inside = True
        if helper and apart:
            _move_off(caller)
        try:
            while True:
                with _lock:
                    piece = next(queue, None)
                if piece is None or errors:
                    return
                try:
                    piece()
                except BaseException as e:  # noqa: BLE001 - handed to the caller below
                    errors.append(e)
        finally:
            _local.inside = False

    helpers = [_pool().submit(work, True) for _ in range(min(num_threads() - 1, len(pieces) - 1))]
    work(False)
    for helper in helpers:
        helper.result()
    if errors:
        raise errors[0]


def _cpu() -> int:
    """The core this thread runs on now (-1 where the system does not say)."""
    return _sched_getcpu() if _sched_getcpu is not None else -1


def _move_off(cpu: int) -> None:
    """Move this helper off ``cpu``, the caller's core, if it woke there: Linux often wakes a
    helper on the core of the thread that woke it, and the two would share that core until its
    balancer moves one (milliseconds: a whole call, often). Only the helper moves, and it may
    go anywhere again once moved (so that a busy core does not hold it). Each move costs two
    system calls and a migration: worth it for long pieces only."""
    if cpu < 0 or _cpu() != cpu:
        return
    try:
        allowed = os.sched_getaffinity(0)
        if len(allowed - {cpu}) > 0:
            os.sched_setaffinity(0, allowed - {cpu})  # this thread alone: it moves at once
            os.sched_setaffinity(0, allowed)
    except OSError:  # placement is a help, never a reason to fail
        pass


def spans(total: int, parts: int, align: int = 1) -> list[tuple[int, int]]:
    """``total`` split into at most ``parts`` contiguous spans of nearly equal size, each
    boundary a multiple of ``align`` where that leaves no span empty."""
    parts = max(1, min(parts, total // max(align, 1) or 1))
    step = -(-total // parts)
    if align > 1:
        step = -(-step // align) * align
    bounds = list(range(0, total, step)) + [total]
    return list(zip(bounds[:-1], bounds[1:]))


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``a @ b`` for 2-D arrays, the rows of ``a`` split over rnnkit's threads where that pays
    (each part one single-threaded BLAS product)."""
    if out is None:
        out = np.empty((a.shape[0], b.shape[1]), dtype=np.result_type(a, b))
    work = a.shape[0] * a.shape[1] * b.shape[1]
    parts = min(num_threads(), work // _MATMUL_PART or 1)
    with region(parts > 1):
        if parts <= 1:
            np.matmul(a, b, out=out)
        else:
            run([_rows(a, b, out, r0, r1) for r0, r1 in spans(a.shape[0], parts, 8)])
    return out


_MATMUL_PART = 1 << 21  # multiply-adds below which a product is not split (about 10 us)


def _rows(a, b, out, r0, r1):
    return lambda: np.matmul(a[r0:r1], b, out=out[r0:r1])
