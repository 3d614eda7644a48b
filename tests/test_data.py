"""Padding, shuffled sequence batches, contiguous truncated-BPTT streams, language-model lines."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rnnkit.data import (
    IGNORE_INDEX,
    SequenceBatches,
    StreamBatches,
    lm_lines_batch,
    pad_sequences,
    share,
)

# ---------------------------------------------------------------- pad_sequences


def test_pad_sequences_shapes_values_and_pads():
    seqs = [[5, 6, 7], [8], [9, 10, 11, 12], [13, 14]]
    ids, lengths = pad_sequences(seqs, pad_id=99)
    assert ids.shape == (4, 4) and ids.dtype == np.int64  # (T, N), time-major
    np.testing.assert_array_equal(lengths, [3, 1, 4, 2])
    assert lengths.dtype == np.int64
    expected = np.array(
        [
            [5, 8, 9, 13],
            [6, 99, 10, 14],
            [7, 99, 11, 99],
            [99, 99, 12, 99],
        ]
    )
    np.testing.assert_array_equal(ids, expected)


def test_pad_sequences_default_pad_and_array_inputs():
    ids, lengths = pad_sequences([np.array([3, 1]), (4,), range(7, 10)])
    np.testing.assert_array_equal(ids, [[3, 4, 7], [1, 0, 8], [0, 0, 9]])
    np.testing.assert_array_equal(lengths, [2, 1, 3])


def test_pad_sequences_mask_from_lengths_marks_exactly_the_pads():
    rng = np.random.default_rng(0)
    seqs = [list(rng.integers(1, 50, size=n)) for n in rng.integers(1, 9, size=6)]
    ids, lengths = pad_sequences(seqs, pad_id=0)
    mask = np.arange(ids.shape[0])[:, None] < lengths[None, :]
    assert (ids[~mask] == 0).all() and (ids[mask] > 0).all()
    for n, s in enumerate(seqs):
        np.testing.assert_array_equal(ids[: lengths[n], n], s)


def test_pad_sequences_errors():
    with pytest.raises(ValueError, match="at least one sequence"):
        pad_sequences([])
    with pytest.raises(ValueError, match="empty sequence"):
        pad_sequences([[1, 2], [], [3]])


# ---------------------------------------------------------------- SequenceBatches


def _epoch(b: SequenceBatches) -> list[np.ndarray]:
    return [b.next() for _ in range(b.batches_per_epoch)]


def test_sequence_batches_visit_every_index_once_per_epoch():
    b = SequenceBatches(12, 4, np.random.default_rng(1))
    assert b.batches_per_epoch == 3
    orders = []
    for epoch in range(4):
        batches = _epoch(b)
        assert all(len(x) == 4 for x in batches)
        flat = np.concatenate(batches)
        np.testing.assert_array_equal(np.sort(flat), np.arange(12))
        assert b.epoch == epoch
        orders.append(flat)
    assert not np.array_equal(orders[0], np.arange(12))  # shuffled
    assert not np.array_equal(orders[0], orders[1])  # reshuffled each epoch


def test_sequence_batches_drop_the_last_partial_batch():
    b = SequenceBatches(10, 3, np.random.default_rng(2))
    assert b.batches_per_epoch == 3
    for _ in range(3):
        flat = np.concatenate(_epoch(b))
        assert len(flat) == 9 and len(set(flat.tolist())) == 9  # no index twice
        assert set(flat.tolist()) <= set(range(10))


def test_sequence_batches_batch_larger_than_data():
    b = SequenceBatches(3, 8, np.random.default_rng(3))
    assert b.batch_size == 3 and b.batches_per_epoch == 1
    np.testing.assert_array_equal(np.sort(b.next()), [0, 1, 2])


def test_sequence_batches_no_shuffle_is_in_order():
    b = SequenceBatches(6, 2, np.random.default_rng(4), shuffle=False)
    got = [b.next().tolist() for _ in range(6)]
    assert got == [[0, 1], [2, 3], [4, 5]] * 2


def test_sequence_batches_same_seed_same_batches_other_seed_other_batches():
    def run(seed):
        b = SequenceBatches(20, 3, np.random.default_rng(seed))
        return [b.next().tolist() for _ in range(15)]

    assert run(7) == run(7)
    assert run(7) != run(8)


@pytest.mark.parametrize("stop", [0, 1, 2, 3, 5, 7])
def test_sequence_batches_resume_gives_the_same_batches(stop):
    """The caller keeps the rng (train.py saves its bit_generator.state next to state_dict())."""
    rng = np.random.default_rng(9)
    b = SequenceBatches(7, 2, rng)  # 3 batches an epoch: the run crosses epoch boundaries
    for _ in range(stop):
        b.next()
    state = json.loads(json.dumps(b.state_dict()))  # survives JSON
    rng_state = rng.bit_generator.state
    expected = [b.next().tolist() for _ in range(10)]
    epochs = b.epoch

    rng2 = np.random.default_rng(12345)  # a different seed: everything comes from the state
    b2 = SequenceBatches(7, 2, rng2)
    b2.load_state_dict(state)
    rng2.bit_generator.state = rng_state
    assert [b2.next().tolist() for _ in range(10)] == expected
    assert b2.epoch == epochs


def test_sequence_batches_errors():
    with pytest.raises(ValueError, match="no examples"):
        SequenceBatches(0, 4, np.random.default_rng(0))


@pytest.mark.parametrize("batch_size", [0, -2])
def test_sequence_batches_bad_batch_size_raises_value_error(batch_size):
    """BUG (src): batch_size 0 dies with ZeroDivisionError at the first next(), and -2 silently
    yields batches of 8 (``order[0:-2]``) and a new epoch at every call, instead of a ValueError
    at construction."""
    with pytest.raises(ValueError, match="batch"):
        b = SequenceBatches(10, batch_size, np.random.default_rng(0))
        b.next()


# ---------------------------------------------------------------- StreamBatches


def test_stream_batches_layout_targets_and_contiguity():
    ids = np.arange(100, 100 + 43)  # 43 tokens, 4 streams of 10 (+1 for the last target)
    b = StreamBatches(ids, batch_size=4, seq_len=3)
    per_stream = 10
    assert b.chunks_per_epoch == 3  # the last partial chunk is dropped
    chunks = []
    for k in range(3):
        x, y, new_epoch = b.next()
        assert x.shape == y.shape == (3, 4) and x.dtype == np.int64
        assert new_epoch == (k == 0)
        np.testing.assert_array_equal(y, x + 1)  # targets = inputs shifted one token
        chunks.append(x)
    for n in range(4):  # stream n is one contiguous piece of the text
        stream = np.concatenate([c[:, n] for c in chunks])
        np.testing.assert_array_equal(stream, ids[n * per_stream : n * per_stream + 9])
    for k in range(2):  # chunk k+1 of each stream starts where chunk k ended
        np.testing.assert_array_equal(chunks[k + 1][0], chunks[k][-1] + 1)


def test_stream_batches_on_random_tokens_targets_are_the_next_token():
    rng = np.random.default_rng(10)
    ids = rng.integers(0, 30, size=200)
    b = StreamBatches(ids, batch_size=5, seq_len=7)
    per_stream = (200 - 1) // 5
    position = {}
    for n in range(5):
        position[n] = n * per_stream
    for _ in range(b.chunks_per_epoch):
        x, y, _ = b.next()
        for n in range(5):
            p = position[n]
            np.testing.assert_array_equal(x[:, n], ids[p : p + 7])
            np.testing.assert_array_equal(y[:, n], ids[p + 1 : p + 8])
            position[n] = p + 7


def test_stream_batches_epochs_and_new_epoch_flag():
    b = StreamBatches(np.arange(25), batch_size=2, seq_len=4)  # 12 per stream, 3 chunks
    assert b.chunks_per_epoch == 3
    first = [b.next() for _ in range(3)]
    assert [f[2] for f in first] == [True, False, False] and b.epoch == 0
    again = [b.next() for _ in range(3)]
    assert [f[2] for f in again] == [True, False, False] and b.epoch == 1
    for (x1, y1, _), (x2, y2, _) in zip(first, again):  # the same chunks, in order
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)


def test_stream_batches_all_chunks_is_one_pass_and_leaves_position_alone():
    b = StreamBatches(np.arange(31), batch_size=3, seq_len=4)
    b.next()
    state = b.state_dict()
    passes = list(b.all_chunks())
    assert b.chunks_per_epoch == 2 and len(passes) == 3  # the 2-step tail is evaluated too
    assert [len(x) for x, _ in passes] == [4, 4, 2]
    inputs = np.arange(30).reshape(3, 10).T  # (per stream, N): each column one stream
    np.testing.assert_array_equal(np.concatenate([x for x, _ in passes]), inputs)
    assert b.state_dict() == state
    fresh = StreamBatches(np.arange(31), batch_size=3, seq_len=4)
    for x, y in passes[:2]:
        fx, fy, _ = fresh.next()
        np.testing.assert_array_equal(x, fx)
        np.testing.assert_array_equal(y, fy)


def test_stream_batches_seq_len_longer_than_stream_is_capped():
    b = StreamBatches(np.arange(9), batch_size=2, seq_len=50)  # 4 per stream
    assert b.seq_len == 4 and b.chunks_per_epoch == 1
    x, y, _ = b.next()
    np.testing.assert_array_equal(x, [[0, 4], [1, 5], [2, 6], [3, 7]])
    np.testing.assert_array_equal(y, x + 1)


def test_stream_batches_minimum_length_and_too_short_error():
    b = StreamBatches(np.arange(4), batch_size=3, seq_len=5)  # exactly batch_size + 1
    x, y, _ = b.next()
    np.testing.assert_array_equal(x, [[0, 1, 2]])
    np.testing.assert_array_equal(y, [[1, 2, 3]])
    for n_tokens in (0, 1, 3):
        with pytest.raises(ValueError, match=rf"{n_tokens} tokens.*batch size 3.*at least 4"):
            StreamBatches(np.arange(n_tokens), batch_size=3, seq_len=5)


@pytest.mark.parametrize("stop", [0, 1, 3, 4, 8])
def test_stream_batches_state_round_trip(stop):
    ids = np.random.default_rng(11).integers(0, 20, size=60)
    b = StreamBatches(ids, batch_size=3, seq_len=5)  # 19 per stream, 3 chunks
    for _ in range(stop):
        b.next()
    state = json.loads(json.dumps(b.state_dict()))
    expected = [b.next() for _ in range(7)]
    b2 = StreamBatches(ids, batch_size=3, seq_len=5)
    b2.load_state_dict(state)
    got = [b2.next() for _ in range(7)]
    for (x1, y1, e1), (x2, y2, e2) in zip(expected, got):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
        assert e1 == e2
    assert b2.state_dict() == b.state_dict()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"batch_size": 0, "seq_len": 3},
        {"batch_size": 2, "seq_len": 0},
        {"batch_size": 2, "seq_len": -3},
    ],
    ids=["batch_size_0", "seq_len_0", "seq_len_neg"],
)
def test_stream_batches_bad_sizes_raise_value_error(kwargs):
    """BUG (src): batch_size 0 or seq_len 0 end in ZeroDivisionError, and seq_len -3 gives
    chunks of 6 steps and chunks_per_epoch -3, not a clear ValueError."""
    with pytest.raises(ValueError, match="batch|seq"):
        StreamBatches(np.arange(20), **kwargs)


# ---------------------------------------------------------------- shares of several processes


@pytest.mark.parametrize("n,size", [(5, 2), (32, 3), (2, 3), (7, 7), (0, 2)])
def test_share_cuts_as_array_split(n, size):
    parts = [np.arange(n)[share(n, rank, size)] for rank in range(size)]
    for got, want in zip(parts, np.array_split(np.arange(n), size)):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="rank must lie in"):
        share(n, size, size)


def test_stream_shards_side_by_side_are_the_whole_batch():
    ids = np.random.default_rng(3).integers(0, 50, 400)
    whole = StreamBatches(ids, batch_size=5, seq_len=6)
    shards = [StreamBatches(ids, batch_size=5, seq_len=6) for _ in range(3)]
    for rank, b in enumerate(shards):
        b.shard(rank, 3)
    for _ in range(whole.chunks_per_epoch + 1):
        x, y, new_epoch = whole.next()
        parts = [b.next() for b in shards]
        np.testing.assert_array_equal(np.concatenate([p[0] for p in parts], axis=1), x)
        np.testing.assert_array_equal(np.concatenate([p[1] for p in parts], axis=1), y)
        assert all(p[2] == new_epoch for p in parts)
    with pytest.raises(ValueError, match="batch size 5 is smaller than the 6 processes"):
        StreamBatches(ids, batch_size=5, seq_len=6).shard(0, 6)
    empty = StreamBatches(ids, batch_size=5, seq_len=6)
    empty.shard(5, 6, allow_empty=True)
    assert list(empty.all_chunks()) == []


def test_sequence_batches_state_is_small_and_resumes_the_same_order():
    b = SequenceBatches(100_000, 64, np.random.default_rng(4))
    for _ in range(b.batches_per_epoch + 5):  # into the second epoch
        b.next()
    state = json.loads(json.dumps(b.state_dict()))
    assert len(json.dumps(state)) < 1000  # not the order of 100,000 examples
    expected = [b.next() for _ in range(3)]
    again = SequenceBatches(100_000, 64, np.random.default_rng(99))
    again.load_state_dict(state)
    for want in expected:
        np.testing.assert_array_equal(again.next(), want)
    legacy = {"epoch": 0, "index": 1, "order": [2, 0, 1, 3]}  # a checkpoint of earlier versions
    old = SequenceBatches(4, 2, np.random.default_rng(0))
    old.load_state_dict(legacy)
    assert old.state_dict() == legacy  # saved again as it was read: no state draws that order
    np.testing.assert_array_equal(old.next(), [1, 3])
    old.next()  # a new epoch: its order comes from the generator again
    assert "order_state" in old.state_dict()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"order_state": "shuffled"}, "generator state is not valid"),
        ({"order_state": np.random.MT19937(0).state}, "generator state is not valid"),
        ({"index": 3}, "past the 2 batches"),
        ({"order": [0, 1, 2, 3]}, "a data position is"),  # both forms at once
        ({"epoch": True}, "epoch must be a whole number"),
    ],
)
def test_a_saved_order_state_is_checked_and_a_bad_one_changes_nothing(change, message):
    b = SequenceBatches(4, 2, np.random.default_rng(0))
    b.next()
    state = {**b.state_dict(), **change}
    other = SequenceBatches(4, 2, np.random.default_rng(1))
    before = (other.rng.bit_generator.state, other.order.tolist(), other.epoch, other.index)
    with pytest.raises(ValueError, match=message):
        other.load_state_dict(state)
    after = (other.rng.bit_generator.state, other.order.tolist(), other.epoch, other.index)
    assert after == before


def test_stream_batches_take_integer_ids_only():
    with pytest.raises(ValueError, match="ids must be integers, got float64"):
        StreamBatches(np.arange(20.0), 2, 3)
    with pytest.raises(ValueError, match="one-dimensional"):
        StreamBatches(np.zeros((4, 5), dtype=np.int64), 2, 3)


# ---------------------------------------------------------------- lm_lines_batch


def test_lm_lines_batch():
    eos, pad = 1, 0
    lines = [[5, 6, 7], [8], []]
    inputs, targets, lengths = lm_lines_batch(lines, eos_id=eos, pad_id=pad)
    np.testing.assert_array_equal(lengths, [4, 2, 1])
    np.testing.assert_array_equal(
        inputs,
        [
            [eos, eos, eos],
            [5, 8, pad],
            [6, pad, pad],
            [7, pad, pad],
        ],
    )
    I = IGNORE_INDEX  # noqa: E741
    np.testing.assert_array_equal(
        targets,
        [
            [5, 8, eos],
            [6, eos, I],
            [7, I, I],
            [eos, I, I],
        ],
    )
    # the target at t is the input at t + 1 wherever both are real
    mask = np.arange(4)[:, None] < lengths[None, :]
    np.testing.assert_array_equal(targets[:-1][mask[1:]], inputs[1:][mask[1:]])
    assert (targets[~mask] == IGNORE_INDEX).all() and (inputs[~mask] == pad).all()


def test_lm_lines_batch_feeds_cross_entropy_padding():
    from rnnkit.losses import cross_entropy

    inputs, targets, lengths = lm_lines_batch([[2, 3], [4, 2, 3, 4]], eos_id=1, pad_id=0)
    logits = np.random.default_rng(12).standard_normal(inputs.shape + (5,))
    loss, dlogits = cross_entropy(logits, targets)
    assert np.isfinite(loss)
    assert not dlogits[targets == IGNORE_INDEX].any()
    assert (targets != IGNORE_INDEX).sum() == lengths.sum()


def test_lm_lines_batch_no_lines_raises():
    with pytest.raises(ValueError):
        lm_lines_batch([], eos_id=1)
