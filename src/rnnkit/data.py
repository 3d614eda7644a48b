"""Batches: padding with masks for sets of sequences, contiguous streams for truncated BPTT.

Both batchers are deterministic (the shuffled one given its ``rng``) and expose their position
as a small dict (``state_dict`` / ``load_state_dict``) so a checkpoint can resume exactly where
it stopped.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

IGNORE_INDEX = -100  # target value the losses skip (padding)


def pad_sequences(seqs: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stack sequences of ids time-major: returns ``(ids (T, N), lengths (N,))``, T the longest,
    shorter sequences padded with ``pad_id``."""
    if len(seqs) == 0:
        raise ValueError("pad_sequences needs at least one sequence")
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    if lengths.min() == 0:
        raise ValueError("cannot pad an empty sequence: every sequence needs one token or more")
    ids = np.full((int(lengths.max()), len(seqs)), pad_id, dtype=np.int64)
    for n, s in enumerate(seqs):
        ids[: len(s), n] = s
    return ids, lengths


class SequenceBatches:
    """Shuffled mini-batches of whole sequences (lines mode, classification, tagging, seq2seq).

    Each epoch visits every example once, in an order drawn from ``rng``; a batch is a list of
    example indices. The position (epoch, batch, and the generator's state when the epoch's
    order was drawn) is part of the state, a few numbers however many examples there are.
    """

    def __init__(
        self, num_examples: int, batch_size: int, rng: np.random.Generator, shuffle: bool = True
    ):
        if num_examples < 1:
            raise ValueError("no examples to batch")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.num_examples = num_examples
        self.batch_size = min(batch_size, num_examples)
        self.rng, self.shuffle = rng, shuffle
        self.epoch, self.index = 0, 0
        self.order = self._new_order()

    def _new_order(self) -> np.ndarray:
        self.order_state = self.rng.bit_generator.state  # enough to draw this order again
        if self.shuffle:
            return self.rng.permutation(self.num_examples)
        return np.arange(self.num_examples)

    @property
    def batches_per_epoch(self) -> int:
        """Full batches per epoch; a last partial batch is dropped so every step sees N examples."""
        return self.num_examples // self.batch_size

    def next(self) -> np.ndarray:
        """Indices of the next batch; starts a new epoch (new order) when one ends."""
        if self.index >= self.batches_per_epoch:
            self.epoch += 1
            self.index = 0
            self.order = self._new_order()
        start = self.index * self.batch_size
        self.index += 1
        return self.order[start : start + self.batch_size]

    def state_dict(self) -> dict:
        """The position, JSON-friendly (the order itself while it is one read back from a
        position that held it: no generator state draws it)."""
        if self.order_state is None:
            return {"epoch": self.epoch, "index": self.index, "order": self.order.tolist()}
        return {"epoch": self.epoch, "index": self.index, "order_state": self.order_state}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved position; ValueError, changing nothing, if it is not one of
        these batches'. The epoch's order is drawn again from the saved generator state, which
        leaves ``rng`` where that draw left it: a task that draws more from ``rng`` restores
        its own state afterwards. A position saved with the order itself (``"order"``, as
        earlier versions wrote it) is read too."""
        if isinstance(state, dict) and "order" in state:
            epoch, index = _position(state, self.batches_per_epoch, {"order"})
            order = state["order"]
            if not (
                isinstance(order, list)
                and len(order) == self.num_examples
                and all(isinstance(i, int) and not isinstance(i, bool) for i in order)
                and sorted(order) == list(range(self.num_examples))
            ):
                raise ValueError(f"the saved order is not an order of {self.num_examples} examples")
            self.epoch, self.index, self.order = epoch, index, np.asarray(order, dtype=np.int64)
            self.order_state = None  # until the next epoch draws an order
            return
        epoch, index = _position(state, self.batches_per_epoch, {"order_state"})
        before = self.rng.bit_generator.state
        try:
            self.rng.bit_generator.state = state["order_state"]
        except (TypeError, ValueError, KeyError, OverflowError) as e:
            self.rng.bit_generator.state = before
            raise ValueError(f"the saved order's generator state is not valid ({e})") from None
        self.epoch, self.index = epoch, index
        self.order = self._new_order()


def share(n: int, rank: int, size: int) -> slice:
    """Process ``rank``'s part of ``n`` items split among ``size`` processes: contiguous parts
    whose lengths differ by one at most (the first ``n % size`` one longer), as
    ``np.array_split`` cuts them."""
    if not 0 <= rank < size:
        raise ValueError(f"rank must lie in [0, {size}), got {rank}")
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


class StreamBatches:
    """One long token stream cut into ``batch_size`` parallel streams, read in chunks of
    ``seq_len`` (as min-char-rnn and char-rnn train): chunk k of every stream follows chunk
    k - 1, so the final state of one chunk is the right initial state of the next.

    ``next()`` returns ``(inputs (T, N), targets (T, N), new_epoch)``; targets are the inputs
    shifted one token ahead. At an epoch's start the carried state should be reset.

    ``ids`` may be any one-dimensional integer array, a ``np.memmap`` of a corpus on disk
    included: each chunk is read from it when asked for, and nothing the size of the corpus is
    copied. After :meth:`shard`, the chunks hold only one process's share of the streams.
    """

    def __init__(self, ids: np.ndarray, batch_size: int, seq_len: int):
        if batch_size < 1 or seq_len < 1:
            raise ValueError(
                f"batch_size and seq_len must be >= 1, got batch_size={batch_size}, "
                f"seq_len={seq_len}"
            )
        if np.ndim(ids) != 1:
            raise ValueError(f"ids must be one-dimensional, got shape {np.shape(ids)}")
        self.ids = ids if isinstance(ids, np.ndarray) else np.asarray(ids, dtype=np.int64)
        if not np.issubdtype(self.ids.dtype, np.integer):
            raise ValueError(f"ids must be integers, got {self.ids.dtype}")
        self.per_stream = (len(ids) - 1) // batch_size
        if self.per_stream < 1:
            raise ValueError(
                f"a stream of {len(ids)} tokens is too short for batch size "
                f"{batch_size}: need at least {batch_size + 1} tokens"
            )
        self.batch_size = batch_size
        self.seq_len = min(seq_len, self.per_stream)
        self.chunks_per_epoch = self.per_stream // self.seq_len
        self.starts = np.arange(batch_size) * self.per_stream  # where each stream begins
        self.epoch, self.index = 0, 0

    def shard(self, rank: int, size: int, allow_empty: bool = False) -> None:
        """From now on, read only process ``rank``'s share of the streams (see :func:`share`).

        Raises:
            ValueError: fewer streams than processes, unless ``allow_empty``.
        """
        if self.batch_size < size and not allow_empty:
            raise ValueError(
                f"batch size {self.batch_size} is smaller than the {size} processes: each "
                f"needs one stream at least"
            )
        streams = np.arange(self.batch_size)[share(self.batch_size, rank, size)]
        self.starts = streams * self.per_stream

    @property
    def streams(self) -> int:
        """The parallel streams this process reads: ``batch_size``, or its share."""
        return len(self.starts)

    def _chunk(self, begin: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        """Inputs and targets of time steps ``begin .. end - 1`` of every stream, (T, N)."""
        at = self.starts[None, :] + np.arange(begin, end)[:, None]  # (T, N) positions
        return self.ids[at].astype(np.int64), self.ids[at + 1].astype(np.int64)

    def next(self) -> tuple[np.ndarray, np.ndarray, bool]:
        """The next chunk ``(inputs, targets, new_epoch)``."""
        new_epoch = self.index == 0
        if self.index >= self.chunks_per_epoch:
            self.epoch += 1
            self.index = 0
            new_epoch = True
        begin = self.index * self.seq_len
        self.index += 1
        return (*self._chunk(begin, begin + self.seq_len), new_epoch)

    def all_chunks(self):
        """Every chunk of one pass in order, the last shorter one included (for evaluation):
        ``(inputs, targets)``; none for a share without streams."""
        if self.streams == 0:
            return
        for begin in range(0, self.per_stream, self.seq_len):
            yield self._chunk(begin, min(begin + self.seq_len, self.per_stream))

    def state_dict(self) -> dict:
        """The position, JSON-friendly."""
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved position; ValueError if it is not one of this stream's."""
        self.epoch, self.index = _position(state, self.chunks_per_epoch)


