"""Our safetensors writer and reader, checkpoints with metadata, clear errors, atomic writes."""

from __future__ import annotations

import errno
import json
import os
import struct

import numpy as np
import pytest

from rnnkit import checkpoint as ck
from rnnkit.checkpoint import (
    METADATA_KEY,
    CheckpointError,
    atomic_write_bytes,
    atomic_write_text,
    from_safetensors,
    load_checkpoint,
    save_checkpoint,
    to_safetensors,
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
        "transposed": base.T,  # (7, 5), F-ordered view
        "strided": base[::2, 1::3],  # neither C nor F contiguous
        "fortran32": np.asfortranarray(rng.standard_normal((4, 3)).astype(np.float32)),
        "transposed_i64": rng.integers(0, 100, size=(3, 5)).T,
        "scalar": np.array(3.25),
        "empty": np.zeros((0, 3), dtype=np.float32),
        "model.layer.weight_ih_l0": rng.standard_normal((8, 2)),  # dotted names, as we use
    }


def _assert_same(got: dict, expected: dict) -> None:
    assert sorted(got) == sorted(expected)
    for name, a in expected.items():
        a = np.asarray(a)
        assert got[name].dtype == a.dtype, name
        assert got[name].shape == a.shape, name
        np.testing.assert_array_equal(got[name], a, err_msg=name)


def test_non_contiguous_inputs_really_are_non_contiguous():
    arrays = _arrays()
    for name in ("transposed", "strided", "fortran32", "transposed_i64"):
        assert not arrays[name].flags.c_contiguous, name


# ---------------------------------------------------------------- format


def test_round_trip_through_our_reader():
    arrays = _arrays(1)
    arrays_out, meta = from_safetensors(to_safetensors(arrays, {"k": "v", "ünï": "cödé"}))
    _assert_same(arrays_out, arrays)
    assert meta == {"k": "v", "ünï": "cödé"}
    for a in arrays_out.values():  # usable arrays: native byte order, writable
        assert a.dtype.isnative and a.flags.writeable


def test_layout_header_is_padded_and_bytes_are_deterministic():
    arrays = _arrays(2)
    data = to_safetensors(arrays, {"a": "b"})
    (n,) = struct.unpack("<Q", data[:8])
    assert n % 8 == 0
    header = json.loads(data[8 : 8 + n])
    assert header["__metadata__"] == {"a": "b"}
    # data offsets tile the body with no gap and no overlap
    spans = sorted(tuple(v["data_offsets"]) for k, v in header.items() if k != "__metadata__")
    assert spans[0][0] == 0 and spans[-1][1] == len(data) - 8 - n
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    # the same arrays in another insertion order give the same bytes
    reordered = dict(reversed(list(arrays.items())))
    assert to_safetensors(reordered, {"a": "b"}) == data


def test_written_bytes_are_little_endian_c_order():
    a = np.arange(6, dtype=np.float32).reshape(2, 3).T  # (3, 2) view
    data = to_safetensors({"a": a}, {})
    (n,) = struct.unpack("<Q", data[:8])
    body = data[8 + n :]
    assert body == np.ascontiguousarray(a).astype("<f4").tobytes()
    assert json.loads(data[8 : 8 + n])["a"] == {
        "dtype": "F32",
        "shape": [3, 2],
        "data_offsets": [0, 24],
    }


def test_safetensors_package_reads_our_files():
    st = pytest.importorskip("safetensors.numpy")
    arrays = _arrays(3)
    data = to_safetensors(arrays, {"note": "hi"})
    _assert_same(st.load(data), arrays)


