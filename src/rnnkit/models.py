"""The RNN architectures of the notes, each a few layers wired together.

| model | the notes' picture | shapes |
|---|---|---|
| :class:`LanguageModel` | many-to-many LM; one-to-many generation | ids (T, N) -> (T, N, V) |
| :class:`SequenceClassifier` | many-to-one (sentiment, DNA) | ids (T, N) -> (N, C) |
| :class:`SequenceTagger` | many-to-many with Tx = Ty (named entities) | ids (T, N) -> (T, N, C) |
| :class:`Seq2Seq` | encoder-decoder with Tx != Ty (translation) | (Tx, N), (Ty, N) -> (Ty, N, V) |

Every model is time-major and follows the layers' contract: ``forward`` returns a cache and
``backward`` adds into the gradients of every sub-module. ``rnn_options`` passes further
keyword arguments to the recurrent layers, e.g. ``{"forget_bias": 3.0}`` for an LSTM that
must carry information over many steps, or ``{"reset_after": False}`` for the course's GRU.
"""

from __future__ import annotations

import functools

import numpy as np

from .functional import log_softmax, softmax
from .init import as_generator
from .layers import Dropout, Embedding, Linear
from .module import Module, predicting
from .recurrent import GRU, LSTM, RNN, RNNBase

CELLS = ("lstm", "gru", "rnn")


def inference(method):
    """Run a model method in evaluation mode (dropout off), whatever mode the model is in, and
    in inference mode (no backward pass follows: :func:`rnnkit.module.predicting`)."""

    @functools.wraps(method)
    def in_eval_mode(self, *args, **kwargs):
        with predicting(self):
            return method(self, *args, **kwargs)

    return in_eval_mode


def make_recurrent(
    cell: str, input_size: int, hidden_size: int, num_layers: int = 1, **kwargs
) -> RNNBase:
    """``RNN``, ``GRU`` or ``LSTM`` by name (``"rnn"``, ``"gru"``, ``"lstm"``)."""
    classes = {"lstm": LSTM, "gru": GRU, "rnn": RNN}
    if cell not in classes:
        raise ValueError(f"cell must be one of {', '.join(CELLS)}, got {cell!r}")
    return classes[cell](input_size, hidden_size, num_layers, **kwargs)


def _zero_state(rnn: RNNBase, N: int):
    shape = (rnn.num_layers * rnn.num_directions, N, rnn.hidden_size)
    h = np.zeros(shape, dtype=rnn.dtype)
    return (h, h.copy()) if rnn.kind.num_states == 2 else h


