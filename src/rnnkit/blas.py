"""NumPy's own BLAS, called from compiled code: the OpenBLAS that NumPy's wheels ship.

The compiled loops of :mod:`rnnkit.kernels` call its products without Python around each call.
Only this library will do: it is the one behind ``np.matmul``, with its one thread pool (SciPy's,
which Numba would call, is a second pool). Its functions are bound for Numba under names of
ours (``rnnkit_sgemm``, ...), so that Numba's on-disk cache holds no address. Where it is not
found (a NumPy built against another BLAS) or Numba is missing, :data:`FOUND` is False and the
layers run the reference loop.

Inside compiled code: :func:`gemm` (``c = a @ b + beta * c``) and :func:`gemv` (the same for a
vector), for 2-D views of which one axis is contiguous, as a layer's buffers are; :func:`gemm`
also from Python, through ctypes (no compilation, and the GIL released while it runs).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
from pathlib import Path

import numpy as np

try:
    import numba
    from llvmlite import binding as llvm
    from numba import types
    from numba.extending import overload
except ImportError:
    llvm = None

# The CBLAS functions called, as the library names them (``scipy_cblas_sgemv64_``, ...).
PRODUCTS = ("sgemv", "dgemv", "sgemm", "dgemm")


@functools.cache
def library() -> ctypes.CDLL | None:
    """NumPy's OpenBLAS, when NumPy says it is built with scipy-openblas64 and the library is
    where its wheels keep it, with the functions rnnkit calls; None otherwise."""
    try:
        config = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        if (
            config["name"] != "scipy-openblas"
            or "USE64BITINT" not in config["openblas configuration"]
        ):
            return None
    except (KeyError, TypeError, ValueError):
        return None
    package = Path(np.__file__).parent
    for folder in (package.parent / "numpy.libs", package / ".dylibs"):
        for path in sorted(folder.glob("libscipy_openblas64_*")):
            try:
                found = ctypes.CDLL(str(path))  # already loaded by NumPy: the same handle
                for name in PRODUCTS:
                    getattr(found, f"scipy_cblas_{name}64_")
                found.scipy_openblas_get_num_threads64_.restype = ctypes.c_int
                found.scipy_openblas_set_num_threads64_.argtypes = [ctypes.c_int]
                for name in PRODUCTS:
                    getattr(found, f"scipy_cblas_{name}64_").argtypes = _signature(name)
                return found
            except (OSError, AttributeError):
                continue
    return None


def _signature(name: str) -> list:
    """The C argument types of a CBLAS function: enums, sizes, then scalars and pointers."""
    real = ctypes.c_float if name[0] == "s" else ctypes.c_double
    i64, ptr, enum = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    if name.endswith("gemv"):  # order, trans, M, N, alpha, A, lda, x, incx, beta, y, incy
        return [enum] * 2 + [i64] * 2 + [real, ptr, i64, ptr, i64, real, ptr, i64]
    # gemm: order, trans A, trans B, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc
    return [enum] * 3 + [i64] * 3 + [real, ptr, i64, ptr, i64, real, ptr, i64]


_STUBS: list = []  # where the library is missing: functions never called, kept alive


def _bind() -> bool:
    """Binds ``rnnkit_sgemv`` and the others for compiled code; True if to NumPy's BLAS."""
    found = library()
    for name in PRODUCTS:
        if found is not None:
            function = getattr(found, f"scipy_cblas_{name}64_")
        else:
            function = ctypes.CFUNCTYPE(None, *_signature(name))(lambda *args: None)
            _STUBS.append(function)
        llvm.add_symbol(f"rnnkit_{name}", ctypes.cast(function, ctypes.c_void_p).value)
    return found is not None


FOUND = llvm is not None and _bind()


COMPILED_SOURCES = ("blas.py", "packed.py", "kernels.py")  # the modules with compiled code


def drop_stale_cache(package: Path = Path(__file__).parent) -> None:
    """Remove Numba's cached machine code beside the sources if any of the compiled modules
    changed since it was written. Numba checks a cached function against its own file only: a
    kernel that calls into an edited module would load the machine code of the old one."""
    cache = package / "__pycache__"
    try:
        sources = b"".join((package / name).read_bytes() for name in COMPILED_SOURCES)
        digest = hashlib.sha256(sources).hexdigest()
        stamp = cache / "compiled-sources.sha256"
        if stamp.is_file() and stamp.read_text() == digest:
            return
        cache.mkdir(exist_ok=True)
        for old in [*cache.glob("*.nbi"), *cache.glob("*.nbc")]:
            old.unlink(missing_ok=True)
        tmp = cache / f".compiled-sources.{os.getpid()}.tmp"
        tmp.write_text(digest)
        os.replace(tmp, stamp)
    except OSError:  # a read-only install: Numba keeps its cache elsewhere, or none
        pass


if llvm is not None:
    drop_stale_cache()


def compiled(function=None, **options):
    """``numba.njit`` (GIL released) with Numba's on-disk cache, so a second process loads
    what the first compiled; where no folder is writable for it, compiled in each process.
    Without Numba, the function itself."""
    if function is None:
        return lambda f: compiled(f, **options)
    if llvm is None:
        return function
    try:
        return numba.njit(cache=True, nogil=True, **options)(function)
    except RuntimeError:  # "cannot cache function": no locator available
        return numba.njit(nogil=True, **options)(function)


def threads() -> int:
    """How many threads NumPy's OpenBLAS runs a product on (1 where it is not found)."""
    found = library()
    return 1 if found is None else int(found.scipy_openblas_get_num_threads64_())


