"""Data parallelism: K processes train one model, each on its share of every batch (MPI).

:func:`rnnkit.train.train` talks to a communicator at a few points and never asks how many
processes there are:

- at the start, rank 0's weights are copied to every process (:meth:`broadcast_parameters`);
- after each forward and backward pass, :meth:`reduce_step` turns every process's mean loss
  ``L_r`` over its ``c_r`` targets, and its gradients, into the mean over the global batch,
  ``L = sum_r c_r L_r / sum_r c_r``: one allreduce of all gradients through one flat buffer,
  one of the loss sums and counts (and of the signals received, so every process stops after
  the same step). Every process then clips the same global gradient and takes the same
  optimiser step, so K processes compute what one computes on the whole batch;
- rank 0 reads and writes checkpoints (:meth:`from_root`); a checkpoint holds every process's
  data position and random state (:meth:`gather_state`), and a resumed run hands each process
  its own back (:meth:`own_state`), once every process has found its own valid
  (:meth:`collective`).

A task runs on several processes when it has ``shard(rank, size)`` (take this process's share
of every batch from now on) and a ``count`` attribute (the targets its last loss averaged).

:class:`Communicator` is one process, where every exchange is the identity; :class:`MPI` wraps
an ``mpi4py`` communicator (the optional extra ``rnnkit[mpi]``); :func:`for_command` is what
the command line uses.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import numpy as np
from threadpoolctl import threadpool_limits

from . import parallel
from .checkpoint import CheckpointError
from .module import Module

T = TypeVar("T")
INSTALL = "pip install 'rnnkit[mpi]'"
# What launchers tell their processes: the number of processes (MPICH/Intel MPI, Open MPI,
# MVAPICH) and this one's rank.
SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
OWN_THREAD_VARIABLE = "RNNKIT_NUM_THREADS"  # rnnkit's own threads (rnnkit.parallel)
PROCESS_KEYS = ("task", "generators")  # the metadata of one process's own state in a checkpoint
_PER_RANK = re.compile(r"rank\d+\.")  # the arrays of one process in a checkpoint
_SHARED = "raised_on_every_process"  # marks an exception every process raised at one point


class WorldSizeError(CheckpointError):
    """A run saved by K processes cannot continue on another number of processes."""


class MPIUnavailable(RuntimeError):
    """Started by an MPI launcher, but mpi4py (or the MPI library) cannot be loaded."""


def saved_world_size(meta: dict) -> int:
    """The number of processes that wrote a checkpoint (1 when it does not say); ValueError if
    what it says is not a whole number >= 1."""
    saved = meta.get("world_size", 1)
    if isinstance(saved, bool) or not isinstance(saved, int) or saved < 1:
        raise ValueError(f"world_size must be a whole number >= 1, got {saved!r}")
    return saved


class Communicator:
    """One process: every exchange is the identity. The interface :func:`train` calls."""

    rank = 0  # this process, 0 .. size - 1; rank 0 prints and writes checkpoints
    size = 1  # processes training the model
    local_size = 1  # processes on this machine

    def shard(self, task):
        """The task, restricted to this process's share of every batch."""
        return task

    def broadcast_parameters(self, model: Module) -> None:
        """Copy rank 0's weights into every process's model."""

    def reduce_step(self, model: Module, loss: float, task, signum: int) -> tuple[float, int]:
        """Global mean loss and gradients from every process's mean over ``task.count``
        targets. ``signum`` is a signal this process received (0: none); returned is the one
        every process stops for (the highest number, when processes received different
        ones), or 0."""
        return loss, signum

    def reduce_loss(self, loss: float, task) -> float:
        """Global mean of an evaluation loss, each process's weighted by ``task.count``."""
        return loss

    def from_root(self, work: Callable[[], T]) -> T:
        """Run ``work()`` on rank 0 alone; every process returns its result or raises its
        error (so no process waits for one that has failed)."""
        return work()

    def collective(self, work: Callable[[], T]) -> T:
        """Run ``work()`` on every process; if it raises on any, every process raises the
        error of the first that failed (so no process goes on without the others)."""
        return work()

    def gather_state(self, arrays: dict, meta: dict) -> tuple[dict, dict]:
        """The part of a checkpoint that differs between processes (metadata under
        :data:`PROCESS_KEYS`, arrays) of every process, for rank 0 to write: rank r's arrays
        under ``rank{r}.``, its metadata as ``meta["ranks"][r]``, and ``meta["world_size"]``.
        One process's part is stored as it is."""
        return arrays, meta

    def check_world(self, meta: dict) -> None:
        """Raise :class:`WorldSizeError` unless the checkpoint's metadata ``meta`` was
        written by as many processes as this run has (ValueError if it does not say so
        clearly)."""
        saved = saved_world_size(meta)
        if saved != self.size:
            how = f"mpiexec -n {saved} rnnkit train ... --resume" if saved > 1 else "no mpiexec"
            raise WorldSizeError(
                f"the run was saved by {saved} process{'es' if saved > 1 else ''} and this "
                f"is {self.size}: resume it with the same number ({how}), since each "
                f"process's data position and random state are its own"
            )

    def own_state(self, arrays: dict, meta: dict) -> tuple[dict, dict]:
        """This process's part of a checkpoint written by :meth:`gather_state`, with the
        parts every process shares.

        Raises:
            WorldSizeError: the run was saved by another number of processes.
            ValueError: the per-process parts are not one for each process.
        """
        self.check_world(meta)
        ranked = sorted(k for k in arrays if _PER_RANK.match(k))
        if self.size == 1:
            if "ranks" in meta or ranked:
                raise ValueError("a run of one process holds no states of several processes")
            return arrays, meta
        ranks = meta.get("ranks")
        if not (
            isinstance(ranks, list)
            and len(ranks) == self.size
            and all(isinstance(r, dict) and set(r) == set(PROCESS_KEYS) for r in ranks)
            and "task" not in meta  # (its "generators" are rank 0's, which rnnkit.load takes)
        ):
            raise ValueError(
                f'"ranks" must hold the {" and ".join(PROCESS_KEYS)} of each of the '
                f"{self.size} processes, and only they may"
            )
        processes = {f"rank{r}" for r in range(self.size)}
        strays = [k for k in ranked if k.split(".", 1)[0] not in processes]
        strays += [k for k in arrays if k.startswith("task.")]  # the processes' own, not here
        if strays:
            raise ValueError(f"unexpected arrays for a run of {self.size} processes: {strays[:3]}")
        prefix = f"rank{self.rank}."
        own = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
        common = {k: v for k, v in arrays.items() if not _PER_RANK.match(k)}
        return common | own, meta | ranks[self.rank]

    def dropout_seed(self, seed: int) -> list[int]:
        """Entropy of this process's dropout stream: rank 0 draws what one process draws, the
        others streams of their own (the same masks on every process would be one mask)."""
        return [seed, 1] + ([self.rank] if self.rank else [])

    @contextmanager
    def job(self, shared: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
        """Around a command's work: see :meth:`MPI.job`; one process has nothing to do."""
        yield


class MPI(Communicator):
    """K processes of an MPI job, through ``mpi4py`` (``rnnkit[mpi]``).

    Args:
        comm: an ``mpi4py.MPI.Comm`` (default ``COMM_WORLD``).

    Notes:
        The gradients travel in the model's dtype, loss sums, counts and signals in float64.
        Every process must call the methods in the same order, as :func:`train` does.
    """

    def __init__(self, comm=None):
        mpi = _import_mpi()
        self.comm = comm if comm is not None else mpi.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        local = self.comm.Split_type(mpi.COMM_TYPE_SHARED)
        self.local_size = local.Get_size()
        local.Free()
        self._in_place, self._pickle, self._buffer = mpi.IN_PLACE, mpi.pickle, None

    def allreduce(self, buffer: np.ndarray) -> None:
        """Sum ``buffer`` over all processes, in place (no copy of the array)."""
        self.comm.Allreduce(self._in_place, buffer)

    def _flat(self, arrays: list[np.ndarray]) -> np.ndarray:
        """One buffer holding every array, kept from call to call."""
        dtypes = {a.dtype for a in arrays}
        if len(dtypes) != 1:
            raise TypeError(f"the parameters mix dtypes {sorted(map(str, dtypes))}")
        size = sum(a.size for a in arrays)
        if self._buffer is None or self._buffer.size != size or self._buffer.dtype not in dtypes:
            self._buffer = np.empty(size, dtype=dtypes.pop())
        return self._buffer

    def _exchange(self, arrays: list[np.ndarray], combine: Callable[[np.ndarray], None]) -> None:
        flat, offset = self._flat(arrays), 0
        for a in arrays:
            flat[offset : offset + a.size] = a.reshape(-1)
            offset += a.size
        combine(flat)
        offset = 0
        for a in arrays:
            a[...] = flat[offset : offset + a.size].reshape(a.shape)
            offset += a.size

    def shard(self, task):
        if not hasattr(task, "shard"):
            raise TypeError(
                f"{type(task).__name__} cannot be split across {self.size} processes: a task "
                f"needs shard(rank, size) and a count of the targets its loss averaged"
            )
        task.shard(self.rank, self.size)
        return task

    def broadcast_parameters(self, model: Module) -> None:
        params = [p for _, p in model.named_parameters()]
        self._exchange(params, lambda flat: self.comm.Bcast(flat, root=0))

    def reduce_step(self, model: Module, loss: float, task, signum: int) -> tuple[float, int]:
        count = task.count
        # sum_r c_r L_r, sum_r c_r, and how many processes received each signal
        stats = np.zeros(2 + signal.NSIG)
        stats[:2] = loss * count, count
        if signum:
            stats[2 + signum] = 1
        self.allreduce(stats)
        scale = count / stats[1]  # this process's weight c_r / sum_r c_r

        def mean(flat: np.ndarray) -> None:
            flat *= scale
            self.allreduce(flat)  # the one allreduce of all gradients

        self._exchange([g for _, g in model.named_grads()], mean)
        received = np.flatnonzero(stats[3:]) + 1  # signal numbers start at 1
        return float(stats[0] / stats[1]), int(received[-1]) if len(received) else 0

    def reduce_loss(self, loss: float, task) -> float:
        count = task.count
        stats = np.array([loss * count if count else 0.0, count])  # a process may hold none
        self.allreduce(stats)
        return float(stats[0] / stats[1])

    def from_root(self, work: Callable[[], T]) -> T:
        outcome, error = None, None
        if self.rank == 0:
            try:
                outcome = (True, work())
            except BaseException as e:
                outcome, error = (False, self._portable(e)), e
        try:
            ok, value = self.comm.bcast(outcome, root=0)
        except Exception:
            if self.rank != 0:
                raise
            # rank 0's result could not be sent (it does not pickle): say so to every process
            failed = RuntimeError("rank 0's result cannot be sent to the other processes")
            ok, value = self.comm.bcast((False, failed), root=0)
        if ok:
            return value
        raise _shared(error if self.rank == 0 else value)

    def collective(self, work: Callable[[], T]) -> T:
        try:
            outcome = (True, work())
        except Exception as e:
            outcome = (False, e)
        errors = self.comm.allgather(None if outcome[0] else self._portable(outcome[1]))
        first = next((e for e in errors if e is not None), None)
        if first is None:
            return outcome[1]
        raise _shared(first if outcome[0] else outcome[1])

    def _portable(self, error: BaseException) -> BaseException:
        """``error``, if another process can rebuild it from what MPI sends (its pickle);
        else a RuntimeError with its words."""
        try:
            self._pickle.loads(self._pickle.dumps(error))
            return error
        except Exception:
            return RuntimeError(f"{type(error).__name__}: {error}")

    def gather_state(self, arrays: dict, meta: dict) -> tuple[dict, dict]:
        parts = self.comm.gather((arrays, meta), root=0)
        if self.rank != 0:
            return {}, {}
        merged = {f"rank{r}.{k}": v for r, (a, _) in enumerate(parts) for k, v in a.items()}
        return merged, {"world_size": self.size, "ranks": [m for _, m in parts]}

    @contextmanager
    def job(self, shared: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
        """Around the work of a command that owns its process. An error every process raised
        at the same point (one from :meth:`from_root` or :meth:`collective`, or of a type in
        ``shared``) ends each process normally, rank 0 reporting it; any other error is this
        process's alone, while the others may wait for it in an exchange: it is reported with
        the rank and ends the whole job (``MPI_Abort``) within a moment."""
        own_stderr = sys.__stderr__
        try:
            yield
        except (Exception, KeyboardInterrupt) as e:
            if not (getattr(e, _SHARED, False) or isinstance(e, shared)):
                print(
                    f"rnnkit: process {self.rank} of {self.size} failed "
                    f"({type(e).__name__}: {e}); ending the whole job",
                    file=own_stderr,
                    flush=True,
                )
                time.sleep(_FORWARD_S)  # the launcher forwards the message before it ends all
                self.comm.Abort(130 if isinstance(e, KeyboardInterrupt) else 1)
            raise


_FORWARD_S = 0.2  # seconds; without a pause, about 1 abort in 40 lost its message here


def _shared(error: BaseException) -> BaseException:
    setattr(error, _SHARED, True)
    return error


def _import_mpi():
    try:
        from mpi4py import MPI as mpi
    except ImportError as e:
        raise MPIUnavailable(f"mpi4py is not installed ({e}); {INSTALL}") from None
    except RuntimeError as e:  # mpi4py without an MPI library to load
        raise MPIUnavailable(f"mpi4py cannot load an MPI library ({e}); {INSTALL}") from None
    return mpi


def launched() -> tuple[int, int]:
    """``(rank, size)`` as an MPI launcher (mpiexec, mpirun) told this process; ``(0, 1)``
    when no launcher started it. Reads the environment only: needs no MPI library."""
    size = next((int(os.environ[v]) for v in SIZE_VARIABLES if os.environ.get(v)), 1)
    rank = next((int(os.environ[v]) for v in RANK_VARIABLES if os.environ.get(v)), 0)
    return rank, size


def threads_per_process(comm: Communicator) -> int:
    """Threads each process may run so that the processes on one machine share its cores:
    the cores this process may run on, divided by the processes on the machine (at least 1)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // comm.local_size)


def for_command() -> Communicator:
    """The communicator of a command-line process, which owns its process.

    One process unless an MPI launcher started several. Under one: ranks above 0 write nothing
    to stdout or stderr (rank 0 speaks for the job; :meth:`MPI.job` still reports a process's
    own failure), and each process runs :func:`threads_per_process` threads: its BLAS
    (threadpoolctl) unless ``OPENBLAS_NUM_THREADS``, ``OMP_NUM_THREADS`` or
    ``MKL_NUM_THREADS`` is set, and rnnkit's own threads (:func:`rnnkit.set_num_threads`)
    unless ``RNNKIT_NUM_THREADS`` is, so K processes do not oversubscribe the cores.

    Raises:
        MPIUnavailable: started by a launcher as several processes, without mpi4py or MPI.
    """
    rank, size = launched()
    if size <= 1:
        return Communicator()
    if rank > 0:  # one line for the whole job, from rank 0
        sys.stdout = sys.stderr = open(os.devnull, "w", encoding="utf-8")
    comm = MPI()
    threads = threads_per_process(comm)
    if not any(os.environ.get(v) for v in BLAS_THREAD_VARIABLES):
        threadpool_limits(threads, user_api="blas")
    if not os.environ.get(OWN_THREAD_VARIABLE, "").strip():
        parallel.set_num_threads(threads)
    return comm
