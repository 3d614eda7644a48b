"""Data parallelism: two processes under mpiexec compute what one computes on the whole batch,
a killed process ends the job, and the run resumes bit for bit.

The MPI tests start ``mpiexec -n 2`` (the mpich wheel of the ``test`` extra puts it beside the
venv's python). Run as ``python tests/test_distributed.py MODE OUT`` under mpiexec, this file is
also the program those processes run.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_info

import rnnkit
from rnnkit import distributed
from rnnkit.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from rnnkit.cli import main
from rnnkit.models import LanguageModel
from rnnkit.train import LinesLMTask, StreamLMTask, TrainConfig, train

V = 11
CASES = [(cell, mode) for cell in ("lstm", "gru") for mode in ("stream", "lines")]
# One BLAS thread a process: two processes on a small, shared machine must not oversubscribe it.
ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TIMEOUT = 300


def counter(n: int, seed: int) -> np.ndarray:
    """A stream with structure to learn: a noisy counter modulo V."""
    rng = np.random.default_rng(seed)
    return (np.cumsum(rng.integers(1, 3, n)) % V).astype(np.int64)


def lines(n: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [list(rng.integers(1, V, rng.integers(1, 12))) for _ in range(n)]


def run_case(cell: str, mode: str, comm=None):
    """30 float64 steps with clipping and validation, on a global batch of 5 that two
    processes split 3 + 2 (so their token counts differ, and a mean of means would be wrong)."""
    model = LanguageModel(V, 12, num_layers=2, cell=cell, rng=4, dtype=np.float64)
    if mode == "stream":
        task = StreamLMTask(counter(1500, 0), counter(300, 1), batch_size=5, seq_len=9)
    else:
        task = LinesLMTask(lines(80, 0), lines(9, 1), 5, eos_id=0, rng=np.random.default_rng(2))
    optimizer = "adam" if cell == "lstm" else "sgd"
    config = TrainConfig(
        steps=30, optimizer=optimizer, lr=0.05, clip=0.3, eval_every=10, progress="none"
    )
    history = train(model, task, config, comm=comm)
    counts = [task.count]  # targets this process scored in the last validation
    task.train_step(model)
    counts.append(task.count)  # and in one more training step
    return history, model.state_dict(), counts


def mpiexec() -> str:
    pytest.importorskip("mpi4py", reason="the mpi extra (rnnkit[mpi]) is not installed")
    beside = Path(sys.executable).parent / "mpiexec"
    found = str(beside) if beside.exists() else shutil.which("mpiexec")
    assert found, "mpi4py is installed but no mpiexec was found (pip install mpich)"
    return found


def launch(n: int, *args, cwd=None, env=None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [mpiexec(), "-n", str(n), *map(str, args)],
        cwd=cwd,
        env=env or ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def finish(proc: subprocess.Popen, rc: int = 0) -> tuple[str, str]:
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == rc, f"exit {proc.returncode}, expected {rc}\n{out}\n{err}"
    return out, err


# ---------------------------------------------------------------- exactness


def test_two_processes_compute_what_one_computes(tmp_path):
    """Every loss and the final weights of the 2-process run equal the 1-process run with the
    same global batch, to 1e-10: LSTM and GRU, stream and lines modes, float64, 30 steps."""
    finish(launch(2, sys.executable, __file__, "exact", tmp_path))
    for cell, mode in CASES:
        history, weights, count = run_case(cell, mode)
        got = np.load(tmp_path / f"{cell}-{mode}.npz")
        np.testing.assert_allclose(got["train_loss"], history.train_loss, rtol=1e-10, atol=0)
        np.testing.assert_allclose(got["val_loss"], history.val_loss, rtol=1e-10, atol=0)
        for name, value in weights.items():  # to 1e-10 of the array's largest entry
            scale = np.abs(value).max()
            np.testing.assert_allclose(got[name], value, rtol=1e-10, atol=1e-10 * scale)
        # each process scored only its share of the batches and the validation set
        shares = got["counts"]  # (process, [validation, training step])
        assert (shares.sum(axis=0) == count).all() and shares.min() > 0, (shares, count)


def exact(out: Path) -> None:
    comm = distributed.MPI()
    for cell, mode in CASES:
        history, weights, count = run_case(cell, mode, comm)
        counts = comm.comm.gather(count, root=0)
        if comm.rank == 0:
            np.savez(
                out / f"{cell}-{mode}.npz",
                train_loss=history.train_loss,
                val_loss=history.val_loss,
                counts=counts,
                **weights,
            )


# ---------------------------------------------------------------- the command line


TEXT = "".join(f"{w} " for w in np.random.default_rng(0).choice(["ab", "cab", "bca", "\n"], 6000))
KILL_RUN = [
    "text.txt",
    "--mode", "stream", "--cell", "lstm", "--hidden-size", "16", "--batch-size", "5",
    "--seq-len", "10", "--dropout", "0.1", "--steps", "400", "--checkpoint-every", "10",
    "--eval-every", "100", "--progress", "none",
]  # fmt: skip


def rank_pid(tag: str, rank: int) -> int | None:
    """The process of the job marked ``tag`` whose MPI rank is ``rank``."""
    want = {f"RNNKIT_TEST_JOB={tag}".encode(), f"PMI_RANK={rank}".encode()}
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and want <= set((entry / "environ").read_bytes().split(b"\0")):
                return int(entry.name)
        except OSError:
            continue
    return None


def checkpoint_step(folder: Path) -> int:
    try:
        return int(load_checkpoint(folder / "checkpoint.safetensors")[1]["step"])
    except Exception:  # not written yet (a replace is atomic: never half a file)
        return -1


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the ranks in /proc")
def test_a_killed_process_ends_the_job_and_the_run_resumes_exactly(tmp_path):
    """SIGKILL of one rank mid-run ends the whole job within 10 s; --resume under the same
    number of processes then ends with the very weights of an uninterrupted run; resuming with
    another number of processes is refused with a clear message."""
    (tmp_path / "text.txt").write_text(TEXT)
    rnnkit = [sys.executable, "-m", "rnnkit", "train"]
    finish(launch(2, *rnnkit, *KILL_RUN, "--out", "full", cwd=tmp_path))

    tag = uuid.uuid4().hex
    job = launch(2, *rnnkit, *KILL_RUN, "--out", "part", cwd=tmp_path,
                 env={**ENV, "RNNKIT_TEST_JOB": tag})  # fmt: skip
    deadline = time.monotonic() + TIMEOUT
    while checkpoint_step(tmp_path / "part") < 20:
        assert job.poll() is None, f"the run ended before step 20: {job.communicate()}"
        assert time.monotonic() < deadline, "no checkpoint of step 20"
        time.sleep(0.01)
    pid = rank_pid(tag, 1)
    assert pid is not None, "rank 1 not found"
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    job.communicate(timeout=60)
    assert time.monotonic() - killed < 10, "the job outlived its killed process by 10 s"
    assert job.returncode != 0
    saved = checkpoint_step(tmp_path / "part")
    assert 20 <= saved < 400, saved  # killed mid-run, the last checkpoint whole

    shutil.copytree(tmp_path / "part", tmp_path / "alone")
    alone = subprocess.run(
        [*rnnkit, "--out", "alone", "--resume"], cwd=tmp_path, env=ENV, capture_output=True,
        text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert alone.returncode == 2, alone
    assert "saved by 2 processes and this is 1" in alone.stderr
    assert "mpiexec -n 2" in alone.stderr and len(alone.stderr.splitlines()) == 1

    out, _ = finish(launch(2, *rnnkit, "--out", "part", "--resume", cwd=tmp_path))
    assert f"resuming at step {saved}" in out
    assert_same_run(tmp_path / "full", tmp_path / "part")
    # a checkpoint of two processes is a model like any other: rank 0's dropout state on top
    sample = [sys.executable, "-m", "rnnkit", "sample", "part", "--num", "2", "--length", "5"]
    done = subprocess.run(sample, cwd=tmp_path, env=ENV, capture_output=True, text=True)
    assert done.returncode == 0 and len(done.stdout.splitlines()) == 3, done


def assert_same_run(a: Path, b: Path) -> None:
    full, full_meta = load_checkpoint(a / "checkpoint.safetensors")
    part, part_meta = load_checkpoint(b / "checkpoint.safetensors")
    assert part_meta["world_size"] == 2 and len(part_meta["ranks"]) == 2
    assert sorted(part) == sorted(full)  # every process's carried state among them
    assert {"rank0.task.carry.0", "rank1.task.carry.0"} <= set(part)
    for name, value in full.items():
        np.testing.assert_array_equal(part[name], value, err_msg=name)
    assert part_meta["history"] == full_meta["history"]
    # rank 0 alone keeps the record: each step once, and the resumed record is whole
    record = (b / "record.jsonl").read_bytes()
    assert record == (a / "record.jsonl").read_bytes()
    assert record.count(b'"kind": "step"') == part_meta["step"]


def test_ctrl_c_stops_every_process_after_the_same_step(tmp_path):
    """mpiexec hands Ctrl-C to every process; they stop after one and the same step, rank 0
    saves it, and --resume ends with the weights of an uninterrupted run."""
    (tmp_path / "text.txt").write_text(TEXT)
    rnnkit = [sys.executable, "-m", "rnnkit", "train"]
    finish(launch(2, *rnnkit, *KILL_RUN, "--out", "full", cwd=tmp_path))
    job = launch(2, *rnnkit, *KILL_RUN, "--out", "part", cwd=tmp_path)
    deadline = time.monotonic() + TIMEOUT
    while checkpoint_step(tmp_path / "part") < 20:
        assert job.poll() is None and time.monotonic() < deadline, job.communicate()
        time.sleep(0.01)
    job.send_signal(signal.SIGINT)
    _, err = finish(job, rc=130)
    assert err.count("interrupted (SIGINT): checkpoint saved in part") == 1, err
    assert 20 <= checkpoint_step(tmp_path / "part") < 400
    finish(launch(2, *rnnkit, "--out", "part", "--resume", cwd=tmp_path))
    assert_same_run(tmp_path / "full", tmp_path / "part")


def test_bad_input_and_a_damaged_process_state_end_every_process_in_one_line(tmp_path):
    """Refusals found by rank 0 (flags, a batch too small for the processes) and a checkpoint
    whose state of process 1 alone is damaged end the whole job with one line and exit 2:
    no process waits for another in an exchange."""
    (tmp_path / "text.txt").write_text(TEXT)
    rnnkit = [sys.executable, "-m", "rnnkit", "train", "text.txt", "--out"]
    for flags, needle in [
        (["--lr", "inf"], "--lr must be > 0 and finite"),
        (["--batch-size", "1"], "--batch-size 1 is smaller than the 2 processes"),
    ]:
        _, err = finish(launch(2, *rnnkit, "bad", *flags, cwd=tmp_path), rc=2)
        assert needle in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "bad").exists()
    finish(launch(2, *rnnkit, "run", *KILL_RUN[1:13], "--steps", "20", "--progress", "none",
                  cwd=tmp_path))  # fmt: skip
    path = tmp_path / "run" / "checkpoint.safetensors"
    arrays, meta = load_checkpoint(path)
    meta["ranks"][1]["task"]["batches"]["index"] = 10**6
    save_checkpoint(path, arrays, meta)
    before = path.read_bytes()
    resume = [*rnnkit[:-2], "--out", "run", "--resume", "--steps", "40"]
    start = time.monotonic()
    _, err = finish(launch(2, *resume, cwd=tmp_path), rc=2)
    assert time.monotonic() - start < TIMEOUT / 2
    assert "cannot be resumed: the data position's index 1000000 is past" in err, err
    assert len(err.splitlines()) == 1 and path.read_bytes() == before


@pytest.mark.parametrize(
    "change, needle",
    [
        ("none", None),
        ("world_size_text", "world_size must be a whole number"),
        ("world_size_other", "saved by 3 processes and this is 2"),
        ("ranks_short", '"ranks" must hold the task and generators of each of the 2 processes'),
        ("rank_extra_key", '"ranks" must hold'),
        ("task_on_top", '"ranks" must hold'),
        ("stray_rank", "unexpected arrays for a run of 2 processes: ['rank2.task.carry.0']"),
        ("stray_task", "unexpected arrays"),
        ("odd_rank_name", "unexpected arrays for a run of 2 processes: ['rank01.task.carry.0']"),
    ],
)
def test_the_state_of_each_process_is_checked_before_it_is_used(change, needle):
    comm = distributed.Communicator()
    comm.rank, comm.size = 1, 2  # what MPI sets, without MPI
    arrays = {"model.w": np.zeros(2), "rank0.task.carry.0": np.zeros(1)}
    arrays["rank1.task.carry.0"] = np.ones(1)
    ranks = [{"task": {"at": r}, "generators": [r]} for r in range(2)]
    meta = {"world_size": 2, "ranks": ranks, "generators": [0], "step": 3}
    if change == "world_size_text":
        meta["world_size"] = "2"
    elif change == "world_size_other":
        meta["world_size"] = 3
    elif change == "ranks_short":
        meta["ranks"] = ranks[:1]
    elif change == "rank_extra_key":
        ranks[1]["step"] = 4
    elif change == "task_on_top":
        meta["task"] = {"at": 0}
    elif change == "stray_rank":
        arrays["rank2.task.carry.0"] = np.ones(1)
    elif change == "stray_task":
        arrays["task.carry.0"] = np.ones(1)
    elif change == "odd_rank_name":
        arrays["rank01.task.carry.0"] = np.ones(1)
    if needle is None:
        own, own_meta = comm.own_state(arrays, meta)
        assert sorted(own) == ["model.w", "task.carry.0"] and own["task.carry.0"][0] == 1
        assert own_meta["task"] == {"at": 1} and own_meta["generators"] == [1]
        return
    with pytest.raises((ValueError, CheckpointError), match=re.escape(needle)):
        comm.own_state(arrays, meta)


def test_one_process_refuses_the_state_of_several():
    comm = distributed.Communicator()
    with pytest.raises(ValueError, match="holds no states of several processes"):
        comm.own_state({"rank0.task.carry.0": np.zeros(1)}, {"task": {}, "generators": []})
    with pytest.raises(distributed.WorldSizeError, match="saved by 2 processes and this is 1"):
        comm.own_state({}, {"world_size": 2})
    comm.size = 2  # and a run of one process under mpiexec -n 2
    with pytest.raises(distributed.WorldSizeError, match=r"saved by 1 process and .*no mpiexec"):
        comm.own_state({}, {"task": {}, "generators": []})


def test_a_failing_process_ends_the_job(tmp_path):
    """An error on one process alone, while the other waits for it in an exchange, is
    reported with the rank and ends the whole job (no hang)."""
    job = launch(2, sys.executable, __file__, "fail", tmp_path)
    out, err = finish(job, rc=1)
    assert "process 1 of 2 failed (ValueError: only here)" in err


def fail(out: Path) -> None:
    comm = distributed.MPI()
    with comm.job():
        if comm.rank == 1:
            raise ValueError("only here")
        comm.allreduce(np.zeros(1))  # rank 0 waits here for a process that is gone


def test_each_process_takes_its_share_of_the_cores(tmp_path):
    """Under mpiexec, the command line's processes set their BLAS and rnnkit's own threads to
    the cores over the processes on the machine, unless OPENBLAS_NUM_THREADS (or its kin), or
    RNNKIT_NUM_THREADS, says otherwise."""
    own = (*distributed.BLAS_THREAD_VARIABLES, distributed.OWN_THREAD_VARIABLE)
    env = {k: v for k, v in ENV.items() if k not in own}
    finish(launch(2, sys.executable, __file__, "threads", tmp_path, env=env))
    cores = len(os.sched_getaffinity(0))
    share = str(max(1, cores // 2))
    for rank in (0, 1):
        assert (tmp_path / f"threads-{rank}").read_text() == f"{share} {share}"
    users = {**env, "OPENBLAS_NUM_THREADS": "2", "RNNKIT_NUM_THREADS": "5"}
    finish(launch(2, sys.executable, __file__, "threads", tmp_path, env=users))
    assert (tmp_path / "threads-1").read_text() == f"{min(2, cores)} 5"  # the user's choices


def threads(out: Path) -> None:
    comm = distributed.for_command()
    blas = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
    (out / f"threads-{comm.rank}").write_text(f"{min(blas)} {rnnkit.num_threads()}")


def test_one_process_communicator_changes_nothing():
    history, weights, _ = run_case("gru", "lines")
    again, weights_again, _ = run_case("gru", "lines", distributed.Communicator())
    assert again.train_loss == history.train_loss
    assert all(np.array_equal(weights[k], weights_again[k]) for k in weights)


def test_launched_reads_the_launchers_variables(monkeypatch):
    for name in distributed.SIZE_VARIABLES + distributed.RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert distributed.launched() == (0, 1)
    assert type(distributed.for_command()) is distributed.Communicator
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "3")
    assert distributed.launched() == (3, 4)


@pytest.mark.parametrize("rank", [0, 1])
def test_mpiexec_without_mpi4py_says_what_to_install(monkeypatch, capsys, tmp_path, rank):
    """Rank 0 says it in one line; the other processes exit with the same status, silent."""
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setenv("PMI_RANK", str(rank))
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py now fails
    monkeypatch.setattr(sys, "stdout", sys.stdout)  # restored after for_command silences it
    monkeypatch.setattr(sys, "stderr", sys.stderr)
    assert main(["train", "--out", str(tmp_path / "run"), "--steps", "1"]) == 2
    err = capsys.readouterr().err
    if rank == 0:
        assert "started by mpiexec as one of several processes, but mpi4py" in err
        assert "pip install 'rnnkit[mpi]'" in err and len(err.splitlines()) == 1
    else:
        assert err == ""
    assert not (tmp_path / "run").exists()


def test_a_task_without_shard_is_refused_clearly():
    comm = distributed.Communicator()
    comm.size = 2  # what MPI.shard checks, without MPI

    class Plain:
        pass

    with pytest.raises(TypeError, match="Plain cannot be split across 2 processes"):
        distributed.MPI.shard(comm, Plain())


if __name__ == "__main__":
    {"exact": exact, "fail": fail, "threads": threads}[sys.argv[1]](Path(sys.argv[2]))