def set_threads(n: int) -> None:
    """Set the threads of NumPy's OpenBLAS for the whole process (what ``OPENBLAS_NUM_THREADS``
    sets at start): a direct call, a microsecond, where threadpoolctl's limits cost 25-45 us
    a call and ignore a restore from a thread other than the one that set them."""
    found = library()
    if found is not None:
        found.scipy_openblas_set_num_threads64_(ctypes.c_int(n))


_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112  # CBLAS's enums


def layout(shape0: int, shape1: int, stride0: int, stride1: int) -> tuple[bool, int]:
    """(row-major?, leading dimension) of a 2-D view, strides in elements; one axis must be
    contiguous."""
    if shape1 == 1 or stride1 == 1:
        return True, max(stride0, shape1, 1) if shape0 > 1 else max(shape1, 1)
    return False, max(stride1, shape0, 1) if shape1 > 1 else max(shape0, 1)


def gemm(a: np.ndarray, b: np.ndarray, c: np.ndarray, beta: float) -> None:
    """``c = a @ b + beta * c``: one BLAS call on the views as they are (from Python through
    ctypes, which lets go of the GIL; in compiled code, the same call compiled)."""
    (M, K), N = a.shape, b.shape[1]
    if M == 0 or N == 0:
        return
    if K == 0:
        c *= beta
        return
    size = a.itemsize
    a_rows, lda = layout(M, K, a.strides[0] // size, a.strides[1] // size)
    b_rows, ldb = layout(K, N, b.strides[0] // size, b.strides[1] // size)
    c_rows, ldc = layout(M, N, c.strides[0] // size, c.strides[1] // size)
    call = getattr(library(), "scipy_cblas_sgemm64_" if size == 4 else "scipy_cblas_dgemm64_")
    pa, pb, pc = a.ctypes.data, b.ctypes.data, c.ctypes.data
    if c_rows:  # C = A B as it is
        ta, tb = _NO_TRANS if a_rows else _TRANS, _NO_TRANS if b_rows else _TRANS
        call(_ROW_MAJOR, ta, tb, M, N, K, 1.0, pa, lda, pb, ldb, beta, pc, ldc)
    else:  # C^T = B^T A^T, row-major
        tb, ta = _TRANS if b_rows else _NO_TRANS, _TRANS if a_rows else _NO_TRANS
        call(_ROW_MAJOR, tb, ta, N, M, K, 1.0, pb, ldb, pa, lda, beta, pc, ldc)


def gemv(a: np.ndarray, x: np.ndarray, y: np.ndarray, beta: float) -> None:
    """``y = a @ x + beta * y`` for vectors ``x``, ``y``."""
    y[...] = a @ x + beta * y


if llvm is not None:
    _TYPES = {
        ctypes.c_int: types.intc,
        ctypes.c_int64: types.int64,
        ctypes.c_float: types.float32,
        ctypes.c_double: types.float64,
        ctypes.c_void_p: types.voidptr,
    }
    _sgemv, _dgemv, _sgemm, _dgemm = (
        types.ExternalFunction(f"rnnkit_{n}", types.void(*(_TYPES[c] for c in _signature(n))))
        for n in PRODUCTS
    )

    _layout = numba.njit(inline="always")(layout)

    @overload(gemm, jit_options={"nogil": True})
    def _gemm(a, b, c, beta):
        call = _sgemm if a.dtype.bitwidth == 32 else _dgemm
        real = np.float32 if a.dtype.bitwidth == 32 else np.float64

        def impl(a, b, c, beta):
            M, K = a.shape
            N = b.shape[1]
            if M == 0 or N == 0:
                return
            if K == 0:  # no terms: c = beta * c
                for i in range(M):
                    for j in range(N):
                        c[i, j] = c[i, j] * beta if beta != 0 else 0
                return
            size = a.itemsize
            a_rows, lda = _layout(M, K, a.strides[0] // size, a.strides[1] // size)
            b_rows, ldb = _layout(K, N, b.strides[0] // size, b.strides[1] // size)
            c_rows, ldc = _layout(M, N, c.strides[0] // size, c.strides[1] // size)
            if c_rows:  # C = A B as it is
                x, tx, ldx, y, ty, ldy, m, n = a, a_rows, lda, b, b_rows, ldb, M, N
            else:  # C^T = B^T A^T, row-major: each operand's layout reads the other way
                x, tx, ldx, y, ty, ldy, m, n = b, not b_rows, ldb, a, not a_rows, lda, N, M
            tx, ty = _NO_TRANS if tx else _TRANS, _NO_TRANS if ty else _TRANS
            call(_ROW_MAJOR, tx, ty, m, n, K, real(1), x.ctypes, ldx, y.ctypes, ldy, real(beta),
                 c.ctypes, ldc)  # fmt: skip

        return impl

    @overload(gemv, jit_options={"nogil": True})
    def _gemv(a, x, y, beta):
        call = _sgemv if a.dtype.bitwidth == 32 else _dgemv
        real = np.float32 if a.dtype.bitwidth == 32 else np.float64

        def impl(a, x, y, beta):
            M, K = a.shape
            size = a.itemsize
            rows, lda = _layout(M, K, a.strides[0] // size, a.strides[1] // size)
            inc_x, inc_y = x.strides[0] // size, y.strides[0] // size
            trans, m, k = (_NO_TRANS, M, K) if rows else (_TRANS, K, M)  # a^T: row-major (K, M)
            call(_ROW_MAJOR, trans, m, k, real(1), a.ctypes, lda, x.ctypes, inc_x, real(beta),
                 y.ctypes, inc_y)  # fmt: skip

        return impl
