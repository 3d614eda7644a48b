"""Text in and out: vocabularies (char and word), streams with line breaks, strict reading."""

import json

import pytest

from rnnkit.text import (
    EOS,
    PAD,
    UNK,
    TextError,
    Vocabulary,
    decode_pieces,
    decode_text,
    detokenize,
    read_text,
    split_lines,
    tokenize,
)

TEXT = "The cat sat.\nA dog didn't sit, the cat did!\n"


# ---------------------------------------------------------------- tokens


def test_tokenize_char_and_word():
    assert tokenize("ab c\n", "char") == ["a", "b", " ", "c", "\n"]
    words = ["A", "dog", "didn't", "sit", ",", "ok", "!"]
    assert tokenize("A dog didn't sit, ok!", "word") == words
    assert tokenize("  \n\t", "word") == []
    with pytest.raises(ValueError, match="level"):
        tokenize("x", "byte")


def test_detokenize():
    assert detokenize(["a", "b", " "], "char") == "ab "
    assert detokenize(["a", "dog", "."], "word") == "a dog ."


# ---------------------------------------------------------------- building


def test_char_vocabulary_is_eos_then_sorted_characters():
    v = Vocabulary.build([TEXT], "char")
    assert v.tokens[0] == EOS and v.eos_id == 0
    assert v.unk_id is None and UNK not in v.tokens
    assert v.tokens[1:] == sorted(set(TEXT))
    assert "\n" in v.ids  # a stream keeps its line breaks
    assert len(v) == len(set(TEXT)) + 1


def test_word_vocabulary_is_eos_unk_then_sorted_words():
    v = Vocabulary.build([TEXT], "word")
    assert v.tokens[:2] == [EOS, UNK]
    assert (v.eos_id, v.unk_id) == (0, 1)
    words = set(tokenize(TEXT, "word"))
    assert v.tokens[2:] == sorted(words)
    assert "\n" not in v.ids


def test_build_does_not_depend_on_the_order_of_the_texts():
    lines = TEXT.splitlines()
    for level in ("char", "word"):
        assert Vocabulary.build(lines, level) == Vocabulary.build(lines[::-1], level)
        assert Vocabulary.build(lines, level).tokens == Vocabulary.build(lines[::-1], level).tokens


def test_min_count_sends_rare_words_to_unk():
    v = Vocabulary.build(["the cat the dog the cat zebra"], "word", min_count=2)
    assert v.tokens == [EOS, UNK, "cat", "the"]
    assert v.encode("the zebra cat dog") == [3, v.unk_id, 2, v.unk_id]
    assert v.unknown("the zebra cat dog zebra") == ["zebra", "dog"]


def test_min_count_also_applies_to_characters():
    v = Vocabulary.build(["aab"], "char", min_count=2)
    assert v.tokens == [EOS, "a"]


def test_special_tokens_in_the_text_are_not_duplicated():
    v = Vocabulary.build(["a <unk> b"], "word")
    assert v.tokens.count(UNK) == 1 and v.tokens.count(EOS) == 1


def test_constructor_checks():
    with pytest.raises(ValueError, match="level"):
        Vocabulary([EOS, "a"], "byte")
    with pytest.raises(ValueError, match="distinct"):
        Vocabulary([EOS, "a", "a"], "char")
    plain = Vocabulary(["a", "b"], "char")  # no special token: a tagger's labels, say
    assert (plain.pad_id, plain.eos_id, plain.unk_id) == (None, None, None)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        plain.lookup(["c"])


def test_pad_token_and_given_specials():
    v = Vocabulary.build(["b a", "c a"], "word", pad=True)
    assert v.tokens == [PAD, EOS, UNK, "a", "b", "c"] and v.pad_id == 0
    assert v.decode([0, 4, 3, 0]) == "b a"  # padding is not text
    chars = Vocabulary.build(["ab", "bc"], "char", pad=True, specials=[UNK])
    assert chars.tokens == [PAD, UNK, "a", "b", "c"] and chars.eos_id is None
    assert chars.lookup("abz") == [2, 3, 1]
    lists = Vocabulary.build([["67:1", "rest:1"], ["67:1"]], "word", specials=[EOS, UNK])
    assert lists.tokens == [EOS, UNK, "67:1", "rest:1"]  # token lists are taken as they are


def test_lookup_maps_unknown_tokens_by_a_rule():
    v = Vocabulary([PAD, "<unk:Xx>", "<unk:x>", "met"], "word")
    shape = {True: "<unk:Xx>", False: "<unk:x>"}
    assert v.lookup(["Anna", "met", "bob"], lambda w: shape[w[0].isupper()]) == [1, 3, 2]


