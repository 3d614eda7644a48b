"""A seeded fuzz of a real checkpoint: a few hundred mutants (bit flips, header lengths,
offsets, dtypes, shapes, duplicate keys, metadata of the wrong type, crafted tensors with a
valid checksum).

- ``load_checkpoint`` returns the original arrays or raises CheckpointError, nothing else,
  and never accepts a file the ``safetensors`` reader rejects or whose checksum fails.
- ``rnnkit sample``, ``eval`` and ``train --resume`` never end in a traceback, never hang,
  never try to allocate past a memory cap, and refuse every such file: most mutants run
  through the command's ``main`` in one capped subprocess, a few through the console script.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import resource
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
from test_cli import CKPT, ENV, command, names

from rnnkit.checkpoint import CHECKSUM_KEY, METADATA_KEY, CheckpointError, load_checkpoint

SEED = 18
CAP = 3 << 30  # address space of the subprocesses: far above what a tiny model needs
DTYPES = ["F32", "F64", "I32", "I64", "U8", "BOOL", "F16", "BF16", "I8"]


def checksum(arrays: dict) -> str:
    """The checksum as the format defines it, written out again here as the oracle."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.asarray(arrays[name], dtype=arrays[name].dtype.newbyteorder("<"), order="C")
        h.update(json.dumps([name, a.dtype.name, list(a.shape)]).encode() + b"\0")
        h.update(a.tobytes())
    return h.hexdigest()


