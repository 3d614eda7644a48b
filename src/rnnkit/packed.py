"""The recurrent product of one step, ``c (+)= a @ W^T``, with W packed once per call and kept
in cache: the product every step of a chunk repeats with the same weights and a few rows.

Each step's ``a`` is a few sequences' a<t-1> as rows ``(J, K)``, and ``c`` their gates ``(J,
M)`` (W is ``(M, K)``, as PyTorch and the notes store it). OpenBLAS packs both operands on every
call; for a step's product (W of 4H x H, a of 16 x H) that copy of W is a third of the time,
and the two threads of a layer then fight over the cache for it. Packed once, W stays in each
core's cache and the product runs near the core's peak. The packed layout is panels of
``rows`` rows of W, each stored column by column (``(M / rows, K, rows)``: W^T in blocks); a
tile of ``rows`` outputs (one or four 512-bit vectors) for one or four sequences keeps its
sums in registers, one fused multiply-add per vector of W and element of ``a``; one sequence
alone reads the panels in order from the core's cache, faster than BLAS's matrix-vector product
reads W's rows. Outputs past the last whole panel go to BLAS.

The tiles are written in LLVM's own terms (a Numba intrinsic): Numba's loops over a small
array of sums keep them in memory, and reached a seventh of this speed.
"""

from __future__ import annotations

import numpy as np

from .blas import compiled, gemm, gemv

try:
    import numba
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic
except ImportError:
    numba = None

WIDTH = {4: 16, 8: 8}  # values in one 512-bit vector, by item size
VECTORS = (4, 1)  # vectors of outputs a panel holds
SEQUENCES = 4  # sequences a tile of 4 or 1 vectors takes at once (then one at a time)


