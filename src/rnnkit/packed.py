"""The recurrent product of one step, ``c (+)= W @ b``, with W packed once per call and kept in
cache: the product every step of a chunk repeats with the same weights and a few columns.

OpenBLAS packs both operands on every call; for a step's product (W of 4H x H, b of H x 16)
that copy of W is a third of the time, and the two threads of a layer then fight over the
cache for it. Packed once, W stays in each core's cache and the product runs near the core's
peak. The packed layout is panels of ``rows`` rows, each stored column by column (``(M /
rows, K, rows)``); a tile of ``rows`` rows and one or two vectors of columns keeps its sums
in registers (AVX-512: 16 float32 or 8 float64 a vector), one fused multiply-add per element
of W and column vector. Rows and columns past the last whole tile go to BLAS.

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
TILES = {16: 1, 8: 2}  # rows of a packed panel -> vectors of columns its tile keeps
VECTORS = (16, 4, 1)  # vectors of rows a tile of one column keeps


def pack(w: np.ndarray, rows: int) -> np.ndarray:
    """The whole panels of ``rows`` rows of ``w (M, K)`` (any 2-D view, a transposed one
    too), each stored column by column: ``(M // rows, K, rows)``; the last ``M % rows`` rows
    are left to BLAS."""
    panels = np.empty((w.shape[0] // rows, w.shape[1], rows), dtype=w.dtype)
    _pack(w, panels)
    return panels


def tile_rows(rows: int, columns: int, itemsize: int) -> int:
    """The panel height for products of a ``rows``-row W with ``columns`` columns: two
    vectors of columns a tile where they fill them (fewer loads a multiply-add), else one;
    for one column, 16, 4 or 1 vectors of rows (its panels are then W^T in blocks); 0: too
    few to pack."""
    width = WIDTH[itemsize]
    if columns == 1:
        return next((v * width for v in VECTORS if v * width <= rows), 0)
    if columns >= 2 * width and columns % (2 * width) == 0:
        return 8
    return 16 if columns >= width else 0


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

    _ADDRESSES = (types.uintp, types.uintp, types.intp, types.uintp, types.intp, types.intp)

    def _tile(bits: int, rows: int, vectors: int, add: bool):
        """The tile ``c[:rows, :vectors*width] (+)= panel @ b[:, :vectors*width]`` (K deep),
        as an intrinsic taking addresses and leading dimensions in elements."""

        @intrinsic
        def tile(typingctx, panel, b, ldb, c, ldc, K):
            def codegen(context, builder, signature, args):
                v = _Vectors(builder, bits)
                panel, b, ldb, c, ldc, K = args
                panel, b, c = v.pointer(panel), v.pointer(b), v.pointer(c)
                sums = [[v.sum() for _ in range(vectors)] for _ in range(rows)]
                with cgutils.for_range(builder, K) as loop:
                    b_row = v.at(b, builder.mul(loop.index, ldb))
                    columns = [v.load(v.at(b_row, j * v.width)) for j in range(vectors)]
                    w_col = v.at(panel, builder.mul(loop.index, ir.Constant(v.i64, rows)))
                    for r in range(rows):
                        w = v.splat(v.at(w_col, r))  # W[r, k], in every lane
                        for j in range(vectors):
                            v.add_product(sums[r][j], w, columns[j])
                for r in range(rows):
                    c_row = v.at(c, builder.mul(ir.Constant(v.i64, r), ldc))
                    for j in range(vectors):
                        v.store(v.at(c_row, j * v.width), sums[r][j], add)
                return context.get_dummy_value()

            return types.void(*_ADDRESSES), codegen

        return tile

    def _column_tile(bits: int, vectors: int, add: bool):
        """The tile ``c[:vectors*width] (+)= panel @ b`` for one column: the panel is W^T's
        block (K, vectors*width), one multiply-add per vector of W and element of b."""

        @intrinsic
        def tile(typingctx, panel, b, incb, c, K):
            def codegen(context, builder, signature, args):
                v = _Vectors(builder, bits)
                panel, b, incb, c, K = args
                panel, b, c = v.pointer(panel), v.pointer(b), v.pointer(c)
                sums = [v.sum() for _ in range(vectors)]
                rows = ir.Constant(v.i64, vectors * v.width)
                with cgutils.for_range(builder, K) as loop:
                    b_k = v.splat(v.at(b, builder.mul(loop.index, incb)))  # b[k], in every lane
                    w_row = v.at(panel, builder.mul(loop.index, rows))
                    for j in range(vectors):
                        v.add_product(sums[j], v.load(v.at(w_row, j * v.width)), b_k)
                for j in range(vectors):
                    v.store(v.at(c, j * v.width), sums[j], add)
                return context.get_dummy_value()

            return types.void(*_ADDRESSES[:5]), codegen

        return tile

    _COLUMN = {
        (bits, v, add): _column_tile(bits, v, add)
        for bits in (32, 64)
        for v in VECTORS
        for add in (False, True)
    }
    _c32_16, _c32_16a, _c32_4, _c32_4a, _c32_1, _c32_1a = (
        _COLUMN[32, v, a] for v in VECTORS for a in (0, 1)
    )
    _c64_16, _c64_16a, _c64_4, _c64_4a, _c64_1, _c64_1a = (
        _COLUMN[64, v, a] for v in VECTORS for a in (0, 1)
    )

    _TILES = {
        (bits, rows, add): _tile(bits, rows, TILES[rows], add)
        for bits in (32, 64)
        for rows in TILES
        for add in (False, True)
    }
    _t32_16, _t32_16a, _t32_8, _t32_8a = (_TILES[32, r, a] for r in (16, 8) for a in (0, 1))
    _t64_16, _t64_16a, _t64_8, _t64_8a = (_TILES[64, r, a] for r in (16, 8) for a in (0, 1))
    WIDTH_OF = (0, 0, 0, 0, 16, 0, 0, 0, 8)  # WIDTH as a tuple compiled code can index

    @compiled
    def _tile_at(w, bj, ldb, cj, ldc, K, itemsize, rows, add):
        if itemsize == 4 and rows == 16:
            if add:
                _t32_16a(w, bj, ldb, cj, ldc, K)
            else:
                _t32_16(w, bj, ldb, cj, ldc, K)
        elif itemsize == 4:
            if add:
                _t32_8a(w, bj, ldb, cj, ldc, K)
            else:
                _t32_8(w, bj, ldb, cj, ldc, K)
        elif rows == 16:
            if add:
                _t64_16a(w, bj, ldb, cj, ldc, K)
            else:
                _t64_16(w, bj, ldb, cj, ldc, K)
        elif add:
            _t64_8a(w, bj, ldb, cj, ldc, K)
        else:
            _t64_8(w, bj, ldb, cj, ldc, K)

    @compiled
    def _column_at(w, bj, incb, cj, K, itemsize, vectors, add):
        if itemsize == 4:
            if vectors == 16:
                _c32_16a(w, bj, incb, cj, K) if add else _c32_16(w, bj, incb, cj, K)
            elif vectors == 4:
                _c32_4a(w, bj, incb, cj, K) if add else _c32_4(w, bj, incb, cj, K)
            else:
                _c32_1a(w, bj, incb, cj, K) if add else _c32_1(w, bj, incb, cj, K)
        elif vectors == 16:
            _c64_16a(w, bj, incb, cj, K) if add else _c64_16(w, bj, incb, cj, K)
        elif vectors == 4:
            _c64_4a(w, bj, incb, cj, K) if add else _c64_4(w, bj, incb, cj, K)
        else:
            _c64_1a(w, bj, incb, cj, K) if add else _c64_1(w, bj, incb, cj, K)

    @compiled
    def _column_tiles(panels, b, c, add):
        """Every whole tile of ``c (+)= W b`` for one column, from W^T's packed blocks."""
        P, K, rows = panels.shape
        vectors = rows // WIDTH_OF[b.itemsize]
        incb = b.strides[0] // b.itemsize
        for p in range(P):
            _column_at(panels[p].ctypes.data, b.ctypes.data, incb, c[p * rows :].ctypes.data,
                       K, b.itemsize, vectors, add)  # fmt: skip

    @compiled
    def _tiles(panels, b, c, columns, add):
        """Every whole tile of ``c[:, :columns] (+)= W b`` from the packed panels."""
        P, K, rows = panels.shape
        ldb, ldc = b.strides[0] // b.itemsize, c.strides[0] // c.itemsize
        step = WIDTH_OF[b.itemsize] * (2 if rows == 8 else 1)
        for p in range(P):
            w = panels[p].ctypes.data
            for j in range(0, columns, step):
                bj, cj = b[0, j:].ctypes.data, c[p * rows, j:].ctypes.data
                _tile_at(w, bj, ldb, cj, ldc, K, b.itemsize, rows, add)

    @compiled
    def _pack(w, panels):
        P, K, rows = panels.shape
        for p in range(P):
            for k in range(K):
                for r in range(rows):
                    panels[p, k, r] = w[p * rows + r, k]

    @compiled
    def product(panels, w, b, c, beta):
        """``c = w @ b + beta * c`` (beta 0 or 1) for 2-D views, ``panels`` = :func:`pack` of
        ``w`` (or empty: all by BLAS)."""
        N = b.shape[1]
        rows = panels.shape[2] if panels.size > 0 else 0
        if N == 1:
            one = rows > 0 and rows % WIDTH_OF[b.itemsize] == 0 and c.strides[0] == c.itemsize
            if one:
                _column_tiles(panels, b[:, 0], c[:, 0], beta != 0)
            full = panels.shape[0] * rows if one else 0
            if full < w.shape[0]:  # the rows past the last whole block, or all
                gemv(w[full:], b[:, 0], c[full:, 0], beta)
            return
        width = WIDTH_OF[b.itemsize] * (2 if rows == 8 else 1)
        columns = N // width * width if rows > 0 else 0
        if columns == 0:
            gemm(w, b, c, beta)
            return
        _tiles(panels, b, c, columns, beta != 0)
        full = panels.shape[0] * rows
        if columns < N:  # the columns past the last whole tile
            gemm(w[:full], b[:, columns:], c[:full, columns:], beta)
        if full < w.shape[0]:  # the rows past the last whole panel
            gemm(w[full:], b, c[full:], beta)
