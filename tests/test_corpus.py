"""Corpora streamed from disk: the streaming pass builds the vocabulary the whole text would,
the encoding holds the ids the whole text would, read back through a memory map. "The whole
text" is what :func:`rnnkit.text.read_text` reads: the stream applies its rules (a byte-order
mark dropped, line breaks read as ``\n``) and its messages."""

from __future__ import annotations

import hashlib
import itertools
import os

import numpy as np
import pytest

from rnnkit import corpus
from rnnkit.data import StreamBatches
from rnnkit.text import TextError, Vocabulary, read_text, split_lines

# Line breaks of every kind (\r\n, \r, \u2028, \v), edge spaces, blank lines, multi-byte
# characters, words with apostrophes, a last line without a break, a byte-order mark.
TEXTS = [
    "\ufeffwith a byte-order mark\r\nand more\r\n",
    "\r\n\r\r\n\n",
    "héllo wörld\nthe cat's hat.\r\n\n  spaced line  \nlast",
    "a b\nc\n",
    "x\n\n\n",
    "one two  three\tfour\u2028five\x0bsix\r\rseven\n",
    "日本語のテキスト\nとても 長い 行\n" * 3,
    "  \n a",
    "word",
]
LEVELS_MODES = list(itertools.product(("char", "word"), ("stream", "lines")))


@pytest.fixture(params=[1, 3, 7, 1 << 20], ids=["chunk1", "chunk3", "chunk7", "chunk1M"])
def chunk(request, monkeypatch):
    """Read a few bytes at a time too: every character, line and word split across reads."""
    monkeypatch.setattr(corpus, "CHUNK", request.param)
    return request.param


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("level,mode", LEVELS_MODES)
def test_scan_and_encode_equal_the_whole_text(tmp_path, chunk, text, level, mode):
    path = tmp_path / "t.txt"
    path.write_bytes(text.encode("utf-8"))
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    text = read_text(path)  # as the whole file is read: no BOM, no \r
    whole = Vocabulary.build(split_lines(text) if mode == "lines" else [text], level)
    scanned = corpus.scan(path, level, mode)
    assert scanned.vocabulary == whole
    assert scanned.sha256 == sha256
    encoded = corpus.encode(path, whole, mode, tmp_path)
    if mode == "stream":
        assert encoded.ids.tolist() == whole.encode_stream(text)
        assert encoded.info["characters"] == len(text)
    else:
        assert [line.tolist() for line in encoded.lines()] == [
            whole.encode(line) for line in split_lines(text)
        ]
        assert encoded.info["characters"] == sum(len(x) + 1 for x in split_lines(text))
    assert (scanned.tokens, scanned.lines) == (encoded.info["tokens"], encoded.info["lines"])
    if mode == "lines":  # the longest line, in tokens
        assert scanned.longest == max([0, *(len(whole.encode(x)) for x in split_lines(text))])
    if encoded.info["tokens"]:
        assert isinstance(encoded.ids, np.memmap) and encoded.ids.dtype == np.uint8


