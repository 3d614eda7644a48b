"""Checkpoints: one safetensors file holding the arrays and, in its header, JSON metadata.

One file, so arrays and metadata can never disagree; written atomically (see
:mod:`rnnkit.files`), so a kill at any moment leaves either the previous checkpoint or the new
one, whole. The ``safetensors`` package reads and writes the format. Beside the metadata the
header holds a SHA-256 checksum of every tensor's name, dtype, shape and bytes, verified on
every load, so a flipped bit or a tensor swapped for another is refused rather than used.
No pickle anywhere.

What the metadata describes (a model, a training run) is checked by its reader:
:func:`rnnkit.module.load` for models, :func:`rnnkit.train.train` for resuming.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import safetensors
import safetensors.numpy

from .files import (
    NotARegularFile,
    atomic_write_bytes,
    atomic_write_text,
    check_regular_file,
)
from .memory import NotEnoughMemory

__all__ = [
    "CHECKSUM_KEY",
    "METADATA_KEY",
    "CheckpointError",
    "atomic_write_bytes",
    "atomic_write_text",
    "load_checkpoint",
    "parse_json",
    "save_checkpoint",
    "tensor_checksum",
]

METADATA_KEY = "rnnkit"  # the JSON metadata, in the header's string-to-string metadata
CHECKSUM_KEY = "rnnkit_sha256"  # tensor_checksum of the arrays


class CheckpointError(ValueError):
    """A checkpoint file is missing, damaged, or does not hold what it should; the message
    names the file."""


def _stored(array: np.ndarray) -> np.ndarray:
    """The array as the file holds it: C order, little-endian. (safetensors 0.8 writes the
    bytes of a transposed view in the wrong order, so never hand it a view.)"""
    a = np.asarray(array)
    return np.asarray(a, dtype=a.dtype.newbyteorder("<"), order="C")  # 0-d stays 0-d


def tensor_checksum(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 (hex) over each array's name, dtype, shape and little-endian bytes, by name."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        a = _stored(arrays[name])
        digest.update(json.dumps([name, a.dtype.name, list(a.shape)]).encode("utf-8") + b"\0")
        digest.update(a.reshape(-1).view(np.uint8))
    return digest.hexdigest()


def save_checkpoint(path: str | os.PathLike, arrays: dict[str, np.ndarray], metadata: dict) -> None:
    """Save arrays and JSON-serialisable metadata to one safetensors file, atomically."""
    stored = {name: _stored(a) for name, a in arrays.items()}
    header = {METADATA_KEY: json.dumps(metadata), CHECKSUM_KEY: tensor_checksum(stored)}
    atomic_write_bytes(path, safetensors.numpy.save(stored, metadata=header))


def _unique_keys(pairs: list) -> dict:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        twice = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"duplicate keys {', '.join(map(repr, twice))}")
    return dict(pairs)


def parse_json(text: str) -> object:
    """JSON read strictly: a key given twice is an error, not a silent choice of the last."""
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """Read a checkpoint written by :func:`save_checkpoint`: ``(arrays, metadata)``.

    The file must be a regular file that fits in memory, which the ``safetensors`` reader
    accepts, whose metadata is one JSON object (no key twice), and whose tensors match their
    checksum.

    Raises:
        CheckpointError: anything else; the message names the file and what is wrong.
    """
    path = Path(path)
    try:
        check_regular_file(path, "checkpoint")  # before the safetensors reader maps it
        with safetensors.safe_open(str(path), framework="numpy") as f:
            header = f.metadata() or {}
            arrays = {name: f.get_tensor(name) for name in f.keys()}
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except NotARegularFile as e:
        raise CheckpointError(f"checkpoint {e.strerror}") from None
    except NotEnoughMemory as e:
        raise CheckpointError(str(e)) from None
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
    except Exception as e:  # the reader's SafetensorError, and what it raises on odd input
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt: the safetensors reader refused it "
            f"({e}); it cannot be loaded"
        ) from None
    if METADATA_KEY not in header:
        raise CheckpointError(f"{path} is a safetensors file, but not an rnnkit checkpoint")
    if header.get(CHECKSUM_KEY) != tensor_checksum(arrays):
        raise CheckpointError(
            f"checkpoint {path} is corrupt: its tensors do not match the checksum written with "
            f"them; it cannot be loaded"
        )
    try:
        metadata = parse_json(header[METADATA_KEY])
    except ValueError as e:
        raise CheckpointError(
            f"checkpoint {path} is corrupt: its metadata is not JSON ({e})"
        ) from None
    if not isinstance(metadata, dict):
        raise CheckpointError(f"checkpoint {path} is corrupt: its metadata is not a JSON object")
    return arrays, metadata
