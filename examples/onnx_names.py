"""Sample names from a language model exported by ``rnnkit export``, with onnxruntime alone.

    rnnkit demo --out demo && rnnkit export demo names.onnx
    python examples/onnx_names.py names.onnx --num 10 --temperature 0.8

Nothing here imports rnnkit: the file holds the whole model (embedding, recurrent stack, output
layer) and, in its ``rnnkit`` metadata, the vocabulary and the tokens that start and end a
sequence. The sampler is rnnkit's (``rnnkit.sampling``) rewritten in NumPy with the same
Generator calls, so the same options and seed print the same samples as ``rnnkit sample demo``,
and ``--greedy`` prints rnnkit's greedy ones.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

import numpy as np
import onnxruntime as ort

WORD = re.compile(r"\w+(?:'\w+)*|[^\w\s]")  # rnnkit's word tokens: words or punctuation marks


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def sample_next(logits, rng, temperature=1.0, top_k=None, top_p=None, greedy=False):
    """One token per row of ``logits (N, V)``: the most likely (greedy), or drawn from
    softmax(logits / temperature) cut to the top_k tokens and/or the top_p nucleus."""
    logits = np.asarray(logits, dtype=np.float64)
    if greedy:
        return logits.argmax(axis=-1)
    order = np.argsort(-logits, axis=-1, kind="stable")  # most likely first
    probs = np.take_along_axis(softmax(logits / temperature), order, axis=-1)
    keep = np.ones_like(probs, dtype=bool)
    if top_k is not None:
        keep[:, int(top_k) :] = False
    if top_p is not None:
        keep &= np.cumsum(probs, axis=-1) - probs < top_p  # the first token is always kept
    probs = np.where(keep, probs, 0.0)
    cum = np.cumsum(probs, axis=-1)
    u = rng.random(len(probs)) * cum[:, -1]
    pick = np.minimum((cum <= u[:, None]).sum(axis=-1), probs.shape[1] - 1)
    return order[np.arange(len(order)), pick]


class ExportedModel:
    """The ONNX language model: ``ids (T, N)`` and state in, logits and state out."""

    def __init__(self, path: str):
        self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        self.info = json.loads(self.session.get_modelmeta().custom_metadata_map.get("rnnkit", "{}"))
        self.states = [i for i in self.session.get_inputs() if i.name in ("h0", "c0")]

    def forward(self, ids: np.ndarray, state: list[np.ndarray] | None):
        if state is None:  # zeros, (num_layers, N, H)
            state = [
                np.zeros((s.shape[0], ids.shape[1], s.shape[2]), np.float32) for s in self.states
            ]
        feeds = {"ids": ids.astype(np.int64), **{s.name: a for s, a in zip(self.states, state)}}
        logits, *state = self.session.run(None, feeds)
        return logits, state


def generate(model, length, rng, first, num, stop_id, **sampling):
    """rnnkit's ``generate``: read ``first``, then sample up to ``length`` tokens per sequence,
    each fed back as the next input, a sequence ending at ``stop_id``."""
    ids = np.tile(np.asarray(first, dtype=np.int64)[:, None], (1, num))  # (T, num)
    logits, state = model.forward(ids, None)
    logits = logits[-1]
    out = [[] for _ in range(num)]
    alive = np.ones(num, dtype=bool)
    for _ in range(length):
        nxt = sample_next(logits, rng, **sampling)
        for n in np.flatnonzero(alive):
            if stop_id is not None and nxt[n] == stop_id:
                alive[n] = False
            else:
                out[n].append(int(nxt[n]))
        if not alive.any():
            break
        logits, state = model.forward(nxt[None], state)
        logits = logits[0]
    return out


def decode(ids, tokens, level):
    """Text of ``ids``; at word level ``<eos>`` reads as a line break."""
    words = [tokens[i] for i in ids]
    if level == "char":
        return "".join(t for t in words if t != "<eos>")
    lines = [[]]
    for t in words:
        if t == "<eos>":
            lines.append([])
        else:
            lines[-1].append(t)
    return "\n".join(" ".join(line) for line in lines)


def fail(message: str):
    """Bad input: one line on stderr, exit status 2."""
    print(f"onnx_names.py: error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Sample from an exported rnnkit language model.")
    p.add_argument("model", help="the .onnx file written by rnnkit export")
    p.add_argument("--num", type=int, help="how many samples (default 5; 1 with --greedy)")
    p.add_argument("--length", type=int, default=200, help="most tokens per sample (default 200)")
    p.add_argument("--temperature", type=float, default=1.0, help="(default 1)")
    p.add_argument("--top-k", type=int, help="sample among the k most likely tokens only")
    p.add_argument("--top-p", type=float, help="sample within the nucleus of probability p")
    p.add_argument("--greedy", action="store_true", help="always take the most likely token")
    p.add_argument("--prime", help="text the samples start from")
    p.add_argument("--seed", type=int, default=0, help="the same seed, the same samples")
    args = p.parse_args(argv)
    if args.num is None:
        args.num = 1 if args.greedy else 5
    if not args.greedy and not args.temperature > 0:
        fail("--temperature must be > 0 (or use --greedy)")
    if not os.path.isfile(args.model):
        fail(f"{args.model}: no such file; write one with: rnnkit export RUN {args.model}")
    try:
        model = ExportedModel(args.model)
    except Exception as e:  # onnxruntime's error for a damaged file, in one line
        fail(f"cannot load {args.model}: {e}")
    info = model.info
    if "tokens" not in info:
        fail(f"{args.model} holds no vocabulary; write it with: rnnkit export RUN {args.model}")
    ids = {t: i for i, t in enumerate(info["tokens"])}
    prime = []
    if args.prime:
        parts = list(args.prime) if info["level"] == "char" else WORD.findall(args.prime)
        unknown = [t for t in parts if t not in ids]
        if unknown:
            fail(f"--prime has tokens the model never saw: {unknown}")
        prime = [ids[t] for t in parts]
    sampling = (
        {"greedy": True}
        if args.greedy
        else {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p}
    )
    rng = np.random.default_rng(args.seed)
    samples = generate(
        model, args.length, rng, [info["start_id"]] + prime, args.num, info["stop_id"], **sampling
    )
    sep = " " if info["level"] == "word" and prime else ""
    for sample in samples:
        print((args.prime or "") + sep + decode(sample, info["tokens"], info["level"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
