"""Corpora streamed from disk: the vocabulary built in one pass over the file, the text encoded
once into a file of token ids, and read back through ``np.memmap``.

A corpus of any size then trains and evaluates in the memory its model needs: the text is read
in chunks of :data:`CHUNK` bytes and decoded as :func:`rnnkit.text.read_text` decodes a whole
file (strictly, a byte-order mark dropped, line breaks read as ``\\n``, the same messages), and
training reads each window of ids from the map when it needs it. Nothing is held in memory per
token; lines mode holds 16 bytes per line (the split and the shuffled order).

An encoded corpus lives in a folder (a run's ``--out``) as ``NAME.ids``, the ids one after
another (uint8, uint16 or uint32: the smallest type that holds the vocabulary), in lines mode
``NAME.lines``, int64 offsets (line i is ``ids[offsets[i]:offsets[i + 1]]``), and
``NAME.json``, written last, which says what they encode: the source's SHA-256 and size, mode,
level and encoding, the vocabulary's digest, counts, and the SHA-256 of the files themselves.
An encoding whose description matches, and whose files still have their digests, is used
again as it is. Whoever writes into the folder removes the temporary files of a killed write
(:func:`rnnkit.files.remove_stale_temporaries` of :func:`file_names`), as the command line
does under the folder's lock.

The ids are those of :mod:`rnnkit.text`: stream mode encodes the file as
``Vocabulary.encode_stream`` encodes its text, lines mode each line of ``split_lines``
(without ``<eos>``, which the batches add).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .files import atomic_file, atomic_write_text
from .text import (
    TextError,
    Vocabulary,
    decode_pieces,
    read_pieces,
    split_lines,
    tokenize,
    unseen_characters,
)

CHUNK = 1 << 20  # bytes read at a time: 1 MiB
FORMAT = "rnnkit-corpus-2"
DTYPES = ("uint8", "uint16", "uint32")
_CODE_POINTS = 0x110000  # every Unicode code point, for counting characters with bincount


# ---------------------------------------------------------------- reading in chunks


def _hashed(pieces: Iterable[bytes], digest) -> Iterator[bytes]:
    for piece in pieces:
        if digest is not None:
            digest.update(piece)
        yield piece


def read_chunks(
    path: str | Path, encoding: str = "utf-8", errors: str = "strict", digest=None
) -> Iterator[str]:
    """The text of ``path`` decoded piece by piece, by :func:`rnnkit.text.decode_pieces`;
    ``digest`` (a ``hashlib`` object) is updated with every byte read.

    Raises:
        TextError: the file is not a regular file or cannot be read, or a byte is not valid
            in ``encoding`` (named by its offset in the file), unless ``errors="replace"``.
    """
    pieces = _hashed(read_pieces(path, CHUNK), digest)
    return decode_pieces(pieces, str(path), encoding, errors)


def _segments(chunks: Iterator[str], mode: str) -> Iterator[str]:
    """The text again, cut only where no token and no line is split: after a line break in
    lines mode, after a space, tab or line break in stream mode (where words need it)."""
    breaks = ("\n",) if mode == "lines" else ("\n", " ", "\t")
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
    """SHA-256 of the file's bytes, read in chunks (TextError as :func:`read_chunks`)."""
    digest = hashlib.sha256()
    for _ in _hashed(read_pieces(path, CHUNK), digest):
        pass
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
    longest: int  # lines mode: the tokens of its longest line


def scan(
    path: str | Path,
    level: str,
    mode: str,
    min_count: int = 1,
    encoding: str = "utf-8",
    errors: str = "strict",
) -> Scan:
    """Build the vocabulary of a text file in one streaming pass, the file's SHA-256 with it.

    The vocabulary equals ``Vocabulary.build`` on the whole text (its lines in lines mode) as
    :func:`rnnkit.text.read_text` reads it: characters are counted by code point; words in
    stream mode by the pieces of text between white space (no token holds white space), each
    distinct piece then cut by :func:`rnnkit.text.tokenize` once; words in lines mode line by
    line (the longest line's tokens are counted too).
    """
    digest = hashlib.sha256()
    chars = np.zeros(_CODE_POINTS, dtype=np.int64)
    pieces: Counter[str] = Counter()
    words: Counter[str] = Counter()
    blank, tokens, lines, longest, last = True, 0, 0, 0, ""
    for segment in _segments(read_chunks(path, encoding, errors, digest), mode):
        blank, last = blank and segment.isspace(), segment[-1]
        if mode == "lines":
            kept = split_lines(segment)
            lines += len(kept)
            if level == "word":
                for line in kept:
                    found = tokenize(line, "word")
                    words.update(found)
                    tokens, longest = tokens + len(found), max(longest, len(found))
                continue
            text = "".join(kept)
            longest = max(longest, max(map(len, kept), default=0))
        elif level == "word":
            pieces.update(segment.split())
            tokens += segment.count("\n")  # the <eos> of each line
            continue
        else:
            text = segment
        chars += np.bincount(_code_points(text), minlength=_CODE_POINTS)
        tokens += len(text)
    words.update({chr(c): int(chars[c]) for c in np.flatnonzero(chars)})
    for piece, count in pieces.items():
        found = tokenize(piece, "word")
        tokens += count * len(found)
        for token in found:
            words[token] += count
    if mode == "stream" and level == "word" and last not in ("", "\n"):
        tokens += 1  # the <eos> of a last line without a line break
    vocab = Vocabulary.from_counts(words, level, min_count)
    return Scan(vocab, digest.hexdigest(), blank, tokens, lines, longest)


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


