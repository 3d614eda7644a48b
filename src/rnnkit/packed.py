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


def pack(w: np.ndarray, rows: int) -> np.ndarray:
    """The whole panels of ``rows`` rows of ``w (M, K)`` (any 2-D view, a transposed one
    too), each stored column by column: ``(M // rows, K, rows)``; the last ``M % rows`` rows
    are left to BLAS."""
    panels = np.empty((w.shape[0] // rows, w.shape[1], rows), dtype=w.dtype)
    _pack(w, panels)
    return panels


def tile_rows(columns: int, itemsize: int) -> int:
    """The panel height for products with ``columns`` columns: two vectors a tile where the
    columns fill them (fewer loads a multiply-add), else one; 0: too few columns to pack."""
    width = WIDTH[itemsize]
    if columns >= 2 * width and columns % (2 * width) == 0:
        return 8
    return 16 if columns >= width else 0


if numba is not None:

    def _tile(bits: int, rows: int, vectors: int, add: bool):
        """The tile ``c[:rows, :vectors*width] (+)= panel @ b[:, :vectors*width]`` (K deep),
        as an intrinsic taking addresses and leading dimensions in elements."""
        width = 512 // bits

        @intrinsic
        def tile(typingctx, panel, b, ldb, c, ldc, K):
            sig = types.void(types.uintp, types.uintp, types.intp, types.uintp, types.intp,
                             types.intp)  # fmt: skip

            def codegen(context, builder, signature, args):
                panel, b, ldb, c, ldc, K = args
                real = ir.FloatType() if bits == 32 else ir.DoubleType()
                vec, i64 = ir.VectorType(real, width), ir.IntType(64)
                fma = cgutils.get_or_insert_function(
                    builder.module, ir.FunctionType(vec, [vec] * 3), f"llvm.fma.v{width}f{bits}"
                )
                panel, b, c = (builder.inttoptr(p, real.as_pointer()) for p in (panel, b, c))
                zero, splat = (
                    ir.Constant(vec, [0.0] * width),
                    ir.Constant(ir.VectorType(ir.IntType(32), width), [0] * width),
                )
                sums = [
                    [cgutils.alloca_once_value(builder, zero) for _ in range(vectors)]
                    for _ in range(rows)
                ]  # fmt: skip  (registers, once LLVM is done)
                with cgutils.for_range(builder, K) as loop:
                    b_row = builder.gep(b, [builder.mul(loop.index, ldb)])
                    columns = [
                        builder.load(builder.bitcast(
                            builder.gep(b_row, [ir.Constant(i64, v * width)]),
                            vec.as_pointer()), align=bits // 8)
                        for v in range(vectors)
                    ]  # fmt: skip
                    w_col = builder.gep(panel, [builder.mul(loop.index, ir.Constant(i64, rows))])
                    for r in range(rows):
                        w = builder.load(builder.gep(w_col, [ir.Constant(i64, r)]))
                        w = builder.insert_element(ir.Constant(vec, ir.Undefined), w,
                                                   ir.Constant(ir.IntType(32), 0))  # fmt: skip
                        w = builder.shuffle_vector(w, ir.Constant(vec, ir.Undefined), splat)
                        for v in range(vectors):
                            s = sums[r][v]
                            builder.store(builder.call(fma, [w, columns[v], builder.load(s)]), s)
                for r in range(rows):
                    c_row = builder.gep(c, [builder.mul(ir.Constant(i64, r), ldc)])
                    for v in range(vectors):
                        at = builder.bitcast(builder.gep(c_row, [ir.Constant(i64, v * width)]),
                                             vec.as_pointer())  # fmt: skip
                        value = builder.load(sums[r][v])
                        if add:
                            value = builder.fadd(builder.load(at, align=bits // 8), value)
                        builder.store(value, at, align=bits // 8)
                return context.get_dummy_value()

            return sig, codegen

        return tile

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
        ``w`` (or empty: all by BLAS); one column by BLAS's vector product."""
        N = b.shape[1]
        if N == 1:
            gemv(w, b[:, 0], c[:, 0], beta)
            return
        rows = panels.shape[2] if panels.size > 0 else 0
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