class LanguageModel(Module):
    """Embedding -> recurrent stack -> softmax head: ŷ<t> = P(y<t+1> | y<1>, ..., y<t>).

    Trained many-to-many on a corpus shifted by one token; sampled one token at a time with
    each output fed back as the next input (one-to-many). ``embedding_dim`` defaults to
    ``hidden_size``.
    """

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int = 128,
        num_layers: int = 1,
        cell: str = "lstm",
        embedding_dim: int | None = None,
        dropout: float = 0.0,
        *,
        rnn_options: dict | None = None,
        rng: np.random.Generator | int | None = None,
        dtype: object = np.float32,
    ):
        super().__init__()
        rng = as_generator(rng)
        E = embedding_dim or hidden_size
        self.vocab_size, self.cell = vocab_size, cell
        self.embedding = self.add_module(
            "embedding", Embedding(vocab_size, E, rng=rng, dtype=dtype)
        )
        self.rnn = self.add_module(
            "rnn",
            make_recurrent(
                cell,
                E,
                hidden_size,
                num_layers,
                dropout=dropout,
                rng=rng,
                dtype=dtype,
                **(rnn_options or {}),
            ),
        )
        self.dropout = self.add_module("dropout", Dropout(dropout, rng=rng))
        self.head = self.add_module("head", Linear(hidden_size, vocab_size, rng=rng, dtype=dtype))

    def forward(
        self, ids: np.ndarray, state=None, lengths=None
    ) -> tuple[np.ndarray, object, tuple]:
        """``ids (T, N)`` -> ``(logits (T, N, V), final state, cache)``."""
        emb = self.embedding.rows(ids)  # (T, N, E), as rows of the table
        out, state, c_rnn = self.rnn.forward(emb, state, lengths)  # (T, N, H)
        out, c_drop = self.dropout.forward(out)
        logits, c_head = self.head.forward(out)  # (T, N, V)
        return logits, state, (c_rnn, c_drop, c_head)

    def backward(self, dlogits: np.ndarray, cache: tuple, dstate=None):
        """Adds every gradient; returns the gradient of the initial state."""
        c_rnn, c_drop, c_head = cache
        dout = self.dropout.backward(self.head.backward(dlogits, c_head), c_drop)
        dtable, dstate0 = self.rnn.backward(dout, c_rnn, dstate)
        self.embedding.backward_table(dtable)
        return dstate0

    def initial_state(self, batch_size: int):
        """Zeros shaped like the recurrent stack's state."""
        return _zero_state(self.rnn, batch_size)

    def step(self, ids: np.ndarray, state=None) -> tuple[np.ndarray, object]:
        """One token per sequence: ``ids (N,)`` -> ``(logits (N, V), new state)``."""
        logits, state, _ = self.forward(np.asarray(ids)[None], state)
        return logits[0], state

    @inference
    def sequence_log_prob(self, ids: np.ndarray, start_id: int, state=None) -> np.ndarray:
        """log P(y<1>, ..., y<T>) = sum_t log P(y<t> | start, y<1>, ..., y<t-1>) per token.

        Args:
            ids: ``(T,)`` one sequence of token ids.
            start_id: the token the model reads before the first one (for example ``<eos>``,
                which ends the previous sequence).

        Returns:
            ``(T,)`` the log-probability of each token; their sum is log P(sentence).
        """
        ids = np.asarray(ids)
        inputs = np.concatenate([[start_id], ids[:-1]]).astype(np.int64)[:, None]  # (T, 1)
        logits, _, _ = self.forward(inputs, state)
        logp = log_softmax(logits[:, 0].astype(np.float64))  # (T, V)
        return logp[np.arange(len(ids)), ids]