def file_names(name: str = "corpus") -> tuple[str, str, str]:
    """The files of an encoded corpus: ids, line offsets (lines mode), description."""
    return f"{name}.ids", f"{name}.lines", f"{name}.json"


def _dtype(vocab_size: int) -> np.dtype:
    for dtype in map(np.dtype, DTYPES):
        if vocab_size <= np.iinfo(dtype).max + 1:
            return dtype
    raise ValueError(f"a vocabulary of {vocab_size} tokens is too large to encode")


def _map(path: Path, dtype: np.dtype, length: int) -> np.ndarray:
    if length == 0:  # an empty file cannot be mapped
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(length,))


def _files(folder: Path, name: str, info: dict) -> list[tuple[Path, np.dtype, int, str]]:
    """``(path, dtype, length, digest key)`` of each file ``info`` describes."""
    ids_name, lines_name, _ = file_names(name)
    if info["dtype"] not in DTYPES:
        raise ValueError(f"dtype {info['dtype']!r} is none of {', '.join(DTYPES)}")
    files = [(folder / ids_name, np.dtype(info["dtype"]), int(info["tokens"]), "ids_sha256")]
    if info["mode"] == "lines":
        offsets = int(info["lines"]) + 1
        files.append((folder / lines_name, np.dtype(np.int64), offsets, "lines_sha256"))
    return files


def open_corpus(folder: str | Path, name: str = "corpus") -> Corpus:
    """The corpus encoded in ``folder`` under ``name`` (by :func:`encode`), mapped read-only.

    Raises:
        ValueError: the files are missing, or their sizes disagree with ``NAME.json``.
    """
    folder = Path(folder)
    try:
        info = json.loads((folder / file_names(name)[2]).read_text(encoding="utf-8"))
        if not isinstance(info, dict):
            raise ValueError("its description is not a JSON object")
        files = _files(folder, name, info)
        for path, dtype, length, _ in files:
            if path.stat().st_size != dtype.itemsize * length:
                raise ValueError(f"{path.name} has {path.stat().st_size} bytes")
    except (OSError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"no whole encoded corpus {name!r} in {folder} ({e})") from None
    maps = [_map(path, dtype, length) for path, dtype, length, _ in files]
    return Corpus(maps[0], maps[1] if len(maps) > 1 else None, info)


def _intact(folder: Path, name: str, info: dict) -> bool:
    """Whether the files of an encoded corpus still have the digests written with them."""
    return all(file_digest(path) == info.get(key) for path, _, _, key in _files(folder, name, info))


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
            raise unseen_characters(str(self.path), list(unknown))
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


class _Writer:
    """One file of an encoded corpus, written atomically, with the SHA-256 of its bytes."""

    def __init__(self, files: ExitStack, path: Path, dtype: np.dtype):
        self.file, self.dtype = files.enter_context(atomic_file(path)), dtype
        self.digest = hashlib.sha256()

    def write(self, values) -> None:
        data = np.asarray(values).astype(self.dtype).tobytes()
        self.file.write(data)
        self.digest.update(data)


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
    use the encoding already there if it describes this file, vocabulary and mode and its
    files are intact.

    Args:
        path: the text.
        vocab: its vocabulary; at char level a character outside it is an error.
        mode: ``"stream"`` or ``"lines"``.
        folder, name: where the files go (:func:`file_names`).
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
        described = {**expected, "sha256": sha256}.items() <= found.info.items()
        if sha256 is not None and described and _intact(folder, name, found.info):
            return found
    except ValueError:
        pass
    ids_name, lines_name, json_name = file_names(name)
    (folder / json_name).unlink(missing_ok=True)  # it would describe the old files
    encoder, digest, dtype = _Encoder(vocab, mode, path), hashlib.sha256(), _dtype(len(vocab))
    tokens, lines, chars, last, blank = len(prefix), 0, 0, "", True
    with ExitStack() as files:
        ids_file = _Writer(files, folder / ids_name, dtype)
        ids_file.write(prefix)
        if mode == "lines":
            lines_file = _Writer(files, folder / lines_name, np.dtype(np.int64))
            lines_file.write([tokens])  # offsets[0]
        for segment in _segments(read_chunks(path, encoding, errors, digest), mode):
            ids, lengths, n_chars = encoder.segment(segment)
            ids_file.write(ids)
            if lengths is not None:
                lines_file.write(tokens + np.cumsum(lengths))  # where each line ends
                lines += len(lengths)
            tokens, chars, last = tokens + len(ids), chars + n_chars, segment[-1]
            blank = blank and segment.isspace()
        if mode == "stream" and vocab.level == "word" and last not in ("", "\n"):
            ids_file.write([vocab.eos_id])  # the last line's end
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
        "ids_sha256": ids_file.digest.hexdigest(),
    }
    if mode == "lines":
        info["lines_sha256"] = lines_file.digest.hexdigest()
    atomic_write_text(folder / json_name, json.dumps(info, indent=1))
    return open_corpus(folder, name)
