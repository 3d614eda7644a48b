"""``rnnkit sample``, ``eval`` and ``score``: a trained language model put to use."""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile

import numpy as np

from ..corpus import Corpus, encode
from ..data import StreamBatches
from ..losses import perplexity
from ..memory import check_fits
from ..sampling import check_sampling_options, generate
from ..text import TextError, unseen_characters
from ..train import lines_loss, stream_loss
from .core import UsageError, print_to, say
from .runs import Run, load_run

RUN_HELP = "the --out folder of a training run, or a language model saved from Python"


def add_commands(sub) -> None:
    """``sample``, ``eval`` and ``score``."""
    s = sub.add_parser("sample", help="sample novel sequences from a trained model")
    s.add_argument("dir", help=RUN_HELP)
    s.add_argument("--num", type=int, help="how many samples (default 5; 1 with --greedy)")
    s.add_argument(
        "--length",
        type=int,
        default=200,
        help="most tokens per sample; lines mode also stops at <eos> (default 200)",
    )
    s.add_argument(
        "--temperature",
        type=float,
        help="divide the logits by this: < 1 is more conservative, > 1 more random (default 1)",
    )
    s.add_argument("--top-k", type=int, help="sample among the k most likely tokens only")
    s.add_argument(
        "--top-p",
        type=float,
        help="sample among the most likely tokens whose probability adds up to p (nucleus)",
    )
    s.add_argument(
        "--greedy",
        action="store_true",
        help="always take the most likely token (one sample: they would all be the same)",
    )
    s.add_argument("--prime", help="text the samples start from")
    s.add_argument(
        "--seed", type=int, default=0, help="seed; the same seed gives the same samples (default 0)"
    )
    s.set_defaults(func=cmd_sample)

    e = sub.add_parser("eval", help="loss, perplexity and bits per character on a text")
    e.add_argument("dir", help=RUN_HELP)
    e.add_argument("file", help="text to evaluate, read like the training text")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--encoding", default="utf-8", help="text encoding of FILE (default utf-8)")
    e.add_argument(
        "--errors",
        choices=["strict", "replace"],
        default="strict",
        help="undecodable bytes: error (default) or replace",
    )
    e.set_defaults(func=cmd_eval)

    c = sub.add_parser("score", help="log P(TEXT) under the model, in total and per token")
    c.add_argument("dir", help=RUN_HELP)
    c.add_argument("text", help="the sentence or name to score")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.set_defaults(func=cmd_score)


def sampling_options(args: argparse.Namespace) -> dict:
    """The sampler's settings; UsageError for values it cannot use or that contradict."""
    if args.greedy:
        clash = [
            flag
            for flag, value in (
                ("--temperature", args.temperature),
                ("--top-k", args.top_k),
                ("--top-p", args.top_p),
            )
            if value is not None
        ]
        if clash:
            raise UsageError(f"--greedy takes the most likely token: {', '.join(clash)} has no use")
        if args.num is not None and args.num != 1:
            raise UsageError("--greedy gives the same sample every time: drop --num")
        return {"greedy": True}
    temperature = 1.0 if args.temperature is None else args.temperature
    try:
        if not math.isfinite(temperature):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
        check_sampling_options(temperature, args.top_k, args.top_p)
    except ValueError as e:
        message = str(e)
        for name in ("top_k", "top_p", "temperature"):
            message = message.replace(name, "--" + name.replace("_", "-"))
        raise UsageError(message) from None
    return {"temperature": temperature, "top_k": args.top_k, "top_p": args.top_p}


def sample_memory(run: Run, num: int, length: int) -> int:
    """About what sampling ``num`` sequences of up to ``length`` tokens holds at its peak:
    per sequence the state and the layers' buffers, the float64 logits with their sorted
    copies, and the tokens drawn (Python integers in lists)."""
    config = run.model.config()
    H, L, V = config["hidden_size"], config["num_layers"], len(run.vocab)
    return num * (8 * (8 * V + 12 * L * H) + 40 * length)


