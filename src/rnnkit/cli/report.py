"""``rnnkit report``: one HTML file showing a run from the inside (``rnnkit[report]``)."""

from __future__ import annotations

import argparse
import sys

from ..text import read_text
from .core import UsageError, say
from .runs import load_run


def add_commands(sub) -> None:
    """``report``."""
    r = sub.add_parser(
        "report", help="an HTML report of a run: curves, samples, gates over a text, gradients"
    )
    r.add_argument("dir", help="the --out folder of a training run")
    r.add_argument("--text", help="text to read the gates over (default: the run's held-out text)")
    r.add_argument("--unit", type=int, help="a unit to colour the text by (default: found)")
    r.add_argument("--layer", type=int, help="the layer of --unit, from 0 (default: the top one)")
    r.add_argument("--out", help="the HTML file to write (default: DIR/report.html)")
    r.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from ..report import ReportError, check_run_folder, write_report  # plotly only here

    try:
        check_run_folder(args.dir)
        run = load_run(args.dir)
        text = read_text(args.text) if args.text else None
        where = (args.dir, run.model, run.vocab, run.meta, run.start_id())
        path, notes = write_report(*where, text, args.unit, args.layer, args.out)
    except ReportError as e:
        raise UsageError(str(e)) from None
    for note in notes:
        print(f"rnnkit report: note: {note}", file=sys.stderr)
    say(f"report: {path} ({path.stat().st_size / 1e6:.1f} MB, open it with any browser)")
    return 0