def test_equality():
    a = Vocabulary.build([TEXT], "char")
    assert a == Vocabulary.build([TEXT], "char")
    assert a != Vocabulary.build([TEXT + "Z"], "char")
    assert Vocabulary([EOS, "a"], "char") != Vocabulary([EOS, "a"], "word")
    assert a != a.tokens


# ---------------------------------------------------------------- encode / decode


@pytest.mark.parametrize(
    "text", [TEXT, "", "naïve café — ünïcode ✓\n\nline\n", "tab\tand  two spaces"]
)
def test_char_round_trip(text):
    v = Vocabulary.build([text], "char")
    ids = v.encode(text)
    assert len(ids) == len(text)
    assert v.decode(ids) == text
    assert v.encode_stream(text) == ids  # char level: the stream is the text as it is


def test_char_decode_drops_eos():
    v = Vocabulary.build(["ab"], "char")
    assert v.decode([v.eos_id, v.ids["a"], v.eos_id, v.ids["b"]]) == "ab"


def test_unknown_characters_raise_and_are_listed_once_in_order():
    v = Vocabulary.build(["abc"], "char")
    assert v.unknown("axbyx") == ["x", "y"]
    assert v.unknown("abc") == []
    with pytest.raises(ValueError, match="'x'"):
        v.encode("ax")


def test_word_round_trip():
    v = Vocabulary.build([TEXT], "word")
    ids = v.encode("the cat did !")
    assert v.decode(ids) == "the cat did !"
    assert v.encode(v.decode(ids)) == ids
    # decode spaces tokens out; encoding that text gives the same ids back
    for line in TEXT.splitlines():
        ids = v.encode(line)
        assert v.encode(v.decode(ids)) == ids
        assert v.decode(ids) == " ".join(tokenize(line, "word"))


def test_word_encode_stream_marks_line_breaks_with_eos():
    v = Vocabulary.build([TEXT], "word")
    e = v.eos_id
    cat, sat, the = v.ids["cat"], v.ids["sat"], v.ids["the"]
    # every line ends with <eos>, the last one too, with or without its line break
    assert v.encode_stream("the cat\nsat\n") == [the, cat, e, sat, e]
    assert v.encode_stream("the cat\nsat") == [the, cat, e, sat, e]
    assert v.encode_stream("the\n\ncat\n") == [the, e, e, cat, e]  # a blank line is empty
    assert v.encode_stream("") == []
    assert v.encode_stream("\n") == [e]


def test_word_decode_reads_eos_as_a_line_break():
    v = Vocabulary.build([TEXT], "word")
    e, cat, the = v.eos_id, v.ids["cat"], v.ids["the"]
    assert v.decode([the, cat, e, cat]) == "the cat\ncat"
    assert v.decode([e, the]) == "\nthe"
    assert v.decode([the, e]) == "the\n"
    assert v.decode([the, e, e, cat]) == "the\n\ncat"
    assert v.decode([]) == ""
    stream = v.encode_stream(TEXT)
    assert v.decode(stream) == "\n".join(" ".join(tokenize(x, "word")) for x in TEXT.split("\n"))
    assert v.encode_stream(v.decode(stream)) == stream


def test_word_unknown_words_become_unk():
    v = Vocabulary.build([TEXT], "word")
    assert v.encode("the zebra") == [v.ids["the"], v.unk_id]
    assert v.unknown("the zebra sat zebra gnu") == ["zebra", "gnu"]
    assert v.decode(v.encode("the zebra")) == "the <unk>"


# ---------------------------------------------------------------- JSON


@pytest.mark.parametrize("level", ["char", "word"])
def test_json_round_trip(level):
    v = Vocabulary.build([TEXT, "ünï ✓"], level, min_count=1)
    data = json.loads(json.dumps(v.to_json()))
    assert data["level"] == level
    w = Vocabulary.from_json(data)
    assert w == v and w.tokens == v.tokens
    assert (w.eos_id, w.unk_id) == (v.eos_id, v.unk_id)
    assert w.encode_stream(TEXT) == v.encode_stream(TEXT)


# ---------------------------------------------------------------- split_lines


def test_split_lines_strips_and_drops_blank_lines():
    assert split_lines(" a \r\n\n  \nb\tc\rd\n") == ["a", "b\tc", "d"]
    assert split_lines("") == []
    assert split_lines("\n \n") == []


# ---------------------------------------------------------------- read_text


def test_read_text_utf8(tmp_path):
    f = tmp_path / "t.txt"
    f.write_bytes("héllo ✓\n".encode())
    assert read_text(f) == "héllo ✓\n"
    assert read_text(str(f)) == "héllo ✓\n"


