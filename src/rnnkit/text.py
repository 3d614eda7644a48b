"""Text in and out: reading files strictly, and the one vocabulary class.

A :class:`Vocabulary` maps tokens to ids: the special tokens first (``<pad>`` fills a batch
past a sequence's end, ``<eos>`` ends a sequence, as in the notes; ``<unk>`` stands for rare or
unseen words), then the others in sorted order, so the same text always gives the same ids.
"""

from __future__ import annotations

import codecs
import io
import itertools
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from .files import NotARegularFile, open_regular_file, read_regular_file
from .memory import NotEnoughMemory

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
LEVELS = ("char", "word")
_WORD = re.compile(r"\w+(?:'\w+)*|[^\w\s]")  # words (with inner apostrophes) or punctuation


class TextError(ValueError):
    """A text file cannot be used; the message says where and what to do."""


def check_codec(encoding: str, errors: str = "strict") -> None:
    """Raise :class:`TextError` unless ``encoding`` is a text encoding and ``errors`` an error
    handler (checked before reading: a bad name is an error even for clean bytes)."""
    try:
        codec = codecs.lookup(encoding)
    except (LookupError, ValueError, TypeError):  # (a name with a NUL byte: ValueError)
        raise TextError(f"unknown encoding {encoding!r}; try utf-8 or latin-1") from None
    # base64, rot13, zlib, ...: codecs, but not from bytes to text (the flag bytes.decode reads)
    if not getattr(codec, "_is_text_encoding", True):
        raise TextError(
            f"{encoding!r} is not a text encoding (it does not turn bytes into text); "
            f"try utf-8 or latin-1"
        )
    try:
        codecs.lookup_error(errors)
    except (LookupError, ValueError, TypeError):
        raise TextError(f"unknown error handler {errors!r}; use strict or replace") from None


def decode_pieces(
    pieces: Iterable[bytes], name: str, encoding: str = "utf-8", errors: str = "strict"
) -> Iterator[str]:
    """Bytes read piece by piece (a file in chunks) to text, piece by piece: a UTF-8
    byte-order mark is dropped, line breaks ``\\r\\n`` and ``\\r`` become ``\\n`` (as Python's
    text files read them), and an undecodable byte raises :class:`TextError` naming its
    offset in the file ``name``, unless ``errors="replace"``. A character or a ``\\r\\n``
    split between two pieces is decoded whole."""
    check_codec(encoding, errors)
    inner = codecs.getincrementaldecoder(encoding)(errors)
    decoder = io.IncrementalNewlineDecoder(inner, translate=True)
    bom = codecs.BOM_UTF8 if codecs.lookup(encoding).name == "utf-8" else b""
    offset, head = 0, b""  # bytes of the file decoded so far; the first few, held back
    for piece in itertools.chain(pieces, [None]):
        final = piece is None
        data = head + (piece or b"")
        if bom and not final and len(data) < len(bom) and bom.startswith(data):
            head = data  # not yet enough bytes to tell a byte-order mark
            continue
        if bom and data.startswith(bom):
            data, offset = data[len(bom) :], len(bom)
        bom, head = b"", b""
        begun = len(inner.getstate()[0])  # bytes of a character the last piece began
        try:
            text = decoder.decode(data, final=final)
        except UnicodeDecodeError as e:
            at = offset - begun + e.start
            raise TextError(
                f"{name}: byte {at} (0x{e.object[e.start]:02x}) is not valid {e.encoding}; "
                f"give the file's encoding with --encoding (for example latin-1) or replace "
                f"bad bytes with --errors replace"
            ) from None
        offset += len(data)
        if text:
            yield text


def decode_text(data: bytes, name: str, encoding: str = "utf-8", errors: str = "strict") -> str:
    """Bytes to text, by the rules of :func:`decode_pieces`."""
    return "".join(decode_pieces([data], name, encoding, errors))


