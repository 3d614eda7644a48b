"""Language-model training end to end: rnnkit's training loop against a PyTorch twin.

The same model (embedding -> recurrent layer -> linear head), batch and sequence length, on the
same contiguous stream of characters (truncated BPTT, state carried), with Adam and global-norm
clipping, float32. Reports training tokens per second of each and the ratio; writes
benchmarks/results/train.json. The text is the Python standard library's own source, which is
on every machine. Like the ``rnnkit`` command line, it first makes glibc keep freed memory for
reuse (rnnkit.allocator; PyTorch's allocations in the same process gain from it too). Run
with the OpenBLAS variables unset (see bench_layers.py):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_train.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import torch

from rnnkit import kernels
from rnnkit.allocator import keep_freed_memory
from rnnkit.models import LanguageModel
from rnnkit.text import Vocabulary
from rnnkit.train import StreamLMTask, TrainConfig, train

RESULTS = Path(__file__).parent / "results" / "train.json"


def corpus(chars: int) -> str:
    """The first ``chars`` characters of the standard library's modules, in sorted order."""
    parts, total = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        parts.append(text)
        total += len(text)
        if total >= chars:
            break
    return "".join(parts)[:chars]


class Twin(torch.nn.Module):
    def __init__(self, cell: str, vocab: int, hidden: int):
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab, hidden)
        self.rnn = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell](
            hidden, hidden
        )
        self.head = torch.nn.Linear(hidden, vocab)

    def forward(self, x, state):
        out, state = self.rnn(self.embedding(x), state)
        return self.head(out), state


class TwinRun:
    """The PyTorch twin's training steps on its own copy of the stream, state carried."""

    def __init__(self, twin: Twin, stream):
        self.twin, self.stream, self.state, self.losses = twin, stream, None, []
        self.opt = torch.optim.Adam(twin.parameters(), lr=2e-3)

    def step(self) -> None:
        x, y, new_epoch = self.stream.next()
        logits, state = self.twin(torch.from_numpy(x), None if new_epoch else self.state)
        self.state = (
            tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
        )
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), torch.from_numpy(y).reshape(-1)
        )
        self.opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.twin.parameters(), 5.0)
        self.opt.step()
        self.losses.append(loss.item())


def main() -> int:
    compiled = f"Numba {kernels.numba.__version__}" if kernels.AVAILABLE else "off"
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--default-allocator", action="store_true", help="leave glibc's malloc as it is")
    p.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes")
    p.add_argument("--cells", default="lstm,gru,rnn")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=100)
    p.add_argument("--steps", type=int, default=40, help="timed steps of each, each round")
    p.add_argument("--rounds", type=int, default=3, help="rounds, each library in turn")
    args = p.parse_args()
    # As `rnnkit train` does; both libraries share this process, and both gain.
    kept = not args.default_allocator and keep_freed_memory()
    print(f"compiled kernels: {compiled}; freed memory kept for reuse: {kept}")
    torch.set_num_threads(2)
    text = corpus(args.batch * args.seq_len * (args.steps + 2) + 1)
    vocab = Vocabulary.build([text], "char")
    ids = np.asarray(vocab.encode(text))
    rows = []
    for cell in args.cells.split(","):
        model = LanguageModel(len(vocab), args.hidden, cell=cell, rng=0)
        twin = Twin(cell, len(vocab), args.hidden)
        twin.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in model.state_dict().items()})
        config = TrainConfig(steps=args.steps, lr=2e-3, clip=5.0, progress="none")
        task = StreamLMTask(ids, None, args.batch, args.seq_len)
        task.evaluate = lambda m: 0.0  # time training only
        train(
            model,
            StreamLMTask(ids, None, args.batch, args.seq_len),
            TrainConfig(steps=2, progress="none"),
        )  # warm up
        twin_run = TwinRun(twin, StreamLMTask(ids, None, args.batch, args.seq_len).batches)
        for _ in range(2):  # two untimed warm-up steps, as for rnnkit
            twin_run.step()
        # Rounds, each library in turn: a load that comes and goes on this shared host then
        # slows both, and the median of the rounds' ratios is the steadier figure.
        rounds = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            history = train(model, task, config)  # a fresh optimiser each round; same speed
            ours = time.perf_counter() - start
            time.sleep(0.2)
            start = time.perf_counter()
            for _ in range(args.steps):
                twin_run.step()
            theirs = time.perf_counter() - start
            rounds.append((ours, theirs))
            time.sleep(0.2)
        ours, theirs = (statistics.median(r[k] for r in rounds) for k in (0, 1))
        tokens = args.steps * args.batch * args.seq_len
        row = {
            "cell": cell,
            "hidden": args.hidden,
            "batch": args.batch,
            "seq_len": args.seq_len,
            "steps": args.steps,
            "vocab": len(vocab),
            "rnnkit_tok_s": tokens / ours,
            "torch_tok_s": tokens / theirs,
            "ratio": statistics.median(t / o for o, t in rounds),
            "round_ratios": [t / o for o, t in rounds],
            "round_seconds": [{"rnnkit": o, "torch": t} for o, t in rounds],
            "rnnkit_last_loss": history.train_loss[-1],
            "torch_last_loss": twin_run.losses[-1],
        }
        rows.append(row)
        print(
            f"{cell:5} H={args.hidden} N={args.batch} T={args.seq_len}: rnnkit "
            f"{row['rnnkit_tok_s']:9.0f} tok/s, PyTorch {row['torch_tok_s']:9.0f} tok/s, "
            f"ratio {row['ratio']:.2f} (rounds {', '.join(f'{r:.2f}' for r in row['round_ratios'])}"
            f"; last losses {row['rnnkit_last_loss']:.3f} / "
            f"{row['torch_last_loss']:.3f})",
            flush=True,
        )
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "command": " ".join(sys.argv),
                "compiled_kernels": compiled,
                "freed_memory_kept": kept,
                "rows": rows,
            },
            indent=1,
        )
        + "\n",
        encoding="utf-8",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
