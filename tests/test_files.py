"""Files: atomic writes (and a full disk), reading regular files only, one writer per folder."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from rnnkit import files
from rnnkit.checkpoint import load_checkpoint, save_checkpoint
from rnnkit.files import (
    LOCK_NAME,
    FolderInUse,
    NoRoom,
    NotARegularFile,
    atomic_write_bytes,
    atomic_write_text,
    check_regular_file,
    lock_folder,
    read_regular_file,
    remove_stale_temporaries,
)
from rnnkit.memory import NotEnoughMemory, available_bytes, check_fits, format_bytes

# ---------------------------------------------------------------- atomic writes


def _half_writing_fdopen(real_fdopen, code=errno.ENOSPC):
    """An ``os.fdopen`` whose files write half the data, then fail as a full disk would."""

    class HalfWriter:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()
            return False

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            self.f.flush()
            raise OSError(code, os.strerror(code))

        def __getattr__(self, name):
            return getattr(self.f, name)

    return lambda *a, **k: HalfWriter(real_fdopen(*a, **k))


def _fail(code):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    return fail


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("failure", ["replace", "fsync", "half_write", "interrupt"])
@pytest.mark.parametrize("existing", [True, False])
def test_failed_write_keeps_previous_file_and_leaves_no_temporary(
    tmp_path, monkeypatch, failure, existing
):
    path = tmp_path / "ck.safetensors"
    if existing:
        save_checkpoint(path, {"a": np.arange(5.0)}, {"v": 1})
    before = path.read_bytes() if existing else None
    patches = {
        "replace": ("replace", _fail(errno.EIO)),
        "fsync": ("fsync", _fail(errno.EIO)),
        "half_write": ("fdopen", _half_writing_fdopen(os.fdopen, errno.EIO)),
        "interrupt": ("replace", _interrupt),
    }
    monkeypatch.setattr(files.os, *patches[failure])
    expected = KeyboardInterrupt if failure == "interrupt" else OSError
    with pytest.raises(expected):
        save_checkpoint(path, {"b": np.random.default_rng(0).standard_normal(1000)}, {"v": 2})
    monkeypatch.undo()
    if existing:
        assert path.read_bytes() == before
        arrays, meta = load_checkpoint(path)
        assert meta == {"v": 1}
        assert os.listdir(tmp_path) == ["ck.safetensors"]
    else:
        assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EFBIG])
def test_a_full_disk_names_the_folder_and_the_space_needed(tmp_path, monkeypatch, code):
    path = tmp_path / "ck.safetensors"
    atomic_write_bytes(path, b"old")
    monkeypatch.setattr(files.os, "fdopen", _half_writing_fdopen(os.fdopen, code))
    with pytest.raises(NoRoom) as info:
        atomic_write_bytes(path, b"\0" * 3000)
    monkeypatch.undo()
    message = info.value.strerror
    assert f"cannot write ck.safetensors in {tmp_path}" in message
    assert "needs 2.9 KiB" in message and " free" in message
    assert "the previous ck.safetensors was left as it is" in message
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["ck.safetensors"]


def test_temporary_file_is_unique_in_the_same_folder_and_fsynced(tmp_path, monkeypatch):
    calls = []
    real_replace, real_fsync = os.replace, os.fsync

    def spy_replace(src, dst):
        calls.append(("replace", os.path.dirname(os.path.abspath(src)), os.path.basename(src)))
        assert os.path.getsize(src) > 0  # the data is there before the rename
        real_replace(src, dst)

    def spy_fsync(fd):
        calls.append(("fsync",))
        real_fsync(fd)

    monkeypatch.setattr(files.os, "replace", spy_replace)
    monkeypatch.setattr(files.os, "fsync", spy_fsync)
    path = tmp_path / "ck.safetensors"
    atomic_write_bytes(path, b"abc")
    kinds = [c[0] for c in calls]
    assert kinds.index("fsync") < kinds.index("replace")
    _, folder, name = calls[kinds.index("replace")]
    assert folder == str(tmp_path)
    # the writer's process id is in the name: no other process ever removes it
    assert name.startswith(f".ck.safetensors.{os.getpid()}.") and name.endswith(".tmp")
    assert os.listdir(tmp_path) == ["ck.safetensors"]


def test_atomic_write_text_and_bytes(tmp_path):
    path = tmp_path / "notes.txt"
    atomic_write_text(path, "héllo\nwörld ✓")
    assert path.read_bytes() == "héllo\nwörld ✓".encode()
    atomic_write_bytes(path, b"\x00\x01\x02")
    assert path.read_bytes() == b"\x00\x01\x02"
    assert os.listdir(tmp_path) == ["notes.txt"]


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path):
    for name in (".ck.safetensors.123.abc.tmp", "ck.safetensors", ".other.1.x.tmp", "keep.tmp"):
        (tmp_path / name).write_bytes(b"x")
    remove_stale_temporaries(tmp_path, "ck.safetensors")
    assert sorted(os.listdir(tmp_path)) == [".other.1.x.tmp", "ck.safetensors", "keep.tmp"]


# ---------------------------------------------------------------- regular files only


def _in_a_thread(work, seconds=10):
    """``work()``'s result or exception; fails if it blocks for ``seconds``."""
    box = {}

    def run():
        try:
            box["result"] = work()
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            box["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "blocked"
    if "error" in box:
        raise box["error"]
    return box["result"]


@pytest.mark.parametrize("kind", ["fifo", "folder", "device"])
def test_reading_refuses_what_is_not_a_regular_file_without_blocking(tmp_path, kind):
    path = tmp_path / "x"
    if kind == "fifo":
        os.mkfifo(path)  # opened for reading with no writer, a FIFO blocks forever
    elif kind == "folder":
        path.mkdir()
    else:
        path = "/dev/zero"  # never ends
    for read in (read_regular_file, check_regular_file):
        with pytest.raises(NotARegularFile, match="not a regular file"):
            _in_a_thread(lambda: read(path))  # noqa: B023
    assert read_regular_file(__file__) == open(__file__, "rb").read()


def test_a_file_larger_than_the_memory_is_refused_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "big.txt"
    path.write_bytes(b"x" * 5000)
    monkeypatch.setattr(files, "check_fits", lambda n, what, hint="": check_fits(n * 10**12, what))
    with pytest.raises(NotEnoughMemory, match=r"big.txt \(4.9 KiB\) needs about"):
        read_regular_file(path, "text file")


def test_available_memory_respects_an_address_space_limit():
    code = (
        "import resource; resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30)); "
        "from rnnkit.memory import available_bytes; print(available_bytes())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert 0 < int(out.stdout) < 3 << 30, out
    assert available_bytes() is None or available_bytes() > 0
    assert format_bytes(1536) == "1.5 KiB" and format_bytes(10) == "10 bytes"


# ---------------------------------------------------------------- one writer per folder


def test_a_second_writer_is_refused_with_the_first_ones_pid(tmp_path):
    with lock_folder(tmp_path):
        assert (tmp_path / LOCK_NAME).read_text() == f"{os.getpid()}\n"
        with pytest.raises(FolderInUse, match=rf"in use by another process \(pid {os.getpid()}\)"):
            with lock_folder(tmp_path):
                pass
    with lock_folder(tmp_path):  # released on leaving the block
        pass


def test_a_holder_that_has_not_written_its_pid_yet_is_waited_for(tmp_path):
    # the race of two trainers started together: the loser reads the lock file between the
    # winner's flock and its write of the pid
    import fcntl

    fd = os.open(tmp_path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    late = threading.Timer(0.2, lambda: os.pwrite(fd, b"4242\n", 0))
    late.start()
    try:
        with pytest.raises(FolderInUse, match=r"\(pid 4242\)"):
            with lock_folder(tmp_path):
                pass
    finally:
        late.join()
        os.close(fd)


LOCKER = """
import sys, time
from rnnkit.files import lock_folder
with lock_folder(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_a_lock_left_by_a_killed_process_never_blocks(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline() == "locked\n"
        with pytest.raises(FolderInUse, match=f"pid {proc.pid}"):
            with lock_folder(tmp_path):
                pass
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
        proc.communicate()
    deadline = time.monotonic() + 10
    with lock_folder(tmp_path):  # the kernel released it with the process
        assert time.monotonic() < deadline
