"""Checkpoints: safetensors files with JSON metadata and a checksum, read strictly."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest
import safetensors
import safetensors.numpy

from rnnkit.checkpoint import (
    CHECKSUM_KEY,
    METADATA_KEY,
    CheckpointError,
    load_checkpoint,
    parse_json,
    save_checkpoint,
    tensor_checksum,
)


def _arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """Every stored dtype, with views that are not C-contiguous among them."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((5, 7))
    return {
        "f64": rng.standard_normal((3, 4)),
        "f32": rng.standard_normal((2, 3, 4)).astype(np.float32),
        "i64": rng.integers(-(2**40), 2**40, size=(6,), dtype=np.int64),
        "i32": rng.integers(-1000, 1000, size=(2, 2)).astype(np.int32),
        "u8": rng.integers(0, 256, size=(9,)).astype(np.uint8),
        "bool": rng.random((3, 3)) > 0.5,
        "transposed": base.T,  # (7, 5), F-ordered view: safetensors 0.8 writes these wrongly
        "strided": base[::2, 1::3],  # neither C nor F contiguous
        "fortran32": np.asfortranarray(rng.standard_normal((4, 3)).astype(np.float32)),
        "big_endian": rng.standard_normal(4).astype(">f8"),
        "scalar": np.array(3.25),
        "empty": np.zeros((0, 3), dtype=np.float32),
        "model.layer.weight_ih_l0": rng.standard_normal((8, 2)),  # dotted names, as we use
    }


def _assert_same(got: dict, expected: dict) -> None:
    assert sorted(got) == sorted(expected)
    for name, a in expected.items():
        a = np.asarray(a)
        assert got[name].dtype == a.dtype.newbyteorder("="), name
        assert got[name].shape == a.shape, name
        np.testing.assert_array_equal(got[name], a, err_msg=name)


def test_non_contiguous_inputs_really_are_non_contiguous():
    arrays = _arrays()
    for name in ("transposed", "strided", "fortran32"):
        assert not arrays[name].flags.c_contiguous, name


def test_save_load_round_trip_with_metadata(tmp_path):
    arrays = _arrays(6)
    meta = {
        "config": {"hidden": 64, "lr": 0.001, "cell": "lstm"},
        "vocab": ["<pad>", "<eos>", "é", "日本", "\n"],
        "step": 1234,
        "rng": {"bit_generator": "PCG64", "state": {"state": 2**100 + 7, "inc": 3}},
        "nothing": None,
        "flag": True,
        "best": float("inf"),
    }
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, arrays, meta)
    got, got_meta = load_checkpoint(str(path))  # str or Path
    _assert_same(got, arrays)
    assert got_meta == meta
    assert os.listdir(tmp_path) == ["model.safetensors"]


def test_the_safetensors_package_reads_our_files(tmp_path):
    arrays = _arrays(4)
    path = tmp_path / "ck.safetensors"
    save_checkpoint(path, arrays, {"step": 3})
    _assert_same(safetensors.numpy.load_file(str(path)), arrays)
    with safetensors.safe_open(str(path), framework="numpy") as f:
        header = f.metadata()
    assert json.loads(header[METADATA_KEY]) == {"step": 3}
    assert header[CHECKSUM_KEY] == tensor_checksum(arrays)


def test_save_overwrites_previous_checkpoint(tmp_path):
    path = tmp_path / "ck.safetensors"
    save_checkpoint(path, {"a": np.ones(3)}, {"v": 1})
    new = {"b": np.arange(4.0) * 1.5}
    save_checkpoint(path, new, {"v": 2})
    got, meta = load_checkpoint(path)
    _assert_same(got, new)
    assert meta == {"v": 2}


def test_the_checksum_covers_names_dtypes_shapes_and_bytes():
    a = {"x": np.arange(6, dtype=np.float32), "y": np.ones(6, np.float32)}
    base = tensor_checksum(a)
    assert tensor_checksum(dict(reversed(list(a.items())))) == base  # order does not matter
    assert tensor_checksum({"x": a["y"], "y": a["x"]}) != base  # swapped tensors
    assert tensor_checksum({**a, "x": a["x"].view(np.int32)}) != base  # same bytes, other type
    assert tensor_checksum({**a, "x": a["x"].reshape(2, 3)}) != base
    flipped = a["x"].copy()
    flipped.view(np.uint8)[5] ^= 1
    assert tensor_checksum({**a, "x": flipped}) != base


def test_strict_json_refuses_a_key_given_twice():
    assert parse_json('{"a": 1, "b": {"c": 2}}') == {"a": 1, "b": {"c": 2}}
    with pytest.raises(ValueError, match="duplicate keys 'a'"):
        parse_json('{"a": 1, "a": 2}')
    with pytest.raises(ValueError, match="duplicate keys 'c'"):
        parse_json('{"b": {"c": 1, "c": 1}}')
    with pytest.raises(ValueError, match="nested too deeply"):
        parse_json("[" * 100_000 + "]" * 100_000)