class SequenceClassifier(Module):
    """Many-to-one: read the whole sequence, then one label (sentiment, DNA class).

    ``pooling="last"`` uses the final hidden state of the top layer (both directions when
    bidirectional, each taken at the sequence's true length); ``"mean"`` and ``"max"`` pool the
    outputs over the real time steps. With ``vocab_size=None`` the inputs are vectors
    ``(T, N, input_size)`` instead of token ids.
    """

    def __init__(
        self,
        vocab_size: int | None,
        num_classes: int,
        hidden_size: int = 64,
        num_layers: int = 1,
        cell: str = "lstm",
        bidirectional: bool = False,
        embedding_dim: int | None = None,
        input_size: int | None = None,
        pooling: str = "last",
        dropout: float = 0.0,
        *,
        rnn_options: dict | None = None,
        rng: np.random.Generator | int | None = None,
        dtype: object = np.float32,
    ):
        super().__init__()
        if pooling not in ("last", "mean", "max"):
            raise ValueError(f"pooling must be 'last', 'mean' or 'max', got {pooling!r}")
        rng = as_generator(rng)
        self.pooling = pooling
        self.embedding = None
        if vocab_size is not None:
            E = embedding_dim or hidden_size
            self.embedding = self.add_module(
                "embedding", Embedding(vocab_size, E, rng=rng, dtype=dtype)
            )
        elif input_size is None:
            raise ValueError("give vocab_size (token ids) or input_size (vectors)")
        else:
            E = input_size
        self.rnn = self.add_module(
            "rnn",
            make_recurrent(
                cell,
                E,
                hidden_size,
                num_layers,
                dropout=dropout,
                bidirectional=bidirectional,
                rng=rng,
                dtype=dtype,
                **(rnn_options or {}),
            ),
        )
        features = self.rnn.num_directions * hidden_size
        self.head = self.add_module("head", Linear(features, num_classes, rng=rng, dtype=dtype))

    def forward(self, inputs: np.ndarray, lengths=None) -> tuple[np.ndarray, tuple]:
        """``inputs (T, N)`` ids or ``(T, N, D)`` vectors -> ``(logits (N, C), cache)``."""
        x = inputs if self.embedding is None else self.embedding.rows(inputs)
        out, state, c_rnn = self.rnn.forward(x, None, lengths)  # (T, N, dirs*H)
        T, N = out.shape[:2]
        mask = (
            c_rnn.mask if c_rnn.mask is not None else np.ones((T, N, 1), dtype=out.dtype)
        )  # (T, N, 1)
        if self.pooling == "last":
            h = state[0] if isinstance(state, tuple) else state  # (L*dirs, N, H)
            dirs = self.rnn.num_directions
            feat = np.concatenate(list(h[-dirs:]), axis=1)  # (N, dirs*H)
            pool_cache = None
        elif self.pooling == "mean":
            count = mask.sum(axis=0)  # (N, 1)
            feat = out.sum(axis=0) / count
            pool_cache = count
        else:
            masked = np.where(mask > 0, out, -np.inf)
            idx = masked.argmax(axis=0)  # (N, dirs*H)
            feat = np.take_along_axis(out, idx[None], axis=0)[0]
            pool_cache = idx
        logits, c_head = self.head.forward(feat)
        return logits, (c_rnn, mask, pool_cache, c_head, out.shape)

    def backward(self, dlogits: np.ndarray, cache: tuple) -> None:
        """Adds every gradient."""
        c_rnn, mask, pool_cache, c_head, out_shape = cache
        dfeat = self.head.backward(dlogits, c_head)  # (N, dirs*H)
        T, N, F = out_shape
        dout = np.zeros(out_shape, dtype=dfeat.dtype)
        dstate = None
        if self.pooling == "last":
            dirs, H = self.rnn.num_directions, self.rnn.hidden_size
            dh = _zero_state(self.rnn, N)
            dh_h = dh[0] if isinstance(dh, tuple) else dh
            for d in range(dirs):
                dh_h[dh_h.shape[0] - dirs + d] = dfeat[:, d * H : (d + 1) * H]
            dstate = dh
        elif self.pooling == "mean":
            dout[...] = dfeat[None] / pool_cache * mask
        else:
            np.put_along_axis(dout, pool_cache[None], dfeat[None], axis=0)
        dx, _ = self.rnn.backward(dout, c_rnn, dstate)
        if self.embedding is not None:
            self.embedding.backward_table(dx)

    @inference
    def predict(self, inputs: np.ndarray, lengths=None) -> np.ndarray:
        """Most likely class of each sequence, ``(N,)``."""
        logits, _ = self.forward(inputs, lengths)
        return logits.argmax(axis=-1)

    @inference
    def predict_proba(self, inputs: np.ndarray, lengths=None) -> np.ndarray:
        """P(class | sequence) = softmax(logits), ``(N, C)``; each row sums to 1."""
        logits, _ = self.forward(inputs, lengths)
        return softmax(logits.astype(np.float64))


class SequenceTagger(Module):
    """Many-to-many with Tx = Ty: one label per token (named entities), usually bidirectional
    so each label sees the words on both sides."""

    def __init__(
        self,
        vocab_size: int,
        num_tags: int,
        hidden_size: int = 64,
        num_layers: int = 1,
        cell: str = "lstm",
        bidirectional: bool = True,
        embedding_dim: int | None = None,
        dropout: float = 0.0,
        *,
        rnn_options: dict | None = None,
        rng: np.random.Generator | int | None = None,
        dtype: object = np.float32,
    ):
        super().__init__()
        rng = as_generator(rng)
        E = embedding_dim or hidden_size
        self.embedding = self.add_module(
            "embedding", Embedding(vocab_size, E, rng=rng, dtype=dtype)
        )
        self.rnn = self.add_module(
            "rnn",
            make_recurrent(
                cell,
                E,
                hidden_size,
                num_layers,
                dropout=dropout,
                bidirectional=bidirectional,
                rng=rng,
                dtype=dtype,
                **(rnn_options or {}),
            ),
        )
        features = self.rnn.num_directions * hidden_size
        self.head = self.add_module("head", Linear(features, num_tags, rng=rng, dtype=dtype))

    def forward(self, ids: np.ndarray, lengths=None) -> tuple[np.ndarray, tuple]:
        """``ids (T, N)`` -> ``(logits (T, N, num_tags), cache)``."""
        emb = self.embedding.rows(ids)
        out, _, c_rnn = self.rnn.forward(emb, None, lengths)  # (T, N, dirs*H)
        logits, c_head = self.head.forward(out)
        return logits, (c_rnn, c_head)

    def backward(self, dlogits: np.ndarray, cache: tuple) -> None:
        """Adds every gradient."""
        c_rnn, c_head = cache
        dtable, _ = self.rnn.backward(self.head.backward(dlogits, c_head), c_rnn)
        self.embedding.backward_table(dtable)

    @inference
    def predict(self, ids: np.ndarray, lengths=None) -> np.ndarray:
        """Most likely tag of each token, ``(T, N)``."""
        logits, _ = self.forward(ids, lengths)
        return logits.argmax(axis=-1)


