"""The four RNN shapes of the notes: gradients, learning on small generated tasks, decoding."""

import itertools

import numpy as np
import pytest

from rnnkit.data import IGNORE_INDEX, pad_sequences
from rnnkit.functional import log_softmax
from rnnkit.losses import cross_entropy
from rnnkit.models import LanguageModel, Seq2Seq, SequenceClassifier, SequenceTagger
from rnnkit.optim import Adam, clip_grad_norm_, warmup_cosine_lr
from rnnkit.sampling import generate, sample_next


def numeric_check(model, loss_fn, rng, per_param=5):
    """Compare backward with central differences on a few entries of every parameter."""
    model.zero_grad()
    loss_fn(backward=True)
    grads = dict(model.named_grads())
    for name, p in model.named_parameters():
        flat, g = p.reshape(-1), grads[name].reshape(-1)
        for i in rng.choice(flat.size, min(per_param, flat.size), replace=False):
            old = flat[i]
            flat[i] = old + 1e-6
            up = loss_fn()
            flat[i] = old - 1e-6
            down = loss_fn()
            flat[i] = old
            assert abs((up - down) / 2e-6 - g[i]) < 1e-6, (name, i)


def test_model_gradients_are_exact():
    rng = np.random.default_rng(0)
    V, C = 7, 3
    ids, lengths = rng.integers(0, V, (5, 3)), np.array([5, 2, 4])
    y, tags = rng.integers(0, C, 3), rng.integers(0, C, (5, 3))
    tags[lengths[1] :, 1] = IGNORE_INDEX

    def check(model, run):
        def loss_fn(backward=False):
            loss, grad, cache = run()
            if backward:
                model.backward(grad, cache)
            return loss

        numeric_check(model, loss_fn, rng)

    for pooling, bi, cell in itertools.product(
        ["last", "mean", "max"], [False, True], ["lstm", "gru"]
    ):
        clf = SequenceClassifier(
            V, C, 4, 2, cell, bidirectional=bi, pooling=pooling, rng=1, dtype=np.float64
        )

        def run(clf=clf):
            logits, cache = clf.forward(ids, lengths)
            return (*cross_entropy(logits, y), cache)

        check(clf, run)
    tagger = SequenceTagger(V, C, 4, rng=2, dtype=np.float64)

    def run_tagger():
        logits, cache = tagger.forward(ids, lengths)
        return (*cross_entropy(logits, tags), cache)

    check(tagger, run_tagger)
    s2s = Seq2Seq(V, V + 2, 4, 2, "gru", rng=3, dtype=np.float64)
    tgt_in, tgt_out = rng.integers(0, V + 2, (4, 3)), rng.integers(0, V + 2, (4, 3))

    def run_s2s():
        logits, cache = s2s.forward(ids, tgt_in, lengths)
        return (*cross_entropy(logits, tgt_out), cache)

    check(s2s, run_s2s)
    lm = LanguageModel(V, 5, 2, "lstm", rng=4, dtype=np.float64)

    def run_lm():
        logits, _, cache = lm.forward(ids)
        return (*cross_entropy(logits, tags), cache)

    check(lm, run_lm)


def fit(model, batch_fn, steps, lr, forward, cosine=False):
    """Adam with clipping; a cosine decay of the rate makes the end of training steady."""
    opt = Adam(model, lr=lr)
    for step in range(steps):
        if cosine:
            opt.lr = warmup_cosine_lr(step, lr, steps)
        *inputs, targets = batch_fn()
        opt.zero_grad()
        logits, cache = forward(*inputs)
        _, dlogits = cross_entropy(logits, targets)
        model.backward(dlogits, cache)
        clip_grad_norm_(model, 1.0)
        opt.step()


def test_tagger_learns_a_token_rule():
    """Many-to-many, Tx = Ty: tag = (token + previous token) mod 3, so context matters."""
    rng = np.random.default_rng(0)

    def batch(n=32):
        seqs = [rng.integers(1, 6, length) for length in rng.integers(4, 12, n)]
        x, lengths = pad_sequences(seqs)
        y = np.full_like(x, IGNORE_INDEX)
        for j, s in enumerate(seqs):
            y[: len(s), j] = (s + np.concatenate([[0], s[:-1]])) % 3
        return x, lengths, y

    model = SequenceTagger(6, 3, 32, rng=1)
    fit(model, batch, 300, 0.01, model.forward)
    x, lengths, y = batch(500)
    real = y != IGNORE_INDEX
    accuracy = (model.predict(x, lengths)[real] == y[real]).mean()
    assert accuracy >= 0.99, accuracy