@pytest.mark.parametrize(
    ("data", "offset", "byte"),
    [
        (b"abc\xffdef", 3, "0xff"),
        (b"\x80", 0, "0x80"),
        ("h\u00e9llo ".encode() + b"w\xf6rld", 8, "0xf6"),  # offset in bytes, not characters
        (b"abc\xe2\x82", 3, "0xe2"),  # a sequence cut off at the end of the file
    ],
)
def test_read_text_names_the_offset_of_a_bad_byte(tmp_path, data, offset, byte):
    f = tmp_path / "bad.txt"
    f.write_bytes(data)
    with pytest.raises(TextError) as info:
        read_text(f)
    msg = str(info.value)
    assert str(f) in msg
    assert f"byte {offset} ({byte})" in msg
    assert "--encoding" in msg and "--errors replace" in msg
    assert "\n" not in msg


def test_read_text_replace_and_other_encodings(tmp_path):
    f = tmp_path / "latin.txt"
    f.write_bytes("caf\u00e9\n".encode("latin-1"))
    assert read_text(f, errors="replace") == "caf\ufffd\n"
    assert read_text(f, encoding="latin-1") == "caf\u00e9\n"
    assert read_text(f, "cp1252") == "caf\u00e9\n"


def test_read_text_missing_file(tmp_path):
    with pytest.raises(TextError, match="no such file") as info:
        read_text(tmp_path / "nope.txt")
    assert "nope.txt" in str(info.value)


def test_read_text_folder(tmp_path):
    with pytest.raises(TextError, match="is a folder"):
        read_text(tmp_path)


def test_read_text_unknown_encoding(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("plain ascii\n")
    # clean bytes still get the error: the name itself is wrong
    with pytest.raises(TextError, match="unknown encoding 'no-such-codec'"):
        read_text(f, encoding="no-such-codec")
    with pytest.raises(TextError, match="unknown encoding"):
        read_text(tmp_path / "missing.txt", encoding="no-such-codec")


def test_text_error_is_a_value_error():
    assert issubclass(TextError, ValueError)


# ---------------------------------------------------------------- reading as a user expects


def test_a_byte_order_mark_is_dropped_and_line_breaks_become_newlines(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"\xef\xbb\xbfab\r\ncd\ref\n")
    assert read_text(path) == "ab\ncd\nef\n"
    path.write_bytes(b"\xef\xbb\xbfab\xff")  # the offset counts the mark's bytes too
    with pytest.raises(TextError, match=r"byte 5 \(0xff\)"):
        read_text(path)


@pytest.mark.parametrize(
    "data, encoding",
    [
        ("\ufeffh\u00e9\r\n\u65e5\r\rx\r".encode(), "utf-8"),
        (b"\xef\xbb\xbf\xef\xbb\xbfab", "utf-8"),  # a second mark is a character
        (b"\xef\xbbab", "utf-8"),  # the start of a mark only: a bad byte
        (b"ab\r\ncd\xe2\x82", "utf-8"),  # a character cut at the end
        (b"\xef\xbb\xbfab\r\n\xffcd", "utf-8"),
        ("a\r\nb\u00e9".encode("utf-16"), "utf-16"),
        (b"\xef\xbb\xbfcaf\xe9\r\n", "latin-1"),  # no mark to drop in latin-1
    ],
)
def test_pieces_decode_as_the_whole_file_wherever_it_is_cut(data, encoding):
    """A file read in chunks decodes to the text (or the error) of the whole file, however
    the chunks cut a character, a byte-order mark or a \\r\\n."""
    try:
        whole = decode_text(data, "f.txt", encoding)
    except TextError as e:
        whole = str(e)
    for cuts in [(i,) for i in range(len(data) + 1)] + [tuple(range(0, len(data), 1))]:
        bounds = [0, *cuts, len(data)]
        pieces = [data[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        try:
            got = "".join(decode_pieces(pieces, "f.txt", encoding))
        except TextError as e:
            got = str(e)
        assert got == whole, (cuts, got, whole)


@pytest.mark.parametrize("codec", ["base64", "rot13", "zlib", "hex"])
def test_codecs_that_are_not_text_encodings_are_refused_by_name(tmp_path, codec):
    path = tmp_path / "t.txt"
    path.write_bytes(b"")  # even for an empty file
    with pytest.raises(TextError, match=f"'{codec}' is not a text encoding"):
        read_text(path, codec)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"level": "char", "tokens": ["a", "b"]}, "<eos>"),
        ({"level": "char", "tokens": ["<eos>", "a", "a"]}, "distinct"),
        ({"level": "char", "tokens": ["<eos>", "ab"]}, "single characters"),
        ({"level": "char", "tokens": ["<eos>", 3]}, "non-empty strings"),
        ({"level": "byte", "tokens": ["<eos>"]}, "level"),
        ({"level": "word", "tokens": "<eos>"}, "non-empty strings"),
        (["<eos>"], "a vocabulary is"),
    ],
)
def test_a_vocabulary_read_back_must_be_one_that_was_written(data, message):
    with pytest.raises(ValueError, match=message):
        Vocabulary.from_json(data)
