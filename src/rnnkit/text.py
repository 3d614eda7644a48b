"""Text in and out: reading files strictly, character and word vocabularies.

A :class:`Vocabulary` maps tokens to ids: the special tokens first (``<eos>`` ends a sequence,
as in the notes; ``<unk>`` stands for rare or unseen words), then the others in sorted order,
so the same text always gives the same ids.
"""

from __future__ import annotations

import codecs
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

EOS, UNK = "<eos>", "<unk>"
LEVELS = ("char", "word")
_WORD = re.compile(r"\w+(?:'\w+)*|[^\w\s]")  # words (with inner apostrophes) or punctuation


class TextError(ValueError):
    """A text file cannot be used; the message says where and what to do."""


def check_encoding(encoding: str) -> None:
    """Raise :class:`TextError` for an encoding Python does not know (before reading: a bad
    name is an error even for clean bytes)."""
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise TextError(f"unknown encoding {encoding!r}; try utf-8 or latin-1") from None


def unreadable(path: Path, error: OSError) -> TextError:
    """The error for a text file that cannot be opened or read."""
    if isinstance(error, FileNotFoundError):
        return TextError(f"{path}: no such file")
    if isinstance(error, IsADirectoryError):
        return TextError(f"{path} is a folder, not a text file")
    return TextError(f"{path}: cannot read ({error.strerror})")


def undecodable(path: Path, offset: int, byte: int, encoding: str) -> TextError:
    """The error for byte ``offset`` of ``path`` (value ``byte``), invalid in ``encoding``."""
    return TextError(
        f"{path}: byte {offset} (0x{byte:02x}) is not valid {encoding}; give the file's "
        f"encoding with --encoding (for example latin-1) or replace bad bytes with "
        f"--errors replace"
    )


def read_text(path: str | Path, encoding: str = "utf-8", errors: str = "strict") -> str:
    """Read a whole text file. Undecodable bytes raise :class:`TextError` naming the byte
    offset, unless ``errors="replace"``."""
    path = Path(path)
    check_encoding(encoding)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise unreadable(path, e) from None
    try:
        return data.decode(encoding, errors=errors)
    except UnicodeDecodeError as e:
        raise undecodable(path, e.start, data[e.start], e.encoding) from None


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
    """Tokens <-> ids for one level (``"char"`` or ``"word"``)."""

    def __init__(self, tokens: Sequence[str], level: str):
        if level not in LEVELS:
            raise ValueError(f"level must be 'char' or 'word', got {level!r}")
        self.level = level
        self.tokens = list(tokens)
        self.ids = {t: i for i, t in enumerate(self.tokens)}
        if len(self.ids) != len(self.tokens):
            raise ValueError("vocabulary tokens must be distinct")
        if EOS not in self.ids:
            raise ValueError(f"a vocabulary needs the {EOS} token")
        self.eos_id = self.ids[EOS]
        self.unk_id = self.ids.get(UNK)

    @classmethod
    def build(cls, texts: Iterable[str], level: str, min_count: int = 1) -> Vocabulary:
        """From texts: every character, or every word seen ``min_count`` times or more (rarer
        words will read as ``<unk>``)."""
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(tokenize(text, level))
        return cls.from_counts(counts, level, min_count)

    @classmethod
    def from_counts(cls, counts: Mapping[str, int], level: str, min_count: int = 1) -> Vocabulary:
        """From how often each token occurs: the special tokens, then every token seen
        ``min_count`` times or more, sorted."""
        specials = [EOS] if level == "char" else [EOS, UNK]
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

    def encode(self, text: str) -> list[int]:
        """Ids of ``text``; unknown words become ``<unk>``; unknown characters raise."""
        out = []
        for tok in tokenize(text, self.level):
            if tok in self.ids:
                out.append(self.ids[tok])
            elif self.unk_id is not None:
                out.append(self.unk_id)
            else:
                raise ValueError(f"characters not in the vocabulary: {self.unknown(text)}")
        return out

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
                if t == EOS:
                    lines.append([])
                else:
                    lines[-1].append(t)
            return "\n".join(" ".join(words) for words in lines)
        return "".join(t for t in tokens if t != EOS)

    def to_json(self) -> dict:
        """JSON-friendly form, stored in checkpoints."""
        return {"level": self.level, "tokens": self.tokens}

    @classmethod
    def from_json(cls, data: dict) -> Vocabulary:
        """Inverse of :meth:`to_json`."""
        return cls(data["tokens"], data["level"])


def split_lines(text: str) -> list[str]:
    """Non-empty lines, without their line breaks or surrounding spaces."""
    return [line.strip() for line in text.splitlines() if line.strip()]