def _unreadable(path: str | Path, error: Exception) -> TextError:
    """The one message for a text file that cannot be read, whole or in pieces."""
    if isinstance(error, FileNotFoundError):
        return TextError(f"{path}: no such file")
    if isinstance(error, NotARegularFile):
        return TextError(f"{error.strerror}; give a text file")
    if isinstance(error, NotEnoughMemory):
        return TextError(str(error))
    return TextError(f"{path}: cannot read ({error.strerror})")


def read_bytes(path: str | Path) -> bytes:
    """The bytes of a text file to read; :class:`TextError` for a missing file, a folder, a
    FIFO or a device (refused before reading), or one larger than the memory available."""
    try:
        return read_regular_file(path, "text file")
    except (OSError, NotEnoughMemory) as e:
        raise _unreadable(path, e) from None


def read_pieces(path: str | Path, size: int) -> Iterator[bytes]:
    """The bytes of a text file of any size, ``size`` at a time; :class:`TextError` as
    :func:`read_bytes` (but no file is too large: nothing holds it whole)."""
    try:
        with open_regular_file(path, "text file") as f:
            while piece := f.read(size):
                yield piece
    except OSError as e:
        raise _unreadable(path, e) from None


def read_text(path: str | Path, encoding: str = "utf-8", errors: str = "strict") -> str:
    """Read a whole text file (see :func:`read_bytes` and :func:`decode_pieces`)."""
    check_codec(encoding, errors)
    return decode_text(read_bytes(path), str(path), encoding, errors)


def unseen_characters(what: str, unknown: Sequence[str]) -> TextError:
    """The error for characters of ``what`` (a file, a flag) a model never saw."""
    shown = ", ".join(repr(u) for u in unknown[:20])
    return TextError(f"{what} has characters the model never saw: {shown}")


def tokenize(text: str, level: str) -> list[str]:
    """Characters, or words and punctuation marks."""
    if level == "char":
        return list(text)
    if level == "word":
        return _WORD.findall(text)
    raise ValueError(f"level must be 'char' or 'word', got {level!r}")


def detokenize(tokens: Sequence[str], level: str) -> str:
    """Join tokens back into text (words with single spaces)."""
    return "".join(tokens) if level == "char" else " ".join(tokens)


