"""Corpora streamed from disk: the vocabulary built in one pass over the file, the text encoded
once into a file of token ids, and read back through ``np.memmap``.

A corpus of any size then trains and evaluates in the memory its model needs: the text is read
in chunks of :data:`CHUNK` bytes, decoded strictly (an undecodable byte is named by its offset
in the file), and training reads each window of ids from the map when it needs it. Nothing is
held in memory per token; lines mode holds 16 bytes per line (the split and the shuffled order).

An encoded corpus lives in a folder (a run's ``--out``) as ``NAME.ids``, the ids one after
another (uint8, uint16 or uint32: the smallest type that holds the vocabulary), in lines mode
``NAME.lines``, int64 offsets (line i is ``ids[offsets[i]:offsets[i + 1]]``), and
``NAME.json``, written last, which says what they encode: the source's SHA-256 and size, mode,
level and encoding, the vocabulary's digest, and counts. An encoding whose description matches
is used again as it is.

The ids are those of :mod:`rnnkit.text`: stream mode encodes the file as
``Vocabulary.encode_stream`` encodes its text, lines mode each line of ``split_lines``
(without ``<eos>``, which the batches add).
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .checkpoint import atomic_write_text
from .text import (
    TextError,
    Vocabulary,
    check_encoding,
    split_lines,
    tokenize,
    undecodable,
    unreadable,
)

CHUNK = 1 << 20  # bytes read at a time: 1 MiB
FORMAT = "rnnkit-corpus-1"
_CODE_POINTS = 0x110000  # every Unicode code point, for counting characters with bincount


# ---------------------------------------------------------------- reading in chunks


def read_chunks(
    path: str | Path, encoding: str = "utf-8", errors: str = "strict", digest=None
) -> Iterator[str]:
    """The text of ``path`` decoded piece by piece (a character split between two reads is
    decoded whole); ``digest`` (a ``hashlib`` object) is updated with every byte read.

    Raises:
        TextError: the file cannot be read, or a byte is not valid in ``encoding`` (named by
            its offset in the file), unless ``errors="replace"``.
    """
    path = Path(path)
    check_encoding(encoding)
    decoder = codecs.getincrementaldecoder(encoding)(errors)
    offset = 0  # bytes of the file handed to the decoder so far
    try:
        with open(path, "rb") as f:
            while True:
                raw = f.read(CHUNK)
                if digest is not None:
                    digest.update(raw)
                held = len(decoder.getstate()[0])  # bytes of a character begun in the last read
                try:
                    text = decoder.decode(raw, final=not raw)
                except UnicodeDecodeError as e:
                    at = offset - held + e.start
                    raise undecodable(path, at, e.object[e.start], e.encoding) from None
                offset += len(raw)
                if text:
                    yield text
                if not raw:
                    return
    except OSError as e:
        raise unreadable(path, e) from None


def _segments(chunks: Iterator[str], mode: str) -> Iterator[str]:
    """The text again, cut only where no token and no line is split: after a line break in
    lines mode, after a space, tab or line break in stream mode (where words need it)."""
    breaks = ("\n", "\r") if mode == "lines" else ("\n", " ", "\t", "\r")
    rest = ""
    for chunk in chunks:
        text = rest + chunk
        cut = max(text.rfind(b) for b in breaks) + 1
        if cut:
            yield text[:cut]
        rest = text[cut:]
    if rest:
        yield rest


def file_digest(path: str | Path) -> str:
    """SHA-256 of the file's bytes, read in chunks."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(CHUNK):
                digest.update(block)
    except OSError as e:
        raise unreadable(Path(path), e) from None
    return digest.hexdigest()


def vocabulary_digest(vocab: Vocabulary) -> str:
    """SHA-256 of a vocabulary's level and tokens."""
    return hashlib.sha256(json.dumps(vocab.to_json()).encode("utf-8")).hexdigest()


# ---------------------------------------------------------------- the vocabulary pass


def _code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype="<u4")


@dataclass
class Scan:
    """What one pass over a file found."""

    vocabulary: Vocabulary
    sha256: str  # of the file's bytes
    blank: bool  # the text holds nothing but white space
    tokens: int  # ids its encoding will hold (stream mode: <eos> of each line included)
    lines: int  # lines mode: its lines


