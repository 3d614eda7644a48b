"""Checkpoints: one safetensors file holding the arrays and, in its header, JSON metadata.

One file, so arrays and metadata can never disagree; written to a temporary file in the same
folder, flushed, fsynced and then renamed over the old one (``os.replace``), so a kill at any
moment leaves either the previous checkpoint or the new one, whole. No pickle anywhere.
"""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
from pathlib import Path

import numpy as np

METADATA_KEY = "rnnkit"


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated or not one of ours."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; a saved file gets the usual mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """UTF-8 text, written atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


# safetensors dtype codes of the arrays we store.
_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "I64": np.int64,
    "I32": np.int32,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
_CODES = {np.dtype(v): k for k, v in _DTYPES.items()}


def to_safetensors(arrays: dict[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    """Encode arrays in the safetensors format: an 8-byte little-endian header length, a JSON
    header (dtype, shape and byte range of each array, plus string metadata), then the raw
    little-endian bytes, C order. The ``safetensors`` package reads it, and we read its files.
    """
    header: dict = {"__metadata__": metadata}
    chunks, offset = [], 0
    for name in sorted(arrays):
        a = np.asarray(arrays[name])
        native = a.dtype.newbyteorder("=")  # '>f8' is stored as F64 too
        if native not in _CODES:
            raise TypeError(f"cannot store {name!r} of dtype {a.dtype} in a checkpoint")
        raw = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes()
        header[name] = {
            "dtype": _CODES[native],
            "shape": list(a.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the format pads the header to 8 bytes
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def from_safetensors(data: bytes) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Decode :func:`to_safetensors`'s bytes; raises ValueError on anything malformed."""
    if len(data) < 8:
        raise ValueError(f"file has {len(data)} bytes, fewer than the 8-byte header length")
    (header_len,) = struct.unpack("<Q", data[:8])
    if 8 + header_len > len(data):
        raise ValueError("header runs past the end of the file")
    header = json.loads(data[8 : 8 + header_len].decode("utf-8"))
    if not isinstance(header, dict):
        raise ValueError(f"header is a JSON {type(header).__name__}, not an object")
    metadata = header.pop("__metadata__", {}) or {}
    body = memoryview(data)[8 + header_len :]
    arrays = {}
    for name, info in header.items():
        try:
            dtype = np.dtype(_DTYPES[info["dtype"]]).newbyteorder("<")
            begin, end = (int(i) for i in info["data_offsets"])
            shape = tuple(int(i) for i in info["shape"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(
                f"array {name!r} has a bad header entry {info!r} ({type(e).__name__}: {e}); "
                f"supported dtypes are {', '.join(_DTYPES)}"
            ) from None
        if not 0 <= begin <= end <= len(body) or end - begin != dtype.itemsize * math.prod(shape):
            raise ValueError(f"array {name!r} does not fit the file (truncated?)")
        arrays[name] = (
            np.frombuffer(body[begin:end], dtype=dtype)
            .reshape(shape)
            .astype(dtype.newbyteorder("="))
        )
    return arrays, metadata


def save_checkpoint(path: str | os.PathLike, arrays: dict[str, np.ndarray], metadata: dict) -> None:
    """Save arrays and JSON-serialisable metadata to one safetensors file, atomically."""
    atomic_write_bytes(path, to_safetensors(arrays, {METADATA_KEY: json.dumps(metadata)}))


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """Read a checkpoint written by :func:`save_checkpoint`: ``(arrays, metadata)``.

    Raises:
        CheckpointError: the file is missing, truncated, corrupt or not an rnnkit checkpoint;
            the message names the file.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror}") from None
    try:
        arrays, header_meta = from_safetensors(data)
        metadata = json.loads(header_meta[METADATA_KEY])
    except Exception as e:  # any parse failure means the same thing to the user
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt ({type(e).__name__}: "
            f"{e}); it cannot be loaded"
        ) from None
    return arrays, metadata