def test_min_count_and_unknown_words(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("the cat and the dog and the bird\n")
    vocab = corpus.scan(path, "word", "stream", min_count=2).vocabulary
    assert vocab.tokens == ["<eos>", "<unk>", "and", "the"]
    encoded = corpus.encode(path, vocab, "stream", tmp_path)
    assert encoded.ids.tolist() == vocab.encode_stream(path.read_text())


@pytest.mark.parametrize(
    "data",
    [
        b"abc\xffdef",
        b"ab\xc3(xyz",
        "h\u00e9llo".encode() * 3 + b"\xe2\x82",
        b"\xe9t",
        b"\xef\xbb\xbfabc\r\n\xffd",  # after a byte-order mark: offsets count it
        b"\xef\xbb\xbf\xff",
    ],
)
def test_a_bad_byte_is_named_by_its_offset_in_the_file(tmp_path, chunk, data):
    path = tmp_path / "bad.txt"
    path.write_bytes(data)
    with pytest.raises(TextError) as whole:
        read_text(path)
    with pytest.raises(TextError) as streamed:
        corpus.scan(path, "char", "stream")
    assert str(streamed.value) == str(whole.value)
    assert "--errors replace" in str(streamed.value)
    assert f"byte {data.find(bytes([255]))}" in str(whole.value) or b"\xff" not in data
    replaced = corpus.scan(path, "char", "stream", errors="replace").vocabulary
    assert replaced == Vocabulary.build([read_text(path, errors="replace")], "char")


def test_missing_file_a_folder_a_fifo_and_an_unknown_encoding(tmp_path):
    with pytest.raises(TextError, match="no such file"):
        corpus.scan(tmp_path / "nope.txt", "char", "stream")
    with pytest.raises(TextError, match="is a folder, not a regular file"):
        corpus.scan(tmp_path, "char", "stream")
    os.mkfifo(tmp_path / "pipe")  # refused before a byte is read: nothing blocks
    with pytest.raises(TextError, match=r"pipe is a FIFO \(named pipe\), not a regular file"):
        corpus.scan(tmp_path / "pipe", "char", "stream")
    with pytest.raises(TextError, match="character device"):
        corpus.file_digest("/dev/zero")
    (tmp_path / "t.txt").write_text("abc")
    with pytest.raises(TextError, match="unknown encoding 'klingon'"):
        corpus.scan(tmp_path / "t.txt", "char", "stream", encoding="klingon")


def test_characters_outside_the_vocabulary_are_listed(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("abcxyzx")
    vocab = Vocabulary.build(["abc"], "char")
    with pytest.raises(TextError, match=r"t.txt has characters the model never saw: 'x', 'y', 'z'"):
        corpus.encode(path, vocab, "stream", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.txt"]  # nothing half-written


def test_an_encoding_is_used_again_only_for_the_same_file_and_vocabulary(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("some text\nand more\n" * 50)
    scanned = corpus.scan(path, "char", "lines")
    first = corpus.encode(path, scanned.vocabulary, "lines", tmp_path, sha256=scanned.sha256)
    stamp = (tmp_path / "corpus.ids").stat().st_mtime_ns
    again = corpus.encode(path, scanned.vocabulary, "lines", tmp_path, sha256=scanned.sha256)
    assert (tmp_path / "corpus.ids").stat().st_mtime_ns == stamp  # not written again
    assert again.info == first.info
    word = corpus.scan(path, "word", "lines").vocabulary  # another vocabulary: encoded anew
    other = corpus.encode(path, word, "lines", tmp_path, sha256=scanned.sha256)
    assert other.info["level"] == "word" and other.info["tokens"] == 200
    path.write_text("some text\nmore and\n" * 50)  # changed since it was scanned
    with pytest.raises(TextError, match="changed while it was being read"):
        corpus.encode(path, scanned.vocabulary, "lines", tmp_path, sha256=scanned.sha256)
    with pytest.raises(ValueError, match="no whole encoded corpus"):
        corpus.open_corpus(tmp_path)  # its description went first: no stale one is left


def test_a_cut_description_is_written_again(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("abc" * 100)
    (tmp_path / "corpus.json").write_text("{")  # cut short
    vocab = Vocabulary.build(["abc"], "char")
    encoded = corpus.encode(path, vocab, "stream", tmp_path)
    assert encoded.info["tokens"] == 300
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.ids", "corpus.json", "t.txt"]


@pytest.mark.parametrize("mode", ["stream", "lines"])
def test_an_encoding_whose_files_changed_is_made_again(tmp_path, mode):
    """A flipped byte in the ids (an id past the vocabulary, say) is never trained on."""
    path = tmp_path / "t.txt"
    path.write_text("abc\ncab\n" * 50)
    scanned = corpus.scan(path, "char", mode)
    first = corpus.encode(path, scanned.vocabulary, mode, tmp_path, sha256=scanned.sha256)
    want = first.ids.tolist()
    name = "corpus.ids" if mode == "stream" else "corpus.lines"
    data = bytearray((tmp_path / name).read_bytes())
    data[5] ^= 0x7F
    (tmp_path / name).write_bytes(bytes(data))
    again = corpus.encode(path, scanned.vocabulary, mode, tmp_path, sha256=scanned.sha256)
    assert again.ids.tolist() == want
    assert (tmp_path / name).read_bytes() != bytes(data)


def test_a_damaged_encoding_is_refused(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("abc" * 100)
    corpus.encode(path, Vocabulary.build(["abc"], "char"), "stream", tmp_path)
    with (tmp_path / "corpus.ids").open("ab") as f:
        f.write(b"\0")
    with pytest.raises(ValueError, match="corpus.ids has 301 bytes"):
        corpus.open_corpus(tmp_path)


def test_ids_take_the_smallest_type_that_holds_the_vocabulary(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text(" ".join(f"w{i}" for i in range(300)))
    vocab = corpus.scan(path, "word", "stream").vocabulary
    encoded = corpus.encode(path, vocab, "stream", tmp_path)
    assert len(vocab) == 302 and encoded.ids.dtype == np.uint16
    assert encoded.ids.tolist() == vocab.encode_stream(path.read_text())


def test_a_prefix_comes_first(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("abcab")
    vocab = Vocabulary.build(["abc"], "char")
    encoded = corpus.encode(path, vocab, "stream", tmp_path, prefix=[0])
    assert encoded.ids.tolist() == [0, *vocab.encode("abcab")]


def test_lines_in_any_order_and_their_lengths(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("ab\nc\ndef\n")
    vocab = Vocabulary.build(split_lines(path.read_text()), "char")
    lines = corpus.encode(path, vocab, "lines", tmp_path).lines(np.array([2, 0]))
    assert len(lines) == 2 and lines[0].tolist() == vocab.encode("def")
    assert lines.lengths().tolist() == [3, 2]
    assert [x.tolist() for x in lines[1:]] == [vocab.encode("ab")]
    assert lines[0].dtype == np.int64


def test_stream_batches_read_the_map_without_copying_it(tmp_path):
    text = "the quick brown fox jumps over the lazy dog\n" * 40
    path = tmp_path / "t.txt"
    path.write_text(text)
    vocab = Vocabulary.build([text], "char")
    encoded = corpus.encode(path, vocab, "stream", tmp_path)
    mapped, in_memory = StreamBatches(encoded.ids, 4, 7), StreamBatches(vocab.encode(text), 4, 7)
    assert mapped.ids is encoded.ids  # read where it lies
    for _ in range(mapped.chunks_per_epoch + 2):  # past the end of an epoch too
        for a, b in zip(mapped.next(), in_memory.next()):
            np.testing.assert_array_equal(a, b)
    for (x1, y1), (x2, y2) in zip(mapped.all_chunks(), in_memory.all_chunks()):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
