"""The package's shape: imports point one way, down the layer list of DESIGN.md."""

import ast
from pathlib import Path

import rnnkit

SRC = Path(rnnkit.__file__).parent

# Each module may import only modules listed before it.
ORDER = [
    "version",
    "allocator",
    "memory",
    "files",
    "functional",
    "init",
    "gates",
    "cells",
    "blas",
    "parallel",
    "packed",
    "kernels",
    "loops",
    "checkpoint",
    "module",
    "recurrent",
    "layers",
    "ctc",
    "losses",
    "optim",
    "data",
    "text",
    "corpus",
    "models",
    "sampling",
    "distributed",
    "train",
    "gradflow",
    "record",
    "course",
    "report",
    "onnx",
    "__init__",
    "apps",
    "cli",
    "__main__",
]


PACKAGES = ("apps", "cli")  # sub-packages: each one layer of its own


def local_imports(path: Path) -> set[str]:
    """The package modules a file imports (inside a sub-package, its siblings do not count)."""
    depth = 2 if path.parent.name in PACKAGES else 1  # the relative level that reaches rnnkit/
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == depth:
            if node.module:  # from .cells import x
                found.add(node.module.split(".")[0])
            else:  # from . import cells
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rnnkit."):
            found.add(node.module.split(".")[1])
    return found - {module_name(path)}


def module_name(path: Path) -> str:
    """``apps/x.py`` counts as the package ``apps``, one layer of its own (so does ``cli``)."""
    return path.parent.name if path.parent.name in PACKAGES else path.stem


def test_imports_point_down():
    for path in SRC.rglob("*.py"):
        name = module_name(path)
        assert name in ORDER, f"{name}.py has no place in the layer order; add it"
        below = set(ORDER[: ORDER.index(name)])
        assert local_imports(path) <= below, f"{name} imports {local_imports(path) - below}"


def test_no_global_random_state():
    """Randomness goes through an explicit Generator: no np.random.<legacy> calls in the code."""
    legacy = {"seed", "rand", "randn", "randint", "random", "uniform", "normal", "shuffle"}
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in legacy:
                value = node.value
                if isinstance(value, ast.Attribute) and value.attr == "random":
                    raise AssertionError(f"{path.name}:{node.lineno} uses np.random.{node.attr}")


def test_no_pickle():
    for path in SRC.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "import pickle" not in text and "allow_pickle=True" not in text, path.name


def test_version_is_exposed():
    assert isinstance(rnnkit.__version__, str) and rnnkit.__version__.count(".") == 2
