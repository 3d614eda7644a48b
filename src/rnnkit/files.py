"""Files a run reads and writes: atomic writes, reading regular files only, one writer per
folder.

- A write goes to a temporary file in the same folder, is flushed and fsynced, then renamed
  over the old file (``os.replace``): a kill at any moment leaves the old file or the new
  one, whole. Temporary names carry the writer's process id and a random part, so no writer
  ever touches another's.
- Reading refuses what is not a regular file (a FIFO would block forever, ``/dev/zero`` never
  ends, a folder is a mistake) before reading a byte.
- :func:`lock_folder` takes an exclusive ``flock`` on a lock file in a folder: a second
  writer is refused with the first one's process id, and the kernel releases the lock of a
  process that dies, so a killed run never blocks the next.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from .memory import check_fits, format_bytes

try:
    import fcntl
except ImportError:  # not POSIX: folders are not locked
    fcntl = None

LOCK_NAME = ".lock"
_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class FolderInUse(Exception):
    """Another process holds a folder's lock; the message names it."""


class NoRoom(OSError):
    """A write found the disk full (or a file-size limit); the message names the folder, the
    size needed and the space left."""


class NotARegularFile(OSError):
    """A path to read is a folder, a FIFO, a device or a socket."""


def file_kind(mode: int) -> str:
    """What ``st_mode`` describes, in words."""
    for test, name in (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _open_regular(path: str | os.PathLike, what: str, whole: bool = True) -> int:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO must not block
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotARegularFile(
                errno.EINVAL, f"{path} is {file_kind(st.st_mode)}, not a regular file"
            )
        if whole:  # to be read into memory at once
            check_fits(st.st_size, f"{what} {path} ({format_bytes(st.st_size)})")
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_regular_file(path: str | os.PathLike, what: str = "file") -> None:
    """Raise unless ``path`` is a regular file that fits in memory (see
    :func:`read_regular_file`)."""
    os.close(_open_regular(path, what))


def read_regular_file(path: str | os.PathLike, what: str = "file") -> bytes:
    """The bytes of ``path``, which must be a regular file that fits in memory.

    Raises:
        FileNotFoundError, PermissionError, ...: as ``open`` does.
        NotARegularFile: a folder, FIFO, device or socket (checked without blocking).
        NotEnoughMemory: the file is larger than the memory available.
    """
    with os.fdopen(_open_regular(path, what), "rb") as f:
        return f.read()


def open_regular_file(path: str | os.PathLike, what: str = "file") -> BinaryIO:
    """``path`` opened for reading in binary, to be read in pieces (so of any size); raises as
    :func:`read_regular_file` does, but never :class:`NotEnoughMemory`."""
    return os.fdopen(_open_regular(path, what, whole=False), "rb")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half.

    A full disk (or a file-size limit) raises :class:`NoRoom`, whose message names the
    folder, the size the file needs and the space left; the old file is left as it was.
    """
    with atomic_file(path, len(data)) as f:
        f.write(data)


@contextmanager
def atomic_file(path: str | os.PathLike, size: int | None = None) -> Iterator[BinaryIO]:
    """A binary file to write in the block, which then replaces ``path`` atomically (see
    :func:`atomic_write_bytes`); if the block raises, it is removed and ``path`` left as it
    was. ``size``: the bytes the file will hold, when known, for :class:`NoRoom`'s message."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent
    )
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; a saved file gets the usual mode
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        written = os.path.getsize(tmp) if os.path.exists(tmp) else 0
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno in _NO_ROOM:
            raise _no_room(path, size, written, e) from None
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def _no_room(path: Path, size: int | None, written: int, e: OSError) -> NoRoom:
    try:
        free = f", {format_bytes(shutil.disk_usage(path.parent).free)} free"
    except OSError:
        free = ""
    kept = f"the previous {path.name} was left as it is" if path.exists() else "nothing was written"
    needs = format_bytes(size) if size is not None else f"more than {format_bytes(written)}"
    return NoRoom(
        e.errno,
        f"cannot write {path.name} in {path.parent}: {e.strerror} (it needs {needs}{free}); {kept}",
    )


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """UTF-8 text, written atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def remove_stale_temporaries(folder: str | os.PathLike, name: str) -> None:
    """Remove the temporary files of writes of ``name`` that were killed half-way; call it
    only while holding the folder's lock (no other writer can then be writing)."""
    for tmp in Path(folder).glob(f".{name}.*.tmp"):
        tmp.unlink(missing_ok=True)


def _holder(fd: int, patience: float = 1.0) -> str:
    """The process id written in a held lock file, waiting up to ``patience`` seconds for
    a holder that has just taken the lock to write it; "" if it never appears."""
    deadline = time.monotonic() + patience
    while True:
        other = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        if other.isdigit() or time.monotonic() > deadline:
            return other if other.isdigit() else ""
        time.sleep(0.01)


@contextmanager
def lock_folder(folder: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (which must exist) for the block.

    Raises:
        FolderInUse: another process holds it; the message gives its process id.
    """
    path = Path(folder) / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                other = _holder(fd)
                who = f"pid {other}" if other else "its process id not yet written"
                raise FolderInUse(
                    f"{folder} is in use by another process ({who}) writing there; wait for "
                    f"it to end or choose another folder (nothing was changed)"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        yield
    finally:
        os.close(fd)  # closing the file releases the lock