def pack(w: np.ndarray, rows: int) -> np.ndarray:
    """The whole panels of ``rows`` rows of ``w (M, K)`` (any 2-D view, a transposed one
    too), each stored column by column: ``(M // rows, K, rows)``; the last ``M % rows`` rows
    are left to BLAS."""
    panels = np.empty((w.shape[0] // rows, w.shape[1], rows), dtype=w.dtype)
    _pack(w, panels)
    return panels


def tile_rows(rows: int, itemsize: int) -> int:
    """The panel height for products with a ``rows``-row W: 4 vectors (four sums a vector of
    W: fewer loads a multiply-add), 1 for a small W; 0: too few rows to pack."""
    width = WIDTH[itemsize]
    return next((v * width for v in VECTORS if v * width <= rows), 0)


if numba is not None:

    class _Vectors:
        """LLVM IR for 512-bit vectors of ``bits``-bit reals, over one builder."""

        def __init__(self, builder, bits: int):
            self.builder, self.bits, self.width = builder, bits, 512 // bits
            self.real = ir.FloatType() if bits == 32 else ir.DoubleType()
            self.vec, self.i64 = ir.VectorType(self.real, self.width), ir.IntType(64)
            self.fma = cgutils.get_or_insert_function(
                builder.module,
                ir.FunctionType(self.vec, [self.vec] * 3),
                f"llvm.fma.v{self.width}f{bits}",
            )

        def pointer(self, address):
            return self.builder.inttoptr(address, self.real.as_pointer())

        def at(self, pointer, offset):
            """``pointer + offset`` elements (offset an int or an LLVM value)."""
            offset = ir.Constant(self.i64, offset) if isinstance(offset, int) else offset
            return self.builder.gep(pointer, [offset])

        def sum(self):
            """A vector of sums, zero (registers, once LLVM has promoted it)."""
            return cgutils.alloca_once_value(
                self.builder, ir.Constant(self.vec, [0.0] * self.width)
            )

        def load(self, pointer):
            vp = self.builder.bitcast(pointer, self.vec.as_pointer())
            return self.builder.load(vp, align=self.bits // 8)

        def splat(self, pointer):
            """The value at ``pointer`` in every lane."""
            one = self.builder.insert_element(
                ir.Constant(self.vec, ir.Undefined), self.builder.load(pointer),
                ir.Constant(ir.IntType(32), 0),
            )  # fmt: skip
            lanes = ir.Constant(ir.VectorType(ir.IntType(32), self.width), [0] * self.width)
            return self.builder.shuffle_vector(one, ir.Constant(self.vec, ir.Undefined), lanes)

        def add_product(self, total, a, b):
            """``total += a * b``, fused."""
            self.builder.store(self.builder.call(self.fma, [a, b, self.builder.load(total)]), total)

        def store(self, pointer, total, add: bool):
            """``*pointer (+)= total``."""
            value = self.builder.load(total)
            if add:
                value = self.builder.fadd(self.load(pointer), value)
            vp = self.builder.bitcast(pointer, self.vec.as_pointer())
            self.builder.store(value, vp, align=self.bits // 8)

    def _tile(bits: int, vectors: int, sequences: int, add: bool):
        """The tile ``c[:sequences, :vectors*width] (+)= a[:sequences] @ panel`` (K deep), as
        an intrinsic taking addresses and leading dimensions in elements."""

        @intrinsic
        def tile(typingctx, panel, a, lda, c, ldc, K):
            def codegen(context, builder, signature, args):
                v = _Vectors(builder, bits)
                panel, a, lda, c, ldc, K = args
                panel, a, c = v.pointer(panel), v.pointer(a), v.pointer(c)
                rows = ir.Constant(v.i64, vectors * v.width)
                a_rows = [
                    v.at(a, builder.mul(ir.Constant(v.i64, j), lda)) for j in range(sequences)
                ]
                sums = [[v.sum() for _ in range(vectors)] for _ in range(sequences)]
                with cgutils.for_range(builder, K) as loop:
                    w_row = v.at(panel, builder.mul(loop.index, rows))
                    w = [v.load(v.at(w_row, i * v.width)) for i in range(vectors)]
                    for j in range(sequences):
                        a_jk = v.splat(v.at(a_rows[j], loop.index))  # a[j, k], in every lane
                        for i in range(vectors):
                            v.add_product(sums[j][i], w[i], a_jk)
                for j in range(sequences):
                    c_row = v.at(c, builder.mul(ir.Constant(v.i64, j), ldc))
                    for i in range(vectors):
                        v.store(v.at(c_row, i * v.width), sums[j][i], add)
                return context.get_dummy_value()

            return types.void(types.uintp, types.uintp, types.intp, types.uintp, types.intp,
                              types.intp), codegen  # fmt: skip

        return tile

    def _transpose(bits: int):
        """The block ``dst[k, i] = src[i, k]`` of one vector's width squared, as an intrinsic
        taking addresses and leading dimensions in elements: whole vectors loaded and stored,
        their blocks swapped in registers, where a copy element by element would write each
        element alone."""

        @intrinsic
        def transpose(typingctx, src, lds, dst, ldd):
            def codegen(context, builder, signature, args):
                v = _Vectors(builder, bits)
                src, lds, dst, ldd = args
                src, dst, L = v.pointer(src), v.pointer(dst), v.width
                rows = [
                    v.load(v.at(src, builder.mul(ir.Constant(v.i64, i), lds))) for i in range(L)
                ]
                h = L // 2
                # Swap the off-diagonal blocks of h x h, [[A, B], [C, D]] -> [[A, C], [B, D]],
                # then within each block at half the size.
                while h:
                    low = [j if j & h == 0 else L + j - h for j in range(L)]
                    high = [j + h if j & h == 0 else L + j for j in range(L)]
                    for i in range(L):
                        if i & h == 0:
                            a, b = rows[i], rows[i + h]
                            rows[i] = builder.shuffle_vector(a, b, _lanes(low))
                            rows[i + h] = builder.shuffle_vector(a, b, _lanes(high))
                    h //= 2
                for k in range(L):
                    out = builder.bitcast(
                        v.at(dst, builder.mul(ir.Constant(v.i64, k), ldd)), v.vec.as_pointer()
                    )
                    builder.store(rows[k], out, align=bits // 8)
                return context.get_dummy_value()

            return types.void(types.uintp, types.intp, types.uintp, types.intp), codegen

        return transpose

    def _lanes(indices):
        return ir.Constant(ir.VectorType(ir.IntType(32), len(indices)), indices)

    _transpose32, _transpose64 = _transpose(32), _transpose(64)

    _T = {
        (bits, v, j, add): _tile(bits, v, j, add)
        for bits in (32, 64)
        for v, j in ((4, SEQUENCES), (4, 1), (1, SEQUENCES), (1, 1))
        for add in (False, True)
    }
    # Compiled code calls intrinsics by name: one global each.
    _s4x, _s4xa, _s4, _s4a, _s1x, _s1xa, _s1, _s1a = (
        _T[32, v, j, a] for v, j in ((4, 4), (4, 1), (1, 4), (1, 1)) for a in (0, 1)
    )
    _d4x, _d4xa, _d4, _d4a, _d1x, _d1xa, _d1, _d1a = (
        _T[64, v, j, a] for v, j in ((4, 4), (4, 1), (1, 4), (1, 1)) for a in (0, 1)
    )

    @compiled
    def _tile_at(w, a, lda, c, ldc, K, single, vectors, several, add):
        """The one tile for these sizes (``single``: float32)."""
        if single:
            if vectors == 4 and several:
                _s4xa(w, a, lda, c, ldc, K) if add else _s4x(w, a, lda, c, ldc, K)
            elif vectors == 4:
                _s4a(w, a, lda, c, ldc, K) if add else _s4(w, a, lda, c, ldc, K)
            elif several:
                _s1xa(w, a, lda, c, ldc, K) if add else _s1x(w, a, lda, c, ldc, K)
            else:
                _s1a(w, a, lda, c, ldc, K) if add else _s1(w, a, lda, c, ldc, K)
        elif vectors == 4 and several:
            _d4xa(w, a, lda, c, ldc, K) if add else _d4x(w, a, lda, c, ldc, K)
        elif vectors == 4:
            _d4a(w, a, lda, c, ldc, K) if add else _d4(w, a, lda, c, ldc, K)
        elif several:
            _d1xa(w, a, lda, c, ldc, K) if add else _d1x(w, a, lda, c, ldc, K)
        else:
            _d1a(w, a, lda, c, ldc, K) if add else _d1(w, a, lda, c, ldc, K)

    WIDTH_OF = (0, 0, 0, 0, 16, 0, 0, 0, 8)  # WIDTH as a tuple compiled code can index

    @compiled
    def _tiles(panels, a, c, add):
        """Every whole panel's outputs of ``c (+)= a @ W^T``: four sequences a tile, then the
        rest one at a time."""
        P, K, rows = panels.shape
        J, size = a.shape[0], a.itemsize
        lda, ldc = a.strides[0] // size, c.strides[0] // size
        vectors = rows // WIDTH_OF[size]
        several = J // SEQUENCES * SEQUENCES
        for p in range(P):
            w = panels[p].ctypes.data
            for j in range(0, J, SEQUENCES):
                many = j < several
                aj, cj = a[j:].ctypes.data, c[j:, p * rows :].ctypes.data
                if many:
                    _tile_at(w, aj, lda, cj, ldc, K, size == 4, vectors, many, add)
                else:
                    for i in range(j, J):
                        ai, ci = a[i:].ctypes.data, c[i:, p * rows :].ctypes.data
                        _tile_at(w, ai, lda, ci, ldc, K, size == 4, vectors, False, add)

    @compiled
    def _pack(w, panels):
        P, K, rows = panels.shape
        size = w.itemsize
        L = WIDTH_OF[size]
        by_blocks = K // L * L if w.strides[1] == size and rows % L == 0 else 0
        lds = w.strides[0] // size
        for p in range(P):
            for r in range(0, rows if by_blocks else 0, L):  # W's rows: blocks of L x L
                for k in range(0, by_blocks, L):
                    src, dst = w[p * rows + r :, k:].ctypes.data, panels[p, k:, r:].ctypes.data
                    if size == 4:
                        _transpose32(src, lds, dst, rows)
                    else:
                        _transpose64(src, lds, dst, rows)
            for k in range(by_blocks, K):  # the rest, or a transposed view: along its columns
                for r in range(rows):
                    panels[p, k, r] = w[p * rows + r, k]

    @compiled
    def product(panels, w, a, c, beta):
        """``c = a @ w^T + beta * c`` (beta 0 or 1) for 2-D views, rows of ``a`` and ``c``
        contiguous, ``panels`` = :func:`pack` of ``w`` (or empty: all by BLAS)."""
        rows = panels.shape[2] if panels.size > 0 else 0
        full = panels.shape[0] * rows if rows > 0 and a.strides[1] == a.itemsize else 0
        if full > 0 and c.strides[1] == c.itemsize:
            _tiles(panels, a, c, beta != 0)
        else:
            full = 0
        if full < w.shape[0] and a.shape[0] == 1:  # a GEMM would pack W on every call
            gemv(w[full:], a[0], c[0, full:], beta)
        elif full < w.shape[0]:  # the outputs past the last whole panel, or all
            gemm(a, w[full:].T, c[:, full:], beta)

else:

    def _pack(w, panels):
        panels[...] = w.reshape(panels.shape[0], panels.shape[2], -1).transpose(0, 2, 1)

    def product(panels, w, a, c, beta):
        """``c = a @ w^T + beta * c`` (NumPy, where Numba is missing)."""
        gemm(a, w.T, c, beta)