def test_safetensors_package_reads_our_file_on_disk(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    safetensors = pytest.importorskip("safetensors")
    arrays = _arrays(4)
    path = tmp_path / "ck.safetensors"
    save_checkpoint(path, arrays, {"step": 3})
    _assert_same(st.load_file(str(path)), arrays)
    with safetensors.safe_open(str(path), framework="numpy") as f:
        assert json.loads(f.metadata()[METADATA_KEY]) == {"step": 3}


def test_we_read_files_the_safetensors_package_writes(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    # the package gets C-contiguous arrays: its 0.8 writer mishandles transposed views
    arrays = {k: np.ascontiguousarray(v) for k, v in _arrays(5).items()}
    data = st.save(arrays, metadata={"x": "y"})
    got, meta = from_safetensors(data)
    _assert_same(got, arrays)
    assert meta == {"x": "y"}

    path = tmp_path / "theirs.safetensors"
    st.save_file(arrays, str(path), metadata={METADATA_KEY: json.dumps({"epoch": 2})})
    got, meta = load_checkpoint(path)
    _assert_same(got, arrays)
    assert meta == {"epoch": 2}


def test_unsupported_dtype_is_refused_by_name():
    with pytest.raises(TypeError, match="'half'.*float16"):
        to_safetensors({"half": np.zeros(3, dtype=np.float16)}, {})


def test_big_endian_input_is_stored_little_endian():
    """BUG (src): to_safetensors means to convert byte order (``newbyteorder("<")``) but the
    dtype lookup ``a.dtype not in _CODES`` rejects '>f8' first, with a TypeError."""
    a = np.arange(6.0).reshape(2, 3)
    got, _ = from_safetensors(to_safetensors({"a": a.astype(">f8")}, {}))
    np.testing.assert_array_equal(got["a"], a)


def _with_header(header: bytes, body: bytes = b"\0" * 16) -> bytes:
    return struct.pack("<Q", len(header)) + header + body


MALFORMED = {
    "short": b"\x01\x02",
    "header_past_end": struct.pack("<Q", 10**6) + b"{}",
    "not_json": _with_header(b"{nope"),
    "not_utf8": _with_header(b"\xff\xfe\xfd"),
    "array_past_end": _with_header(b'{"x":{"dtype":"F64","shape":[4],"data_offsets":[0,32]}}'),
    "size_mismatch": _with_header(b'{"x":{"dtype":"F64","shape":[3],"data_offsets":[0,16]}}'),
    "header_is_a_list": _with_header(b"[1, 2]"),
    "unknown_dtype": _with_header(b'{"x":{"dtype":"F16","shape":[1],"data_offsets":[0,2]}}'),
    "entry_not_an_object": _with_header(b'{"x":3}'),
    "missing_offsets": _with_header(b'{"x":{"dtype":"F32","shape":[1]}}'),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_from_safetensors_raises_value_error_on_malformed_bytes(case):
    """The docstring promises ValueError "on anything malformed".

    BUG (src) for header_is_a_list, unknown_dtype, entry_not_an_object and missing_offsets:
    they escape as TypeError / KeyError (load_checkpoint still wraps them in CheckpointError).
    """
    with pytest.raises(ValueError):
        from_safetensors(MALFORMED[case])


# ---------------------------------------------------------------- checkpoints


def test_save_load_round_trip_with_metadata(tmp_path):
    arrays = _arrays(6)
    meta = {
        "config": {"hidden": 64, "lr": 0.001, "cell": "lstm"},
        "vocab": ["<pad>", "<eos>", "é", "日本", "\n"],
        "step": 1234,
        "rng": {"bit_generator": "PCG64", "state": {"state": 2**100 + 7, "inc": 3}},
        "nothing": None,
        "flag": True,
    }
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, arrays, meta)
    got, got_meta = load_checkpoint(str(path))  # str or Path
    _assert_same(got, arrays)
    assert got_meta == meta
    assert os.listdir(tmp_path) == ["model.safetensors"]


def test_save_overwrites_previous_checkpoint(tmp_path):
    path = tmp_path / "ck.safetensors"
    save_checkpoint(path, {"a": np.ones(3)}, {"v": 1})
    new = {"b": np.arange(4.0) * 1.5}
    save_checkpoint(path, new, {"v": 2})
    got, meta = load_checkpoint(path)
    _assert_same(got, new)
    assert meta == {"v": 2}
    assert os.listdir(tmp_path) == ["ck.safetensors"]


def _good_file(tmp_path, name: str = "good.safetensors") -> tuple[os.PathLike, bytes]:
    path = tmp_path / name
    save_checkpoint(path, _arrays(7), {"step": 5})
    return path, path.read_bytes()


def _assert_checkpoint_error(path) -> CheckpointError:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)
    return info.value


def test_truncated_file_raises_checkpoint_error_naming_it(tmp_path):
    _, data = _good_file(tmp_path)
    (n,) = struct.unpack("<Q", data[:8])
    cuts = [1, 7, 8, 9, 8 + n // 2, 8 + n - 1, 8 + n, 8 + n + 1, (8 + n + len(data)) // 2]
    cuts.append(len(data) - 1)
    for cut in cuts:
        path = tmp_path / f"cut_{cut}.safetensors"
        path.write_bytes(data[:cut])
        _assert_checkpoint_error(path)


def test_garbage_files_raise_checkpoint_error(tmp_path):
    rng = np.random.default_rng(8)
    cases = {
        "random.bin": rng.integers(0, 256, size=4096).astype(np.uint8).tobytes(),
        "text.txt": b"this is not a checkpoint, just some words\n" * 10,
        "json.json": b'{"weights": [1, 2, 3]}',
        "zeros.bin": b"\0" * 64,
        # a valid safetensors file, but not ours: no rnnkit metadata
        "foreign.safetensors": to_safetensors({"w": np.ones(2)}, {"format": "pt"}),
        # ours, with metadata that is not JSON
        "badmeta.safetensors": to_safetensors({"w": np.ones(2)}, {METADATA_KEY: "{oops"}),
    }
    cases |= {f"malformed_{k}": v for k, v in MALFORMED.items()}
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        _assert_checkpoint_error(path)


def test_empty_file_raises_checkpoint_error(tmp_path):
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    _assert_checkpoint_error(path)


def test_missing_file_raises_checkpoint_error(tmp_path):
    path = tmp_path / "nope" / "missing.safetensors"
    err = _assert_checkpoint_error(path)
    assert "does not exist" in str(err)


def test_directory_instead_of_file_raises_checkpoint_error(tmp_path):
    path = tmp_path / "adir.safetensors"
    path.mkdir()
    _assert_checkpoint_error(path)


# ---------------------------------------------------------------- atomic writes


def _half_writing_fdopen(real_fdopen):
    """An ``os.fdopen`` whose files write half the data, then fail as a full disk would."""

    class HalfWriter:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()
            return False

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            self.f.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

    return lambda *a, **k: HalfWriter(real_fdopen(*a, **k))


def _fail_replace(*args, **kwargs):
    raise OSError(errno.EIO, "replace failed")


def _fail_fsync(fd):
    raise OSError(errno.EIO, "fsync failed")


def _interrupt_replace(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("failure", ["replace", "fsync", "half_write", "interrupt"])
@pytest.mark.parametrize("existing", [True, False])
def test_failed_write_keeps_previous_file_and_leaves_no_temporary(
    tmp_path, monkeypatch, failure, existing
):
    path = tmp_path / "ck.safetensors"
    if existing:
        save_checkpoint(path, {"a": np.arange(5.0)}, {"v": 1})
    before = path.read_bytes() if existing else None

    if failure == "replace":
        monkeypatch.setattr(ck.os, "replace", _fail_replace)
    elif failure == "fsync":
        monkeypatch.setattr(ck.os, "fsync", _fail_fsync)
    elif failure == "half_write":
        monkeypatch.setattr(ck.os, "fdopen", _half_writing_fdopen(os.fdopen))
    else:
        monkeypatch.setattr(ck.os, "replace", _interrupt_replace)
    expected = KeyboardInterrupt if failure == "interrupt" else OSError
    with pytest.raises(expected):
        save_checkpoint(path, {"b": np.random.default_rng(0).standard_normal(1000)}, {"v": 2})
    monkeypatch.undo()

    if existing:
        assert path.read_bytes() == before
        arrays, meta = load_checkpoint(path)
        assert meta == {"v": 1}
        np.testing.assert_array_equal(arrays["a"], np.arange(5.0))
        assert os.listdir(tmp_path) == ["ck.safetensors"]
    else:
        assert os.listdir(tmp_path) == []


def test_temporary_file_is_in_the_same_folder_and_fsynced(tmp_path, monkeypatch):
    calls = []
    real_replace, real_fsync = os.replace, os.fsync

    def spy_replace(src, dst):
        calls.append(("replace", os.path.dirname(os.path.abspath(src)), os.path.basename(src)))
        assert os.path.getsize(src) > 0  # the data is there before the rename
        real_replace(src, dst)

    def spy_fsync(fd):
        calls.append(("fsync",))
        real_fsync(fd)

    monkeypatch.setattr(ck.os, "replace", spy_replace)
    monkeypatch.setattr(ck.os, "fsync", spy_fsync)
    path = tmp_path / "ck.safetensors"
    save_checkpoint(path, {"a": np.arange(3.0)}, {})
    kinds = [c[0] for c in calls]
    assert kinds.index("fsync") < kinds.index("replace")
    replace = calls[kinds.index("replace")]
    assert replace[1] == str(tmp_path)
    assert replace[2] != "ck.safetensors"
    assert os.listdir(tmp_path) == ["ck.safetensors"]


def test_atomic_write_text_and_bytes(tmp_path):
    path = tmp_path / "notes.txt"
    atomic_write_text(path, "héllo\nwörld ✓")
    assert path.read_bytes() == "héllo\nwörld ✓".encode()
    atomic_write_bytes(path, b"\x00\x01\x02")
    assert path.read_bytes() == b"\x00\x01\x02"
    assert os.listdir(tmp_path) == ["notes.txt"]