class Vocabulary:
    """Tokens <-> ids for one level (``"char"`` or ``"word"``).

    ``tokens`` are listed in id order, the special ones first; ``pad_id``, ``eos_id`` and
    ``unk_id`` are the ids of ``<pad>``, ``<eos>`` and ``<unk>``, or None for one that is not
    there (a language model's vocabulary holds ``<eos>``; a tagger's may hold ``<pad>`` only).
    """

    def __init__(self, tokens: Sequence[str], level: str):
        if level not in LEVELS:
            raise ValueError(f"level must be 'char' or 'word', got {level!r}")
        self.level = level
        self.tokens = list(tokens)
        self.ids = {t: i for i, t in enumerate(self.tokens)}
        if len(self.ids) != len(self.tokens):
            raise ValueError("vocabulary tokens must be distinct")
        self.pad_id = self.ids.get(PAD)
        self.eos_id = self.ids.get(EOS)
        self.unk_id = self.ids.get(UNK)

    @classmethod
    def build(
        cls,
        texts: Iterable[str | Sequence[str]],
        level: str,
        min_count: int = 1,
        *,
        pad: bool = False,
        specials: Sequence[str] | None = None,
    ) -> Vocabulary:
        """From texts: every character, or every word seen ``min_count`` times or more (rarer
        words will read as ``<unk>``).

        Args:
            texts: strings, split with :func:`tokenize` at ``level``, or lists of tokens
                already split (notes, words of a tagged sentence), taken as they are.
            pad: put ``<pad>`` first, at id 0.
            specials: the special tokens after ``<pad>`` (default ``<eos>``, and ``<unk>`` at
                word level), in this order.
        """
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(tokenize(text, level) if isinstance(text, str) else text)
        return cls.from_counts(counts, level, min_count, pad=pad, specials=specials)

    @classmethod
    def from_counts(
        cls,
        counts: Mapping[str, int],
        level: str,
        min_count: int = 1,
        *,
        pad: bool = False,
        specials: Sequence[str] | None = None,
    ) -> Vocabulary:
        """From how often each token occurs (a streaming pass counts them): the special
        tokens, then every token seen ``min_count`` times or more, sorted; ``pad`` and
        ``specials`` as in :meth:`build`."""
        if specials is None:
            specials = [EOS] if level == "char" else [EOS, UNK]
        specials = [PAD, *specials] if pad else list(specials)
        kept = sorted(t for t, c in counts.items() if c >= min_count and t not in specials)
        return cls(specials + kept, level)

    def __len__(self) -> int:
        return len(self.tokens)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Vocabulary)
            and self.level == other.level
            and self.tokens == other.tokens
        )

    def unknown(self, text: str) -> list[str]:
        """Tokens of ``text`` outside the vocabulary, each once, in order of appearance."""
        seen = [t for t in tokenize(text, self.level) if t not in self.ids]
        return list(dict.fromkeys(seen))

    def lookup(
        self, tokens: Iterable[str], unknown: Callable[[str], str] | None = None
    ) -> list[int]:
        """Ids of tokens already split. A token outside the vocabulary becomes
        ``unknown(token)`` when that is given (an unknown-word token of its shape, say), else
        ``<unk>``; without either it raises."""
        out = []
        for tok in tokens:
            i = self.ids.get(tok)
            if i is None:
                i = self.ids[unknown(tok)] if unknown is not None else self.unk_id
            if i is None:
                raise ValueError(f"tokens not in the vocabulary: {tok!r}")
            out.append(i)
        return out

    def encode(self, text: str) -> list[int]:
        """Ids of ``text``; unknown words become ``<unk>``; unknown characters raise."""
        try:
            return self.lookup(tokenize(text, self.level))
        except ValueError:
            raise ValueError(f"characters not in the vocabulary: {self.unknown(text)}") from None

    def encode_stream(self, text: str) -> list[int]:
        """A whole text as one stream; at word level each line ends with ``<eos>``."""
        if self.level == "char":
            return self.encode(text)
        out = []
        for line in text.split("\n"):
            out.extend(self.encode(line))
            out.append(self.eos_id)
        return out[:-1] if text.endswith("\n") or not text else out

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; at word level ``<eos>`` reads as a line break."""
        tokens = [self.tokens[i] for i in ids]
        if self.level == "word":
            lines: list[list[str]] = [[]]
            for t in tokens:
                if t == PAD:
                    continue
                if t == EOS:
                    lines.append([])
                else:
                    lines[-1].append(t)
            return "\n".join(" ".join(words) for words in lines)
        return "".join(t for t in tokens if t not in (EOS, PAD))

    def to_json(self) -> dict:
        """JSON-friendly form, stored in checkpoints."""
        return {"level": self.level, "tokens": self.tokens}

    @classmethod
    def from_json(cls, data: object) -> Vocabulary:
        """Inverse of :meth:`to_json` for a language model's vocabulary; ValueError for
        anything it would not have written (tokens that are not distinct strings, a
        character-level token longer than one character, a missing ``<eos>``)."""
        if not (isinstance(data, dict) and set(data) == {"level", "tokens"}):
            raise ValueError('a vocabulary is {"level": ..., "tokens": [...]}')
        level, tokens = data["level"], data["tokens"]
        if level not in LEVELS:
            raise ValueError(f"vocabulary level must be 'char' or 'word', got {level!r}")
        if not isinstance(tokens, list) or not all(isinstance(t, str) and t for t in tokens):
            raise ValueError("vocabulary tokens must be a list of non-empty strings")
        if level == "char" and any(len(t) != 1 for t in tokens if t not in (PAD, EOS, UNK)):
            raise ValueError("a character-level vocabulary holds single characters")
        if EOS not in tokens:
            raise ValueError(f"a language model's vocabulary holds {EOS}")
        return cls(tokens, level)


def split_lines(text: str) -> list[str]:
    """Non-empty lines, without their line breaks or surrounding spaces."""
    return [line.strip() for line in text.splitlines() if line.strip()]