@pytest.mark.parametrize(
    "cell,options", [("lstm", {"forget_bias": 3.0}), ("gru", {"carry_bias": 2.0})]
)
def test_classifier_remembers_the_first_token_over_50_steps(cell, options):
    """Many-to-one over T = 50: only the first token decides the class, 49 noise tokens follow.

    Both cells need their gates to start by carrying the state (forget_bias, carry_bias) for
    the gradient to cross 50 steps in 300 updates; torch.nn.LSTM with PyTorch's initialisation
    fails this task the same way."""
    rng = np.random.default_rng(0)

    def batch(n=32):
        x = rng.integers(2, 8, (50, n))
        y = rng.integers(0, 2, n)
        x[0] = y
        return x, y

    model = SequenceClassifier(8, 2, 32, cell=cell, rnn_options=options, rng=1)
    fit(model, batch, 300, 0.01, model.forward)
    x, y = batch(1000)
    accuracy = (model.predict(x) == y).mean()
    assert accuracy >= 0.95, accuracy


BOS, EOS, DIGITS = 1, 2, range(3, 13)


def reversal_batch(rng, n=64):
    srcs = [rng.integers(3, 13, length) for length in rng.integers(5, 11, n)]
    src, src_lengths = pad_sequences(srcs)
    tgt_in, tgt_lengths = pad_sequences([[BOS, *s[::-1]] for s in srcs])
    tgt_out, _ = pad_sequences([[*s[::-1], EOS] for s in srcs], IGNORE_INDEX)
    return srcs, src, src_lengths, tgt_in, tgt_lengths, tgt_out


@pytest.fixture(scope="module")
def reverser():
    """An encoder-decoder trained to reverse digit strings of length 5 to 10."""
    rng = np.random.default_rng(0)
    model = Seq2Seq(13, 13, 128, 1, "lstm", embedding_dim=32, bos_id=BOS, eos_id=EOS, rng=1)

    def forward(src, src_lengths, tgt_in, tgt_lengths):
        return model.forward(src, tgt_in, src_lengths, tgt_lengths)

    fit(model, lambda: reversal_batch(rng)[1:], 1200, 0.005, forward, cosine=True)
    return model


def test_seq2seq_reverses_digit_strings(reverser):
    srcs, src, src_lengths, *_ = reversal_batch(np.random.default_rng(99), 300)
    out, _ = reverser.greedy_decode(src, src_lengths, max_len=15)
    exact = np.mean([o == list(s[::-1]) for o, s in zip(out, srcs)])
    assert exact >= 0.95, exact


def sequence_score(model, src, tokens):
    """log P(tokens, eos | src) computed with teacher forcing, independently of the decoders."""
    tgt_in = np.array([BOS, *tokens])[:, None]
    logits, _ = model.forward(src, tgt_in)
    logp = log_softmax(logits[:, 0].astype(np.float64))
    return sum(logp[t, tok] for t, tok in enumerate([*tokens, EOS]))


def test_beam_search_never_scores_below_greedy(reverser):
    srcs, src, src_lengths, *_ = reversal_batch(np.random.default_rng(5), 20)
    greedy, greedy_scores = reverser.greedy_decode(src, src_lengths, 15)
    beam, beam_scores = reverser.beam_search(src, src_lengths, beam_size=3, max_len=15)
    assert np.all(beam_scores >= greedy_scores - 1e-9)
    for n in range(3):  # the reported scores are the sequences' true scores
        one = src[: src_lengths[n], n : n + 1]
        assert sequence_score(reverser, one, beam[n]) == pytest.approx(beam_scores[n], abs=1e-4)
        assert sequence_score(reverser, one, greedy[n]) == pytest.approx(greedy_scores[n], abs=1e-4)


def test_wide_beam_finds_the_best_sequence_by_brute_force():
    """On an untrained model with 3 tokens and short outputs, a beam as wide as the search space
    returns the highest-scoring sequence, which greedy decoding often misses."""
    beats_greedy = 0
    for seed in range(8):
        model = Seq2Seq(4, 3, 6, 1, "gru", bos_id=0, eos_id=2, rng=seed, dtype=np.float64)
        src = np.array([[1], [3], [2]])
        max_len = 4
        best, best_score = None, -np.inf
        for length in range(max_len):
            for tokens in itertools.product([0, 1], repeat=length):
                score = sequence_score_generic(model, src, list(tokens))
                if score > best_score:
                    best, best_score = list(tokens), score
        beam, scores = model.beam_search(src, beam_size=64, max_len=max_len)
        if beam[0] == best:
            assert scores[0] == pytest.approx(best_score, abs=1e-9)
        else:  # only an unfinished hypothesis cut at max_len may beat it
            assert len(beam[0]) == max_len
        _, greedy_scores = model.greedy_decode(src, max_len=max_len)
        beats_greedy += scores[0] > greedy_scores[0] + 1e-9
    assert beats_greedy > 0


