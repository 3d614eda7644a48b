"""``rnnkit app NAME``, ``rnnkit gradflow`` and ``rnnkit data get NAME``: the notes'
applications, each of which parses its own flags."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from .. import apps
from .core import say


def add_commands(sub) -> None:
    """``app``, ``gradflow`` and ``data``."""
    a = sub.add_parser(
        "app",
        help="run one of the notes' applications (see rnnkit app --help)",
        description="The applications the notes open with: "
        + "; ".join(f"{name}: {text}" for name, text in apps.APPS.items())
        + ". Each takes its own flags: rnnkit app NAME --help.",
    )
    a.add_argument("name", choices=list(apps.APPS), help="which application")
    a.add_argument("args", nargs=argparse.REMAINDER, help="the application's own flags")

    g = sub.add_parser(
        "gradflow",
        add_help=False,
        help="vanishing gradients: |dL/da<t>| over 100 steps for RNN, GRU, LSTM",
    )
    g.add_argument("args", nargs=argparse.REMAINDER, help="see rnnkit gradflow --help")

    d = sub.add_parser("data", help="fetch an application's data set through a package manager")
    d.add_argument("action", choices=["get"], help="get: download and unpack into the cache")
    d.add_argument(
        "name", choices=[n for n in apps.APPS if n in apps.DATA_APPS], help="which data set"
    )
    d.set_defaults(func=cmd_data)


def own_flags(argv: list[str]) -> tuple[str, Callable[[], int]] | None:
    """``(command, work)`` for a command line an application parses itself (its --help
    included): everything after the application's name is its own."""
    if argv[:1] == ["gradflow"]:
        return "gradflow", lambda: apps.load("gradflow").main(argv[1:])
    if argv[:1] == ["app"] and len(argv) > 1 and argv[1] in apps.APPS:
        return f"app {argv[1]}", lambda: apps.load(argv[1]).main(argv[2:])
    return None


def cmd_data(args: argparse.Namespace) -> int:
    module = apps.load(args.name)
    cache = apps.data_cache()
    say(f"fetching the {args.name} data into {cache}")
    path = module.get_data(cache)
    say(f"ready: {path}")
    return 0