def split(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def join(header: dict | str, body: bytes) -> bytes:
    text = (header if isinstance(header, str) else json.dumps(header)).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


def crafted(arrays: dict, meta: dict) -> bytes:
    """A file with a valid checksum (as someone crafting one would write it)."""
    stored = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    header = {METADATA_KEY: json.dumps(meta), CHECKSUM_KEY: checksum(stored)}
    return safetensors.numpy.save(stored, metadata=header)


ODD_VALUES = [
    None,
    True,
    False,
    0,
    -1,
    1.5,
    10**9,
    10**30,
    -(10**9),
    "x",
    "",
    [],
    {},
    [1, "a"],
    {"a": 1},
    float("inf"),
    1e308,
]


def paths(value, prefix=()):
    """Every path into a JSON value."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value[:4]):
            yield from paths(v, (*prefix, i))


def set_at(value, path, new):
    if not path:
        return new
    parent = value
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = new
    return value


def mutants(data: bytes, arrays: dict, meta: dict, rng: random.Random, folder: Path):
    """``(kind, bytes)`` of every mutant, seeded."""
    header, body = split(data)
    tensors = sorted(k for k in header if k != "__metadata__")
    (n,) = struct.unpack("<Q", data[:8])
    for _ in range(110):  # one to three flipped bits, in the header or the tensors
        b = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(8, len(b)) if rng.random() < 0.5 else rng.randrange(8 + n, len(b))
            b[i] ^= 1 << rng.randrange(8)
        yield "bit flip", bytes(b)
    for delta in (-(10**6), -16, -9, -8, -1, 1, 7, 8, 64, 10**6, 2**40, 2**63):
        yield "header length", struct.pack("<Q", max(0, n + delta) % 2**64) + data[8:]
    for _ in range(25):
        h = json.loads(json.dumps(header))
        a, b = rng.sample(tensors, 2)
        shift = rng.choice([-8, -4, -1, 1, 4, 8])
        how = rng.choice(["swap", "shift", "overlap"])
        if how == "swap":
            h[a]["data_offsets"], h[b]["data_offsets"] = h[b]["data_offsets"], h[a]["data_offsets"]
        elif how == "shift":
            h[a]["data_offsets"] = [max(0, o + shift) for o in h[a]["data_offsets"]]
        else:
            h[a]["data_offsets"] = h[b]["data_offsets"]
        yield f"offsets ({how})", join(h, body)
    for _ in range(25):
        h = json.loads(json.dumps(header))
        h[rng.choice(tensors)]["dtype"] = rng.choice(DTYPES)
        yield "dtype", join(h, body)
    for _ in range(25):
        h = json.loads(json.dumps(header))
        t = h[rng.choice(tensors)]
        shape = t["shape"]
        t["shape"] = rng.choice(
            [shape[::-1], [*shape, 1], shape[1:], [s + 1 for s in shape], [int(np.prod(shape))]]
        )
        yield "shape", join(h, body)
    for _ in range(10):  # a key given twice: in the header, in the metadata
        name = rng.choice(tensors)
        text = json.dumps(header)
        yield (
            "duplicate tensor",
            join(text[:-1] + f', "{name}": ' + json.dumps(header[name]) + "}", body),
        )
        h = json.loads(json.dumps(header))
        inner = h["__metadata__"][METADATA_KEY]
        key = rng.choice(list(meta))
        h["__metadata__"][METADATA_KEY] = inner[:-1] + f', "{key}": 0' + "}"
        yield "duplicate metadata key", join(h, body)
    every = [p for p in paths(meta) if p]
    for _ in range(80):  # metadata of the wrong type or out of range; tensors unchanged
        m = json.loads(json.dumps(meta))
        path = rng.choice(every)
        if rng.random() < 0.2:
            parent = m
            for key in path[:-1]:
                parent = parent[key]
            del parent[path[-1]]
            kind = "metadata field removed"
        else:
            set_at(m, path, rng.choice(ODD_VALUES))
            kind = "metadata value"
        yield f"{kind} {'.'.join(map(str, path))}", crafted(arrays, m)
    for _ in range(20):  # tensors changed, the checksum written to match
        a = dict(arrays)
        name = rng.choice(sorted(a))
        how = rng.choice(["int32", "float64", "transpose", "drop", "extra", "nan", "rename"])
        if how == "int32" and a[name].dtype.itemsize == 4:
            a[name] = a[name].view(np.int32)
        elif how == "float64":
            a[name] = a[name].astype(np.float64)
        elif how == "transpose" and a[name].ndim == 2:
            a[name] = np.ascontiguousarray(a[name].T)
        elif how == "drop":
            del a[name]
        elif how == "extra":
            a[name + "_extra"] = np.zeros(3, np.float32)
        elif how == "nan" and a[name].dtype.kind == "f":
            a[name] = a[name].copy()
            a[name].reshape(-1)[0] = np.nan
        else:
            a["model.renamed"] = a.pop(name)
        yield f"crafted tensors ({how})", crafted(a, meta)
    source = json.loads(json.dumps(meta))  # the text it names: a device, a FIFO, a folder
    os.mkfifo(folder / "pipe")
    for where in ("/dev/zero", str(folder / "pipe"), str(folder)):
        source["source"]["path"] = where
        yield f"source {where}", crafted(arrays, source)


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """A real checkpoint of a stream-mode run (it carries a state too), half-way through."""
    d = tmp_path_factory.mktemp("fuzz")
    (d / "names.txt").write_text(names(), encoding="utf-8")
    args = [
        "train",
        "names.txt",
        "--out",
        "run",
        "--mode",
        "stream",
        "--seq-len",
        "12",
        "--hidden-size",
        "6",
        "--batch-size",
        "4",
        "--steps",
        "3",
        "--eval-every",
        "2",
        "--progress",
        "none",
    ]
    subprocess.run(command(args), cwd=d, env=ENV, check=True, capture_output=True, timeout=120)
    path = d / "run" / CKPT
    arrays, meta = load_checkpoint(path)
    return d, path.read_bytes(), arrays, meta


@pytest.fixture(scope="module")
def outcomes(original):
    """Every mutant, and what load_checkpoint made of it (arrays or a CheckpointError)."""
    d, data, arrays, meta = original
    folder = d / "mutants"
    folder.mkdir()
    found = []
    for i, (kind, raw) in enumerate(mutants(data, arrays, meta, random.Random(SEED), d)):
        path = folder / f"m{i:03d}.safetensors"
        path.write_bytes(raw)
        try:
            theirs = safetensors.numpy.load_file(str(path))
            with safetensors.safe_open(str(path), framework="numpy") as f:
                written = (f.metadata() or {}).get(CHECKSUM_KEY)
            sound = written == checksum(theirs)
        except Exception:  # the format's reader rejects it
            sound = False
        try:
            got, _ = load_checkpoint(path)
        except CheckpointError:
            got = None
        found.append((kind, path, raw, sound, got))
    return found


def test_there_are_a_few_hundred_mutants_of_every_kind(outcomes):
    kinds = {kind.split(" (")[0].split(" ")[0] for kind, *_ in outcomes}
    assert len(outcomes) >= 300
    assert {
        "bit",
        "header",
        "offsets",
        "dtype",
        "shape",
        "duplicate",
        "metadata",
        "crafted",
    } <= kinds
    assert sum(got is None for *_, got in outcomes) >= 150  # most are refused


def test_load_checkpoint_returns_the_original_arrays_or_refuses(original, outcomes):
    _, _, arrays, _ = original
    for kind, path, raw, sound, got in outcomes:
        if not sound:
            assert got is None, f"{kind} ({path.name}): a file the reader or checksum rejects"
        if got is not None and not kind.startswith("crafted"):
            assert sorted(got) == sorted(arrays), kind
            for name, a in arrays.items():
                assert (got[name].dtype, got[name].shape) == (a.dtype, a.shape), (kind, name)
                assert got[name].tobytes() == a.tobytes(), (kind, name)
        assert path.read_bytes() == raw  # never changed


DRIVER = r"""
import contextlib, io, json, resource, signal, sys, traceback
resource.setrlimit(resource.RLIMIT_AS, (CAP, CAP))
from rnnkit.cli import main

class Hang(BaseException):
    pass

def alarm(signum, frame):
    raise Hang()

signal.signal(signal.SIGALRM, alarm)
results = []
for argv in json.load(sys.stdin):
    out, err = io.StringIO(), io.StringIO()
    signal.alarm(30)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    except Hang:
        code, err = "hang", io.StringIO("hang")
    except BaseException:
        code = "traceback"
        err.write(traceback.format_exc())
    finally:
        signal.alarm(0)
    results.append([argv, code, err.getvalue()])
print(json.dumps(results))
"""


def commands_for(original, path: Path, i: int) -> list[list[str]]:
    d = original[0]
    run = d / "runs" / f"r{i:03d}"
    run.mkdir(parents=True)
    shutil.copy(path, run / CKPT)
    return [
        ["sample", str(path), "--num", "2", "--length", "10"],
        ["eval", str(path), str(d / "names.txt")],
        ["train", "--out", str(run), "--resume", "--steps", "4", "--progress", "none"],
    ]


def limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (CAP, CAP))


def check_result(kind: str, sound: bool, code, err: str) -> None:
    assert code not in ("traceback", "hang"), f"{kind}: {code}\n{err}"
    assert "Traceback" not in err and "out of memory" not in err, f"{kind}: {err}"
    if code != 0:
        assert code == 2 and len(err.strip().splitlines()) == 1, f"{kind}: {code} {err}"
    if not sound:
        assert code == 2 and "the file was left as it is" in err, f"{kind}: accepted\n{err}"


def test_the_commands_refuse_every_bad_file_in_one_line_in_bounded_time_and_memory(
    original, outcomes
):
    sample = random.Random(SEED).sample(range(len(outcomes)), 90)
    sample += [i for i, o in enumerate(outcomes) if o[0].startswith("source")]
    jobs = [(i, argv) for i in sample for argv in commands_for(original, outcomes[i][1], i)]
    done = subprocess.run(
        [sys.executable, "-c", DRIVER.replace("CAP", str(CAP))],
        input=json.dumps([argv for _, argv in jobs]),
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout)
    accepted = 0
    for (i, _), (argv, code, err) in zip(jobs, results):
        kind, _, _, sound, _ = outcomes[i]
        check_result(f"{kind} / {argv[0]}", sound, code, err)
        if kind.startswith("source") and argv[0] == "train":
            assert code == 2 and "not a regular file" in err, err  # never read
        accepted += code == 0
    assert accepted > 0  # some mutants (a changed loss in the history, say) are harmless


def test_the_console_script_on_a_few_mutants(original, outcomes):
    """The same, through the installed command: a process of its own, capped and timed."""
    picks = [i for i, o in enumerate(outcomes) if not o[3]][:3]
    picks += [next(i for i, o in enumerate(outcomes) if o[0].startswith("metadata value"))]
    for i in picks:
        kind, path, _, sound, _ = outcomes[i]
        for argv in commands_for(original, path, 1000 + i):
            result = subprocess.run(
                command(argv),
                capture_output=True,
                text=True,
                env=ENV,
                timeout=60,
                preexec_fn=limit_memory,
            )
            check_result(f"{kind} / {argv[0]}", sound, result.returncode, result.stderr)