def cmd_sample(args: argparse.Namespace) -> int:
    sampling = sampling_options(args)
    num = args.num if args.num is not None else 1 if args.greedy else 5
    if num < 1 or args.length < 1:
        raise UsageError("--num and --length must be >= 1")
    run = load_run(args.dir)
    check_fits(
        sample_memory(run, num, args.length),
        f"{num:,} samples of up to {args.length:,} tokens",
        "use a smaller --num or --length",
    )
    prime = []
    if args.prime:
        unknown = run.vocab.unknown(args.prime)
        if unknown:
            kind = "characters" if run.vocab.level == "char" else "words"
            raise UsageError(
                f"--prime has {kind} the model never saw: "
                f"{', '.join(repr(u) for u in unknown)}; use only {kind} of the training text"
            )
        prime = run.vocab.encode(args.prime)
    say(run.describe())
    rng = np.random.default_rng(args.seed)
    stop = run.vocab.eos_id if run.mode == "lines" else None
    first = [run.start_id(), *prime]
    samples = generate(run.model, args.length, rng, prime=first, num=num, stop_id=stop, **sampling)
    sep = " " if run.vocab.level == "word" and prime else ""
    for ids in samples:
        say((args.prime or "") + sep + run.vocab.decode(ids))
    return 0


def evaluate_text(run: Run, encoded: Corpus) -> tuple[float, int]:
    """``(total nats, tokens)`` of an encoded text under the model."""
    if run.mode == "lines":
        loss, tokens = lines_loss(run.model, encoded.lines(), run.vocab.eos_id)
    else:
        loss, tokens = stream_loss(run.model, StreamBatches(encoded.ids, 1, 256))
    return loss * tokens, tokens


def check_known(run: Run, text: str, what: str) -> None:
    """Characters (char level) the model never saw cannot be scored: list them."""
    unknown = run.vocab.unknown(text)
    if unknown and run.vocab.level == "char":
        raise unseen_characters(what, unknown)


def cmd_eval(args: argparse.Namespace) -> int:
    run = load_run(args.dir)
    with tempfile.TemporaryDirectory(prefix="rnnkit-eval-") as folder:
        # encoded on disk and read in windows: a text of any size fits; lines mode reads
        # stripped lines, whose breaks and edge spaces are never tokens
        prefix = [run.start_id()] if run.mode == "stream" else []
        encoded = encode(
            args.file, run.vocab, run.mode, folder, "eval", args.encoding, args.errors,
            prefix=prefix,
        )  # fmt: skip
        if encoded.info["blank"]:
            raise UsageError(f"{args.file} is empty: there is nothing to evaluate")
        chars = encoded.info["characters"]
        note = print_to(sys.stderr if args.json else sys.stdout)
        note(run.describe())
        note(f"data: {args.file}: {chars:,} characters")
        nats, tokens = evaluate_text(run, encoded)
        del encoded  # its maps, before the folder goes
    if tokens == 0:
        raise TextError(f"{args.file} has no token to predict")
    result = {
        "loss": nats / tokens,
        "perplexity": perplexity(nats / tokens),
        "bits_per_char": nats / chars / math.log(2),
        "tokens": tokens,
    }
    if args.json:
        say(json.dumps(result))
    else:
        say(
            f"{args.file}: {tokens:,} tokens, loss {result['loss']:.4f} nats/token, perplexity "
            f"{result['perplexity']:.3f}, {result['bits_per_char']:.4f} bits/char"
        )
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    run = load_run(args.dir)
    if not args.text.strip():
        raise UsageError("TEXT is empty: give the sentence or name to score")
    check_known(run, args.text, "TEXT")
    note = print_to(sys.stderr if args.json else sys.stdout)
    note(run.describe())
    vocab = run.vocab
    ids = vocab.encode(args.text) + ([vocab.eos_id] if run.mode == "lines" else [])
    logp = run.model.sequence_log_prob(np.asarray(ids), run.start_id())
    result = {
        "log_prob": float(logp.sum()),
        "tokens": len(ids),
        "log_prob_per_token": float(logp.mean()),
        "per_token": [[vocab.tokens[i], float(p)] for i, p in zip(ids, logp)],
    }
    if args.json:
        say(json.dumps(result))
    else:
        say(
            f"log P = {result['log_prob']:.4f} nats over {len(ids)} tokens "
            f"({result['log_prob_per_token']:.4f} per token)"
        )
        for tok, p in result["per_token"]:
            say(f"  {tok!r:>12} {p:9.4f}")
    return 0
