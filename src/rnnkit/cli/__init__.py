"""The ``rnnkit`` command: train a language model on any text, sample, evaluate, score, and
run the notes' applications.

One module per family of commands, each with ``add_commands(subparsers)``; a new family is
one more entry in :data:`FAMILIES`. Every failure a user can cause ends in one line on stderr
and an exit status, mapped in one place (:func:`rnnkit.cli.core.guarded`) for the commands and
the applications alike. The command owns its process: it sets the allocator
(:func:`~rnnkit.allocator.keep_freed_memory`), which the library never does on its own.
"""

from __future__ import annotations

import sys

from ..allocator import keep_freed_memory
from ..version import __version__
from . import apps, export, report, train, use
from .core import Parser, guarded

FAMILIES = (train, use, report, export, apps)


def build_parser() -> Parser:
    """The argparse parser of every command."""
    p = Parser(
        prog="rnnkit",
        description=(
            "Recurrent language models from the equations: train on any text, sample novel "
            "sequences, evaluate and score."
        ),
    )
    p.add_argument("--version", action="version", version=f"rnnkit {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for family in FAMILIES:
        family.add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    keep_freed_memory()  # this process is ours: training loops reuse their memory
    own = apps.own_flags(argv)
    if own is not None:
        return guarded(*own)
    args = build_parser().parse_args(argv)
    return guarded(args.command, lambda: args.func(args))


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