# ---------------------------------------------------------------- what is refused


def _good(tmp_path) -> tuple[dict, dict, bytes]:
    arrays = {"a": np.arange(8, dtype=np.float32), "b": np.ones(8, np.float32) * 2}
    path = tmp_path / "good.safetensors"
    save_checkpoint(path, arrays, {"step": 5})
    return arrays, {"step": 5}, path.read_bytes()


def _header(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _with_header(header: dict | bytes, body: bytes) -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


def _refused(tmp_path, name: str, data: bytes, match: str = ".") -> CheckpointError:
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match=match) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    assert path.read_bytes() == data  # left as it is
    return info.value


def test_truncated_files_are_refused(tmp_path):
    *_, data = _good(tmp_path)
    (n,) = struct.unpack("<Q", data[:8])
    for cut in [0, 1, 7, 8, 9, 8 + n // 2, 8 + n - 1, 8 + n, 8 + n + 1, len(data) - 1]:
        _refused(tmp_path, f"cut_{cut}.safetensors", data[:cut])


def test_files_the_format_reader_rejects_are_refused(tmp_path):
    *_, data = _good(tmp_path)
    header, body = _header(data)
    (n,) = struct.unpack("<Q", data[:8])
    a, b = header["a"]["data_offsets"], header["b"]["data_offsets"]
    cases = {
        "overlapping_offsets": _with_header(
            {**header, "b": {**header["b"], "data_offsets": a}}, body
        ),
        "header_length_plus_8": struct.pack("<Q", n + 8) + data[8:],
        "header_length_minus_8": struct.pack("<Q", n - 8) + data[8:],
        "header_length_huge": struct.pack("<Q", 2**62) + data[8:],
        "trailing_bytes": data + b"\0" * 8,
        "not_json": _with_header(b"{nope", body),
        "header_a_list": _with_header(b"[1, 2]", body),
        "unknown_dtype": _with_header({**header, "a": {**header["a"], "dtype": "Q7"}}, body),
        "metadata_not_text": _with_header({**header, "__metadata__": {METADATA_KEY: 3}}, body),
    }
    assert a != b
    for name, bad in cases.items():
        _refused(tmp_path, name, bad, "the safetensors reader refused it")


def test_files_the_format_accepts_but_that_are_wrong_are_refused(tmp_path):
    """What the safetensors reader accepts but the checksum catches: swapped offsets of two
    tensors of one size, a dtype read as another of the same width, a flipped bit."""
    *_, data = _good(tmp_path)
    header, body = _header(data)
    swapped = {
        **header,
        "a": {**header["a"], "data_offsets": header["b"]["data_offsets"]},
        "b": {**header["b"], "data_offsets": header["a"]["data_offsets"]},
    }
    int32 = {**header, "a": {**header["a"], "dtype": "I32"}}
    flipped = bytearray(data)
    flipped[-3] ^= 0x10
    for name, bad in [
        ("swapped", _with_header(swapped, body)),
        ("int32", _with_header(int32, body)),
        ("bit_flip", bytes(flipped)),
    ]:
        safetensors.numpy.load(bad)  # the format's reader takes it...
        _refused(tmp_path, name, bad, "do not match the checksum")  # ...we do not


def test_duplicate_keys_and_missing_parts_of_the_metadata_are_refused(tmp_path):
    arrays, _, data = _good(tmp_path)
    header, body = _header(data)
    dup = {**header, "__metadata__": {**header["__metadata__"], METADATA_KEY: '{"a": 1, "a": 2}'}}
    _refused(tmp_path, "dup", _with_header(dup, body), "duplicate keys 'a'")
    not_object = {**header, "__metadata__": {**header["__metadata__"], METADATA_KEY: "[1]"}}
    _refused(tmp_path, "list", _with_header(not_object, body), "not a JSON object")
    foreign = safetensors.numpy.save(arrays, metadata={"format": "pt"})
    _refused(tmp_path, "foreign", foreign, "not an rnnkit checkpoint")
    unchecked = safetensors.numpy.save(arrays, metadata={METADATA_KEY: "{}"})
    _refused(tmp_path, "unchecked", unchecked, "checksum")


def test_garbage_missing_and_non_regular_files_are_refused(tmp_path):
    rng = np.random.default_rng(8)
    _refused(tmp_path, "random.bin", rng.integers(0, 256, 4096).astype(np.uint8).tobytes())
    _refused(tmp_path, "text.txt", b"this is not a checkpoint, just some words\n" * 10)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope" / "missing.safetensors")
    (tmp_path / "adir.safetensors").mkdir()
    with pytest.raises(CheckpointError, match="is a folder, not a regular file"):
        load_checkpoint(tmp_path / "adir.safetensors")
    os.mkfifo(tmp_path / "fifo.safetensors")  # must not block
    with pytest.raises(CheckpointError, match="FIFO"):
        load_checkpoint(tmp_path / "fifo.safetensors")
    with pytest.raises(CheckpointError, match="character device"):
        load_checkpoint("/dev/zero")