def sequence_score_generic(model, src, tokens):
    tgt_in = np.array([model.bos_id, *tokens])[:, None]
    logits, _ = model.forward(src, tgt_in)
    logp = log_softmax(logits[:, 0])
    return sum(logp[t, tok] for t, tok in enumerate([*tokens, model.eos_id]))


def test_sequence_log_prob_matches_the_training_loss():
    model = LanguageModel(9, 8, cell="gru", rng=0, dtype=np.float64)
    tokens = np.array([3, 1, 4, 1, 5, 8])
    per_token = model.sequence_log_prob(tokens, start_id=0)
    logits, _, _ = model.forward(np.array([0, *tokens[:-1]])[:, None])
    loss, _ = cross_entropy(logits, tokens[:, None], reduction="sum")
    assert per_token.shape == (6,) and np.all(per_token < 0)
    assert -per_token.sum() == pytest.approx(loss, rel=1e-12)


def test_one_to_many_generation_feeds_each_sample_back():
    model = LanguageModel(6, 8, cell="lstm", rng=0, dtype=np.float64)
    rng = np.random.default_rng(3)
    out = generate(model, 7, rng, start_id=0, num=2, temperature=0.8)
    assert [len(o) for o in out] == [7, 7]
    # Replaying the first sample token by token with step() gives the same tokens.
    replay = np.random.default_rng(3)
    logits, state = model.step(np.array([0, 0]))
    tokens = []
    for _ in range(7):
        nxt = sample_next(logits, replay, temperature=0.8)
        tokens.append(int(nxt[0]))
        logits, state = model.step(nxt, state)
    assert tokens == out[0]


def test_generation_from_an_initial_state_and_stop_token():
    model = LanguageModel(5, 8, cell="gru", rng=1, dtype=np.float64)
    h0 = np.random.default_rng(0).normal(size=(1, 1, 8))
    a = generate(model, 20, np.random.default_rng(0), start_id=0, state=h0)
    b = generate(model, 20, np.random.default_rng(0), start_id=0)
    assert a != b  # the state conditions the output (one-to-many from an initial state)
    stopped = generate(model, 50, np.random.default_rng(0), start_id=0, stop_id=3, num=5)
    assert all(3 not in s for s in stopped)


def test_sampling_options():
    rng = np.random.default_rng(0)
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]] * 4000))
    counts = np.bincount(sample_next(logits, rng), minlength=4) / 4000
    np.testing.assert_allclose(counts, [0.5, 0.3, 0.15, 0.05], atol=0.03)
    assert set(sample_next(logits, rng, top_k=2)) == {0, 1}
    assert set(sample_next(logits, rng, top_p=0.75)) == {0, 1}  # 0.5 + 0.3 reaches 0.75
    assert set(sample_next(logits, rng, top_p=0.1)) == {0}
    np.testing.assert_array_equal(
        sample_next(logits[:3], rng, top_k=1), sample_next(logits[:3], rng, greedy=True)
    )
    cold = np.bincount(sample_next(logits, rng, temperature=0.2), minlength=4) / 4000
    assert cold[0] > 0.9
    with pytest.raises(ValueError, match="temperature must be > 0.*greedy"):
        sample_next(logits, rng, temperature=0)
    with pytest.raises(ValueError, match=r"top_p must lie in \(0, 1\]"):
        sample_next(logits, rng, top_p=1.5)
    with pytest.raises(ValueError, match="top_k must be a whole number >= 1"):
        sample_next(logits, rng, top_k=0)


def test_model_bad_options():
    with pytest.raises(ValueError, match="cell must be one of lstm, gru, rnn, got 'transformer'"):
        LanguageModel(5, 4, cell="transformer")
    with pytest.raises(ValueError, match="pooling must be"):
        SequenceClassifier(5, 2, pooling="attention")
    with pytest.raises(ValueError, match="give vocab_size"):
        SequenceClassifier(None, 2)


def test_inference_helpers_turn_dropout_off_and_restore_the_mode():
    model = LanguageModel(6, 8, num_layers=2, dropout=0.5, rng=0, dtype=np.float64)
    model.train()
    tokens = np.array([1, 2, 3, 4])
    first, second = model.sequence_log_prob(tokens, 0), model.sequence_log_prob(tokens, 0)
    np.testing.assert_array_equal(first, second)  # no dropout noise
    assert model.training  # back in the mode it was in
    clf = SequenceClassifier(6, 2, 8, dropout=0.5, num_layers=2, rng=0)
    x = np.random.default_rng(0).integers(0, 6, (5, 3))
    np.testing.assert_array_equal(clf.predict(x), clf.predict(x))
    assert clf.training