def scan(
    path: str | Path,
    level: str,
    mode: str,
    min_count: int = 1,
    encoding: str = "utf-8",
    errors: str = "strict",
) -> Scan:
    """Build the vocabulary of a text file in one streaming pass, the file's SHA-256 with it.

    The vocabulary equals ``Vocabulary.build`` on the whole text (its lines in lines mode):
    characters are counted by code point; words by the pieces of text between white space
    (no token holds white space), each distinct piece then cut by
    :func:`rnnkit.text.tokenize` once.
    """
    digest = hashlib.sha256()
    chars = np.zeros(_CODE_POINTS, dtype=np.int64)
    pieces: Counter[str] = Counter()
    blank, tokens, lines, last = True, 0, 0, ""
    for segment in _segments(read_chunks(path, encoding, errors, digest), mode):
        blank, last = blank and segment.isspace(), segment[-1]
        kept = split_lines(segment) if mode == "lines" else [segment]
        lines += len(kept)
        if level == "word":
            pieces.update(segment.split())
            tokens += segment.count("\n") if mode == "stream" else 0  # the <eos> of each line
        else:
            text = "".join(kept)
            chars += np.bincount(_code_points(text), minlength=_CODE_POINTS)
            tokens += len(text)
    words: Counter[str] = Counter({chr(c): int(chars[c]) for c in np.flatnonzero(chars)})
    if level == "word":
        for piece, count in pieces.items():
            found = tokenize(piece, "word")
            tokens += count * len(found)
            for token in found:
                words[token] += count
    if mode == "stream" and level == "word" and last not in ("", "\n"):
        tokens += 1  # the <eos> of a last line without a line break
    vocab = Vocabulary.from_counts(words, level, min_count)
    return Scan(vocab, digest.hexdigest(), blank, tokens, lines if mode == "lines" else 0)


# ---------------------------------------------------------------- the encoded corpus


class Lines(Sequence):
    """Lines of an encoded corpus, in a chosen order: ``lines[i]`` is the int64 array of ids
    of line ``index[i]``, read from the map; a slice is a :class:`Lines` too."""

    def __init__(self, ids: np.ndarray, offsets: np.ndarray, index: np.ndarray | None = None):
        self.ids, self.offsets = ids, offsets
        self.index = np.arange(len(offsets) - 1) if index is None else np.asarray(index)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return Lines(self.ids, self.offsets, self.index[i])
        j = self.index[i]
        return self.ids[self.offsets[j] : self.offsets[j + 1]].astype(np.int64)

    def lengths(self) -> np.ndarray:
        """Tokens of each line, ``(len(self),)``."""
        return (self.offsets[self.index + 1] - self.offsets[self.index]).astype(np.int64)


@dataclass
class Corpus:
    """A text encoded into token ids on disk (see the module's notes)."""

    ids: np.ndarray  # (tokens,) the map of NAME.ids
    offsets: np.ndarray | None  # (lines + 1,) lines mode: where each line starts and ends
    info: dict  # NAME.json: what the files encode

    def lines(self, index: np.ndarray | None = None) -> Lines:
        """Lines mode: the lines, all in file order or those of ``index`` in its order."""
        if self.offsets is None:
            raise ValueError("a stream-mode corpus has no lines")
        return Lines(self.ids, self.offsets, index)


def _dtype(vocab_size: int) -> np.dtype:
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    raise ValueError(f"a vocabulary of {vocab_size} tokens is too large to encode")


def _map(path: Path, dtype: np.dtype, length: int) -> np.ndarray:
    if length == 0:  # an empty file cannot be mapped
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(length,))


def open_corpus(folder: str | Path, name: str = "corpus") -> Corpus:
    """The corpus encoded in ``folder`` under ``name`` (by :func:`encode`), mapped read-only.

    Raises:
        ValueError: the files are missing, or their sizes disagree with ``NAME.json``.
    """
    folder = Path(folder)
    try:
        info = json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
        dtype, tokens = np.dtype(info["dtype"]), int(info["tokens"])
        paths = [(folder / f"{name}.ids", dtype, tokens)]
        if info["mode"] == "lines":
            paths.append((folder / f"{name}.lines", np.dtype(np.int64), int(info["lines"]) + 1))
        for path, kind, length in paths:
            if path.stat().st_size != kind.itemsize * length:
                raise ValueError(f"{path.name} has {path.stat().st_size} bytes")
    except (OSError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"no whole encoded corpus {name!r} in {folder} ({e})") from None
    maps = [_map(*p) for p in paths]
    return Corpus(maps[0], maps[1] if len(maps) > 1 else None, info)


