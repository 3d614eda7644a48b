"""What every command shares: the parser, flags declared once, and the one mapping from an
error to its message and exit status.

Exit status: 0 success; 2 bad input (flags, files, a checkpoint that cannot be used, a request
that cannot fit in memory, a folder another run is writing); 1 the work could not go on (a
diverging run, a full disk, a failing device); 128 + the signal after Ctrl-C (130) or SIGTERM
(143), once a checkpoint is saved.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass

from ..apps.datasets import DataError
from ..checkpoint import CheckpointError
from ..files import FolderInUse, NoRoom
from ..memory import NotEnoughMemory
from ..text import TextError
from ..train import ConfigError, TrainingError


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


def say(text: str) -> None:
    """What the command resolved or found, on stdout."""
    print(text, flush=True)


def print_to(stream) -> Callable[[str], None]:
    """``say`` on another stream."""
    return lambda text: print(text, file=stream, flush=True)


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr like every other bad input."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ---------------------------------------------------------------- flags


def at_least(low: float) -> Callable[[float], str | None]:
    """Check: a number >= ``low``."""
    return lambda v: None if v >= low else f"must be >= {low}, got {v}"


def in_unit_interval(v: float) -> str | None:
    """Check: a number in [0, 1)."""
    return None if 0 <= v < 1 else f"must be in [0, 1), got {v}"


def above_zero(v: float) -> str | None:
    """Check: a number > 0."""
    return None if v > 0 else f"must be > 0, got {v}"


@dataclass(frozen=True)
class Flag:
    """One option: its default, its help and its check, declared together.

    ``check`` returns what is wrong with a value (None when it is fine). ``config``: the
    option is a field of :class:`~rnnkit.train.TrainConfig`, which checks it. ``fixed``: it
    decides the model or the data, so ``--resume`` refuses another value.
    """

    name: str  # the attribute: "hidden_size" is --hidden-size
    default: object
    help: str
    kind: type = str  # int | float | str: how the text is read
    choices: tuple | None = None
    check: Callable[[object], str | None] | None = None
    config: bool = False
    fixed: bool = False

    @property
    def option(self) -> str:
        """``--hidden-size``."""
        return "--" + self.name.replace("_", "-")

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        """Declare the option; its value is None when not given, so a resumed run can tell."""
        shown = "none" if self.default is None else self.default
        parser.add_argument(
            self.option,
            type=self.kind,
            choices=self.choices,
            default=None,
            help=f"{self.help} (default {shown})",
        )

    def problem(self, value: object) -> str | None:
        """What is wrong with ``value`` (from the command line or a saved run), or None."""
        if value is None:
            return None if self.default is None else "must be given"
        if self.kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            return f"must be a whole number, got {value!r}"
        if self.kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return f"must be a number, got {value!r}"
            if not math.isfinite(value):
                return f"must be a finite number, got {value}"
        if self.kind is str and not isinstance(value, str):
            return f"must be text, got {value!r}"
        if self.choices is not None and value not in self.choices:
            return f"must be one of {', '.join(self.choices)}, got {value!r}"
        return self.check(value) if self.check is not None else None


# ---------------------------------------------------------------- errors


def guarded(command: str, work: Callable[[], int | None]) -> int:
    """Run ``work()``, turning every failure a user can cause into one line and an exit
    status (see the module docstring); commands and applications alike run through it."""
    prefix = f"rnnkit {command}: error:"
    try:
        return work() or 0
    except SystemExit as e:  # an application's argparse: --help, or a bad flag (printed)
        return e.code if isinstance(e.code, int) else 2
    except (UsageError, TextError, DataError, NotEnoughMemory, FolderInUse) as e:
        print(f"{prefix} {e}", file=sys.stderr)
        return 2
    except ConfigError as e:
        print(f"{prefix} --{e.field.replace('_', '-')} {e.message}", file=sys.stderr)
        return 2
    except CheckpointError as e:
        print(f"{prefix} {e}; the file was left as it is", file=sys.stderr)
        return 2
    except TrainingError as e:
        print(f"{prefix} {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        saved = getattr(e, "checkpoint", None)
        kept = f": checkpoint saved in {saved.parent}; continue with --resume" if saved else ""
        print(
            f"rnnkit {command}: interrupted ({signal.Signals(signum).name}){kept}", file=sys.stderr
        )
        return 128 + signum
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except NoRoom as e:  # a full disk: the message names the folder and the space needed
        resumable = command == "train" and getattr(e, "resumable", True)
        then = ", then continue with --resume" if resumable else " and run it again"
        print(f"{prefix} {e.strerror}; free some space{then}", file=sys.stderr)
        return 1
    except OSError as e:  # a folder that went away, a failing device: the last checkpoint stays
        where = f" {e.filename}" if e.filename else ""
        print(
            f"{prefix} cannot read or write{where}: {e.strerror or e}; "
            f"files already saved were left as they are",
            file=sys.stderr,
        )
        return 1
    except MemoryError:
        print(f"{prefix} out of memory; use smaller sizes", file=sys.stderr)
        return 1