class Seq2Seq(Module):
    """Encoder-decoder for Tx != Ty: the encoder reads the source, its final state starts the
    decoder, which is a language model over the target conditioned on that state.

    Training uses teacher forcing (the decoder reads the true previous target token);
    decoding is greedy or beam search, starting from ``bos_id`` and stopping at ``eos_id``.
    """

    def __init__(
        self,
        src_vocab_size: int,
        tgt_vocab_size: int,
        hidden_size: int = 64,
        num_layers: int = 1,
        cell: str = "lstm",
        embedding_dim: int | None = None,
        bos_id: int = 1,
        eos_id: int = 2,
        *,
        rnn_options: dict | None = None,
        rng: np.random.Generator | int | None = None,
        dtype: object = np.float32,
    ):
        super().__init__()
        rng = as_generator(rng)
        E = embedding_dim or hidden_size
        self.bos_id, self.eos_id = bos_id, eos_id
        self.src_embedding = self.add_module(
            "src_embedding", Embedding(src_vocab_size, E, rng=rng, dtype=dtype)
        )
        self.encoder = self.add_module(
            "encoder",
            make_recurrent(
                cell, E, hidden_size, num_layers, rng=rng, dtype=dtype, **(rnn_options or {})
            ),
        )
        self.tgt_embedding = self.add_module(
            "tgt_embedding", Embedding(tgt_vocab_size, E, rng=rng, dtype=dtype)
        )
        self.decoder = self.add_module(
            "decoder",
            make_recurrent(
                cell, E, hidden_size, num_layers, rng=rng, dtype=dtype, **(rnn_options or {})
            ),
        )
        self.head = self.add_module(
            "head", Linear(hidden_size, tgt_vocab_size, rng=rng, dtype=dtype)
        )

    def encode(self, src: np.ndarray, src_lengths=None):
        """``src (Tx, N)`` -> ``(final encoder state, cache)``."""
        emb = self.src_embedding.rows(src)
        _, state, c_rnn = self.encoder.forward(emb, None, src_lengths)
        return state, c_rnn

    def forward(
        self, src: np.ndarray, tgt_in: np.ndarray, src_lengths=None, tgt_lengths=None
    ) -> tuple[np.ndarray, tuple]:
        """Teacher forcing: ``tgt_in (Ty, N)`` is the target shifted right (``bos`` first).
        Returns ``(logits (Ty, N, V), cache)``."""
        state, c_enc = self.encode(src, src_lengths)
        emb = self.tgt_embedding.rows(tgt_in)
        out, _, c_dec = self.decoder.forward(emb, state, tgt_lengths)  # (Ty, N, H)
        logits, c_head = self.head.forward(out)
        return logits, (c_enc, c_dec, c_head)

    def backward(self, dlogits: np.ndarray, cache: tuple) -> None:
        """Adds every gradient, through the decoder into the encoder via the handed-over state."""
        c_rnn, c_dec, c_head = cache
        dtable, dstate = self.decoder.backward(self.head.backward(dlogits, c_head), c_dec)
        self.tgt_embedding.backward_table(dtable)
        T, N = c_rnn.shape
        dout = np.zeros((T, N, self.encoder.hidden_size), dtype=dtable.dtype)
        dsrc, _ = self.encoder.backward(dout, c_rnn, dstate)
        self.src_embedding.backward_table(dsrc)

    def _decoder_step(self, ids: np.ndarray, state):
        emb, _ = self.tgt_embedding.forward(ids[None])
        out, state, _ = self.decoder.forward(emb, state)
        logits, _ = self.head.forward(out[0])
        return log_softmax(logits.astype(np.float64)), state  # (N, V)

    @inference
    def greedy_decode(
        self, src: np.ndarray, src_lengths=None, max_len: int = 50
    ) -> tuple[list[list[int]], np.ndarray]:
        """Pick the most likely token at each step. Returns the token lists (without
        ``bos``/``eos``) and each sequence's total log-probability (``eos`` included)."""
        state, _ = self.encode(src, src_lengths)
        N = src.shape[1]
        ids = np.full(N, self.bos_id)
        done = np.zeros(N, dtype=bool)
        scores = np.zeros(N)
        outputs: list[list[int]] = [[] for _ in range(N)]
        for _ in range(max_len):
            logp, state = self._decoder_step(ids, state)
            ids = logp.argmax(axis=1)
            scores += np.where(done, 0.0, logp[np.arange(N), ids])
            for n in np.flatnonzero(~done):
                if ids[n] == self.eos_id:
                    done[n] = True
                else:
                    outputs[n].append(int(ids[n]))
            if done.all():
                break
        return outputs, scores

    @inference
    def beam_search(
        self, src: np.ndarray, src_lengths=None, beam_size: int = 4, max_len: int = 50
    ) -> tuple[list[list[int]], np.ndarray]:
        """Keep the ``beam_size`` best partial translations by total log-probability.

        A hypothesis ends at ``eos`` (or at ``max_len``); the best finished one is returned per
        sequence. The greedy hypothesis is kept as a candidate, so the result never scores below
        greedy decoding on the same model.
        """
        greedy, greedy_scores = self.greedy_decode(src, src_lengths, max_len)
        state, _ = self.encode(src, src_lengths)
        results, scores = [], np.empty(src.shape[1])
        for n in range(src.shape[1]):
            one = (
                tuple(s[:, n : n + 1] for s in state)
                if isinstance(state, tuple)
                else state[:, n : n + 1]
            )
            best, best_score = self._beam_one(one, beam_size, max_len)
            if greedy_scores[n] > best_score:
                best, best_score = greedy[n], greedy_scores[n]
            results.append(best)
            scores[n] = best_score
        return results, scores

    def _beam_one(self, state, beam_size: int, max_len: int) -> tuple[list[int], float]:
        beams = [([], 0.0, state)]  # (tokens, log-probability, decoder state)
        finished: list[tuple[list[int], float]] = []
        for _ in range(max_len):
            last = np.array([b[0][-1] if b[0] else self.bos_id for b in beams])
            stacked = _stack_states([b[2] for b in beams])
            logp, new_state = self._decoder_step(last, stacked)  # (B, V)
            total = np.array([b[1] for b in beams])[:, None] + logp
            order = np.argsort(total, axis=None)[::-1][:beam_size]
            beams_next = []
            for flat in order:
                b, tok = divmod(int(flat), logp.shape[1])
                tokens = beams[b][0] + [tok]
                if tok == self.eos_id:
                    finished.append((tokens[:-1], float(total[b, tok])))
                else:
                    beams_next.append((tokens, float(total[b, tok]), _select_state(new_state, b)))
            beams = beams_next
            # Scores only fall as tokens are added: stop when no open beam can win.
            best_done = max((f[1] for f in finished), default=-np.inf)
            if not beams or max(b[1] for b in beams) <= best_done:
                break
        finished.extend((b[0], b[1]) for b in beams)
        return max(finished, key=lambda f: f[1])


def _stack_states(states: list):
    if isinstance(states[0], tuple):
        return tuple(np.concatenate([s[i] for s in states], axis=1) for i in range(2))
    return np.concatenate(states, axis=1)


def _select_state(state, b: int):
    if isinstance(state, tuple):
        return tuple(s[:, b : b + 1] for s in state)
    return state[:, b : b + 1]