def _position(state: object, per_epoch: int, more: set[str] = frozenset()) -> tuple[int, int]:
    """``(epoch, index)`` of a saved position, checked: whole numbers, index in an epoch."""
    if not isinstance(state, dict) or set(state) != {"epoch", "index", *more}:
        raise ValueError(f"a data position is {{{', '.join(sorted({'epoch', 'index', *more}))}}}")
    epoch, index = state["epoch"], state["index"]
    for name, value in (("epoch", epoch), ("index", index)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(
                f"the data position's {name} must be a whole number >= 0, got {value!r}"
            )
    if index > per_epoch:
        raise ValueError(
            f"the data position's index {index} is past the {per_epoch} batches of an epoch"
        )
    return epoch, index


def lm_lines_batch(
    lines: Sequence[Sequence[int]], eos_id: int, pad_id: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Language-model batch of separate lines: each reads ``<eos> w1 .. wn`` and predicts
    ``w1 .. wn <eos>``. Returns ``(inputs (T, N), targets (T, N), lengths (N,))`` with padded
    targets set to :data:`IGNORE_INDEX`."""
    inputs, lengths = pad_sequences([[eos_id, *line] for line in lines], pad_id)
    targets, _ = pad_sequences([[*line, eos_id] for line in lines], IGNORE_INDEX)
    return inputs, targets, lengths
