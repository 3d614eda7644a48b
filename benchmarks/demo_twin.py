"""The demo's held-out loss next to a PyTorch twin trained the same way.

Both start from the same initial weights and see the same batches in the same order, with
the demo's optimiser, learning rate, clipping and dropout (only the dropout masks differ:
each library draws its own). Prints both held-out losses and writes
benchmarks/results/demo_twin.json.

    python benchmarks/demo_twin.py
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from rnnkit.cli.options import DEFAULTS
from rnnkit.cli.runs import bundled_names
from rnnkit.cli.train import DEMO, load_data, model_config, read_corpus
from rnnkit.corpus import encode
from rnnkit.data import IGNORE_INDEX, lm_lines_batch
from rnnkit.models import LanguageModel
from rnnkit.train import LinesLMTask, TrainConfig, lines_loss, train

RESULTS = Path(__file__).parent / "results" / "demo_twin.json"


class Twin(torch.nn.Module):
    """torch.nn's embedding -> LSTM -> dropout -> linear, named like rnnkit's LanguageModel."""

    def __init__(self, vocab_size: int, hidden: int, dropout: float):
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab_size, hidden)
        self.rnn = torch.nn.LSTM(hidden, hidden)
        self.dropout = torch.nn.Dropout(dropout)
        self.head = torch.nn.Linear(hidden, vocab_size)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            self.embedding(ids), lengths, enforce_sorted=False
        )
        out, _ = self.rnn(packed)
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=ids.shape[0])
        return self.head(self.dropout(out))


def twin_loss(twin: Twin, lines: list, eos_id: int) -> float:
    """Mean held-out loss per token, the way rnnkit's lines_loss counts it."""
    twin.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(lines), 64):
            x, y, lengths = lm_lines_batch(lines[start : start + 64], eos_id)
            logits = twin(torch.from_numpy(x), torch.from_numpy(lengths))
            total += torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]),
                torch.from_numpy(y).reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            ).item()
            count += int(lengths.sum())
    return total / count


def main() -> int:
    torch.set_num_threads(2)
    opts = {**DEFAULTS, **DEMO}
    corpus = read_corpus(bundled_names(), opts)
    vocab = corpus.vocab
    with tempfile.TemporaryDirectory() as folder:  # the command line's own data, in memory
        encode(bundled_names(), vocab, opts["mode"], folder)
        train_lines, val_lines = (list(lines) for lines in load_data(folder, corpus, opts)[:2])
    config = TrainConfig(
        steps=opts["steps"], lr=opts["lr"], clip=opts["clip"], seed=opts["seed"], progress="none"
    )

    model = LanguageModel(**model_config(opts, vocab))
    twin = Twin(len(vocab), opts["hidden_size"], opts["dropout"])
    twin.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in model.state_dict().items()})

    start = time.perf_counter()
    task = LinesLMTask(
        train_lines,
        val_lines,
        opts["batch_size"],
        vocab.eos_id,
        np.random.default_rng(opts["seed"] + 1),
    )
    train(model, task, config)
    ours = lines_loss(model, val_lines, vocab.eos_id)[0]
    ours_s = time.perf_counter() - start

    torch.manual_seed(opts["seed"])
    start = time.perf_counter()
    batches = LinesLMTask(
        train_lines,
        val_lines,
        opts["batch_size"],
        vocab.eos_id,
        np.random.default_rng(opts["seed"] + 1),
    ).batches
    optimizer = torch.optim.Adam(twin.parameters(), lr=opts["lr"])
    twin.train()
    for _ in range(opts["steps"]):
        x, y, lengths = lm_lines_batch([train_lines[i] for i in batches.next()], vocab.eos_id)
        logits = twin(torch.from_numpy(x), torch.from_numpy(lengths))
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            torch.from_numpy(y).reshape(-1),
            ignore_index=IGNORE_INDEX,
        )
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(twin.parameters(), opts["clip"])
        optimizer.step()
    theirs = twin_loss(twin, val_lines, vocab.eos_id)
    theirs_s = time.perf_counter() - start

    result = {
        "rnnkit_heldout_loss": ours,
        "pytorch_heldout_loss": theirs,
        "relative_difference": ours / theirs - 1,
        "rnnkit_seconds": ours_s,
        "pytorch_seconds": theirs_s,
        "steps": opts["steps"],
        "val_lines": len(val_lines),
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"held-out loss after {opts['steps']} steps on {len(val_lines)} names:")
    print(f"  rnnkit  {ours:.4f} nats/char (perplexity {math.exp(ours):.3f}), {ours_s:.1f} s")
    print(f"  PyTorch {theirs:.4f} nats/char (perplexity {math.exp(theirs):.3f}), {theirs_s:.1f} s")
    print(f"  rnnkit / PyTorch - 1 = {100 * result['relative_difference']:+.2f}%")
    return 0 if abs(result["relative_difference"]) <= 0.03 else 1


if __name__ == "__main__":
    sys.exit(main())