@contextmanager
def _atomic_file(path: Path):
    """A binary file written to a temporary name in the same folder, flushed, fsynced, then
    renamed to ``path``; removed instead if the block raises."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _Encoder:
    """Token ids of text segments, for one vocabulary and mode."""

    def __init__(self, vocab: Vocabulary, mode: str, path: Path):
        self.vocab, self.mode, self.path = vocab, mode, path
        self.pieces: dict[str, list[int]] = {}  # word level: ids of each piece met so far
        if vocab.level == "char":  # code point -> id, -1 for a character outside
            self.table = np.full(_CODE_POINTS, -1, dtype=np.int32)
            for token, i in vocab.ids.items():
                if len(token) == 1:
                    self.table[ord(token)] = i

    def ids(self, text: str) -> np.ndarray:
        """Ids of ``text``'s tokens (no ``<eos>``)."""
        if self.vocab.level == "word":
            return np.array(self._word_ids(text), dtype=np.int64)
        ids = self.table[_code_points(text)]
        if (ids < 0).any():
            unknown = dict.fromkeys(text[i] for i in np.flatnonzero(ids < 0)[:1000])
            shown = ", ".join(repr(u) for u in list(unknown)[:20])
            raise TextError(f"{self.path} has characters the model never saw: {shown}")
        return ids

    def _word_ids(self, text: str) -> list[int]:
        """Ids of the words of ``text``, each piece between white space cut once."""
        get, unk, out = self.vocab.ids.get, self.vocab.unk_id, []
        if len(self.pieces) > 1 << 20:  # a text of ever new pieces: keep the memory bounded
            self.pieces.clear()
        for piece in text.split():
            found = self.pieces.get(piece)
            if found is None:
                found = self.pieces[piece] = [get(t, unk) for t in tokenize(piece, "word")]
            out += found
        return out

    def segment(self, segment: str) -> tuple[np.ndarray, np.ndarray | None, int]:
        """``(ids, tokens of each line or None, characters)`` of one segment."""
        if self.mode == "lines":
            lines = split_lines(segment)
            if self.vocab.level == "char":
                lengths = np.array([len(line) for line in lines], dtype=np.int64)
                return self.ids("".join(lines)), lengths, int(lengths.sum()) + len(lines)
            parts = [self.ids(line) for line in lines]
            chars = sum(len(line) + 1 for line in lines)
            lengths = np.array([len(p) for p in parts], dtype=np.int64)
            return np.concatenate(parts or [np.zeros(0, np.int64)]), lengths, chars
        if self.vocab.level == "char":
            return self.ids(segment), None, len(segment)
        parts = []  # word stream: <eos> at each line break, as Vocabulary.encode_stream
        for line in segment.split("\n"):
            parts += [self.ids(line), np.array([self.vocab.eos_id])]
        return np.concatenate(parts[:-1]), None, len(segment)


def encode(
    path: str | Path,
    vocab: Vocabulary,
    mode: str,
    folder: str | Path,
    name: str = "corpus",
    encoding: str = "utf-8",
    errors: str = "strict",
    sha256: str | None = None,
    prefix: Sequence[int] = (),
) -> Corpus:
    """Encode the text file ``path`` with ``vocab`` into ``folder`` (one streaming pass), or
    use the encoding already there if it describes this file, vocabulary and mode.

    Args:
        path: the text.
        vocab: its vocabulary; at char level a character outside it is an error.
        mode: ``"stream"`` or ``"lines"``.
        folder, name: where the files go (``NAME.ids``, ``NAME.lines``, ``NAME.json``).
        encoding, errors: how the bytes are decoded.
        sha256: the file's digest when known (from :func:`scan`): the file must still have
            it, and a matching encoding is used without reading the file again.
        prefix: ids written before the text's (stream mode: what the model reads first).

    Raises:
        TextError: the file cannot be read or decoded, holds characters outside the
            vocabulary, or changed since ``sha256`` was taken.
    """
    path, folder = Path(path), Path(folder)
    expected = {
        "format": FORMAT,
        "mode": mode,
        "level": vocab.level,
        "vocabulary": vocabulary_digest(vocab),
        "encoding": encoding,
        "errors": errors,
        "prefix": [int(i) for i in prefix],
    }
    try:
        found = open_corpus(folder, name)
        if sha256 is not None and {**expected, "sha256": sha256}.items() <= found.info.items():
            return found
    except ValueError:
        pass
    (folder / f"{name}.json").unlink(missing_ok=True)  # it would describe the old files
    for stale in folder.glob(f".{name}.*.tmp"):  # left by a write that was killed
        stale.unlink(missing_ok=True)
    encoder, digest, dtype = _Encoder(vocab, mode, path), hashlib.sha256(), _dtype(len(vocab))
    tokens, lines, chars, last, blank = len(prefix), 0, 0, "", True
    with ExitStack() as files:
        ids_file = files.enter_context(_atomic_file(folder / f"{name}.ids"))
        np.asarray(prefix, dtype=dtype).tofile(ids_file)
        if mode == "lines":
            lines_file = files.enter_context(_atomic_file(folder / f"{name}.lines"))
            np.array([tokens], dtype=np.int64).tofile(lines_file)  # offsets[0]
        for segment in _segments(read_chunks(path, encoding, errors, digest), mode):
            ids, lengths, n_chars = encoder.segment(segment)
            ids.astype(dtype).tofile(ids_file)
            if lengths is not None:
                (tokens + np.cumsum(lengths)).tofile(lines_file)  # where each line ends
                lines += len(lengths)
            tokens, chars, last = tokens + len(ids), chars + n_chars, segment[-1]
            blank = blank and segment.isspace()
        if mode == "stream" and vocab.level == "word" and last not in ("", "\n"):
            np.array([vocab.eos_id], dtype=dtype).tofile(ids_file)  # the last line's end
            tokens += 1
        if sha256 is not None and digest.hexdigest() != sha256:
            raise TextError(f"{path} changed while it was being read; run the command again")
    info = {
        **expected,
        "source": str(path.resolve()),
        "sha256": digest.hexdigest(),
        "bytes": path.stat().st_size,
        "dtype": dtype.name,
        "tokens": tokens,
        "lines": lines,
        "characters": chars,
        "blank": blank,
    }
    atomic_write_text(folder / f"{name}.json", json.dumps(info, indent=1))
    return open_corpus(folder, name)
