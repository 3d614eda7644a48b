"""``rnnkit export``: a trained language model as ONNX, for onnxruntime (``rnnkit[onnx]``)."""

from __future__ import annotations

import argparse

from .core import UsageError, say
from .runs import load_run
from .use import RUN_HELP


def add_commands(sub) -> None:
    """``export``."""
    x = sub.add_parser("export", help="write a trained model as ONNX, for onnxruntime")
    x.add_argument("dir", help=RUN_HELP)
    x.add_argument("path", help="the .onnx file to write (see examples/onnx_names.py)")
    x.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from ..onnx import OnnxError, export_run  # the optional extra rnnkit[onnx], loaded on use

    run = load_run(args.dir)
    stop = run.vocab.eos_id if run.mode == "lines" else None
    try:
        path = export_run(run.model, run.vocab, args.path, run.start_id(), stop)
    except OnnxError as e:
        raise UsageError(str(e)) from None
    say(f"{run.describe()}\nexported to {path} (ONNX)")
    return 0
