"""NumPy's own BLAS, reached directly: the OpenBLAS that NumPy's wheels ship (scipy-openblas64).

The compiled loops of :mod:`rnnkit.kernels` call its products without the Python around each
call. Only this library will do: it is the one behind ``np.matmul``, with its one thread pool;
SciPy's (what Numba calls) is a second pool, which would fight the first for the cores. Where
it is not found (a NumPy built against another BLAS), :func:`library` is None and rnnkit does
without.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import numpy as np

# The CBLAS functions the kernels call, as named in the library (``scipy_cblas_sgemv64_``, ...):
# products, and omatcopy, a transposed copy.
PRODUCTS = ("sgemv", "dgemv", "sgemm", "dgemm", "somatcopy", "domatcopy")


@functools.cache
def library() -> ctypes.CDLL | None:
    """NumPy's OpenBLAS, when NumPy says it is built with scipy-openblas64 and the library is
    where its wheels keep it, with the functions rnnkit calls; None otherwise."""
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        if blas["name"] != "scipy-openblas" or "USE64BITINT" not in blas["openblas configuration"]:
            return None
    except (KeyError, TypeError, ValueError):
        return None
    package = Path(np.__file__).parent
    names = [f"scipy_cblas_{p}64_" for p in PRODUCTS]
    for folder in (package.parent / "numpy.libs", package / ".dylibs"):
        for path in sorted(folder.glob("libscipy_openblas64_*")):
            try:
                found = ctypes.CDLL(str(path))  # already loaded by NumPy: the same handle
                for name in names:
                    getattr(found, name)
                return found
            except (OSError, AttributeError):
                continue
    return None
