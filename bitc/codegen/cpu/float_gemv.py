"""Float GEMV (one activation row × a constant weight matrix) over weights re-blocked to stream from memory, and
a GEMM for a few rows over the same blocks.

A decode step multiplies one row by every weight matrix once: the weights come from DRAM and the step is as fast
as they stream. In the [K, N] layout a tile of output columns reads a short piece of every row (N·4 bytes apart),
which the hardware prefetchers follow poorly (SmolLM2's decode ran its MatMuls at ~11 GB/s). Re-blocked at
compile time to [N / 64, K, 64], each tile of 64 outputs reads one contiguous block, front to back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from bitc.codegen.registry import kernel_attrs

TILE = 64  # output columns per tile: four 16-lane accumulators
LANES = 16
MIN_WEIGHTS = 1 << 16  # smaller matrices stay in cache; the ordinary schedule is as fast there
# 512 KiB of weights stream in tens of µs, a parallel launch costs a few (SmolLM2 2-thread decode 40 → 62 tokens/s)
PARALLEL_MIN_WEIGHTS = 1 << 17
GEMM_MAX_ROWS = 64  # a prefill chunk, a recognizer's sequence: measured faster than the ordinary schedule
GEMM_ROWS = 6  # rows of a gemm register tile: 6 × 4 accumulators + 4 weight vectors of 32 registers


def is_streamed_gemv(node: ir.Node) -> bool:
    """A standard MatMul of one activation row ([1, …, 1, K]) by a constant float32 [K, N] matrix."""
    return blocked_rows(node) == 1


def blocked_rows(node: ir.Node) -> int:
    """The activation rows of a standard MatMul by a constant float32 [K, N] matrix (K·N >= MIN_WEIGHTS) that runs
    over re-blocked weights: 1 (the streamed GEMV) up to GEMM_MAX_ROWS (the few-row GEMM); 0 for any other."""
    if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
        return 0
    x, weights = node.inputs
    if x is None or weights is None or weights.const_value is None or x.shape is None or x.dtype is None:
        return 0
    if len(weights.shape) != 2 or weights.dtype != ir.DataType.FLOAT or x.dtype != ir.DataType.FLOAT:
        return 0
    try:
        rows = int(np.prod([int(d) for d in x.shape[:-1]]))
    except (TypeError, ValueError):
        return 0
    k, n = (int(d) for d in weights.shape)
    if int(x.shape[-1]) != k or k * n < MIN_WEIGHTS or not 1 <= rows <= GEMM_MAX_ROWS:
        return 0
    return rows


def is_blocked_matmul(node: ir.Node) -> bool:
    """Whether the MatMul runs over re-blocked weights (the emitter's registry condition)."""
    return blocked_rows(node) > 0


def block_weights(weights: np.ndarray) -> np.ndarray:
    """[K, N] → [⌈N/64⌉, K, 64] (columns past N are zero)."""
    k, n = weights.shape
    tiles = -(-n // TILE)
    padded = np.zeros((k, tiles * TILE), np.float32)
    padded[:, :n] = weights
    return np.ascontiguousarray(padded.reshape(k, tiles, TILE).transpose(1, 0, 2))


def gemv(in_features: int, tiles: int, num_cores: int) -> tirx.PrimFunc:
    """x [1, K], weights [tiles, K, 64] → y [1, tiles·64]; tiles in parallel when the matrix is large."""
    from tvm.script import tirx as T

    K = in_features
    chunks = TILE // LANES
    loop = T.parallel if num_cores > 1 and tiles * TILE * K >= PARALLEL_MIN_WEIGHTS else T.serial

    @T.prim_func
    def kernel(
        x: T.Buffer((1, K), "float32"),
        weights: T.Buffer((tiles, K, TILE), "float32"),
        y: T.Buffer((1, tiles * TILE), "float32"),
    ):
        T.func_attr({"tir.noalias": True})
        for tile in loop(tiles):
            acc = T.alloc_buffer((TILE,), "float32")  # small "global" buffer: on the stack, kept in registers
            for c in T.unroll(chunks):
                acc[T.ramp(c * LANES, 1, LANES)] = T.Broadcast(T.float32(0), LANES)
            for k in T.serial(K):
                for c in T.unroll(chunks):
                    acc[T.ramp(c * LANES, 1, LANES)] = (
                        acc[T.ramp(c * LANES, 1, LANES)]
                        + T.Broadcast(x[0, k], LANES) * weights[tile, k, T.ramp(c * LANES, 1, LANES)]
                    )
            for c in T.unroll(chunks):
                y[0, T.ramp(tile * TILE + c * LANES, 1, LANES)] = acc[T.ramp(c * LANES, 1, LANES)]

    attrs = kernel_attrs("float_gemv", scheduled=True)
    return kernel.without_attr("global_symbol").with_attr(attrs)


def gemm(rows: int, in_features: int, tiles: int, num_cores: int) -> tirx.PrimFunc:
    """x [rows, K], weights [tiles, K, 64] → y [rows, tiles·64], for a few rows (a prefill chunk) over the
    weights the one-row step streams, so one artifact holding both keeps one copy of them. Register tiles of
    6 rows × 64 columns (24 vector accumulators, in three buffers of two rows: TVM keeps a buffer on the stack,
    where LLVM promotes it to registers, only below 1 KiB); a tile's weight block stays in cache while every row
    block passes over it, and the row blocks after the first prefetch the next tile's block, so its trip from
    memory overlaps this tile's arithmetic (without it the GEMM ran at half speed inside a model, where the weights
    come from DRAM). Rows past the last are computed from the last row and not stored."""
    from tvm.script import tirx as T

    K, M, MR = in_features, rows, GEMM_ROWS
    blocks = -(-M // MR)
    LINE_CHUNKS = TILE * 4 // 64  # 64-byte cache lines per weight row of a tile
    LINES = K * LINE_CHUNKS  # cache lines of one tile's weights
    PREFETCH = -(-LINES // max((blocks - 1) * K, 1))  # lines to prefetch per step of the later row blocks
    chunks = TILE // LANES
    loop = T.parallel if num_cores > 1 else T.serial

    def row(block: tirx.Expr, r: int) -> tirx.Expr:
        return T.min(block * MR + r, M - 1)

    def lanes(r: int, c: int) -> tirx.Expr:
        return T.ramp(r * TILE + c * LANES, 1, LANES)

    @T.prim_func
    def kernel(
        x: T.Buffer((M, K), "float32"),
        weights: T.Buffer((tiles, K, TILE), "float32"),
        y: T.Buffer((M, tiles * TILE), "float32"),
    ):
        T.func_attr({"tir.noalias": True})
        for tile in loop(tiles):
            for block in T.serial(blocks):
                acc0 = T.alloc_buffer((2 * TILE,), "float32")
                acc1 = T.alloc_buffer((2 * TILE,), "float32")
                acc2 = T.alloc_buffer((2 * TILE,), "float32")
                for r in T.unroll(2):
                    for c in T.unroll(chunks):
                        acc0[lanes(r, c)] = T.Broadcast(T.float32(0), LANES)
                        acc1[lanes(r, c)] = T.Broadcast(T.float32(0), LANES)
                        acc2[lanes(r, c)] = T.Broadcast(T.float32(0), LANES)
                for k in T.serial(K):
                    if block > 0:  # the next tile's weights, a few cache lines per step, while this one computes
                        for p in T.unroll(PREFETCH):
                            line = T.min(((block - 1) * K + k) * PREFETCH + p, LINES - 1)
                            T.evaluate(
                                T.call_llvm_intrin(
                                    "void",
                                    "llvm.prefetch.p0",
                                    T.address_of(
                                        weights[
                                            T.min(tile + 1, tiles - 1), line // LINE_CHUNKS, line % LINE_CHUNKS * 16
                                        ]
                                    ),
                                    T.int32(0),
                                    T.int32(3),
                                    T.int32(1),
                                )
                            )
                    for r in T.unroll(2):
                        for c in T.unroll(chunks):
                            acc0[lanes(r, c)] = (
                                acc0[lanes(r, c)]
                                + T.Broadcast(x[row(block, r), k], LANES)
                                * weights[tile, k, T.ramp(c * LANES, 1, LANES)]
                            )
                            acc1[lanes(r, c)] = (
                                acc1[lanes(r, c)]
                                + T.Broadcast(x[row(block, r + 2), k], LANES)
                                * weights[tile, k, T.ramp(c * LANES, 1, LANES)]
                            )
                            acc2[lanes(r, c)] = (
                                acc2[lanes(r, c)]
                                + T.Broadcast(x[row(block, r + 4), k], LANES)
                                * weights[tile, k, T.ramp(c * LANES, 1, LANES)]
                            )
                for r in T.unroll(2):
                    for c in T.unroll(chunks):
                        if block * MR + r < M:
                            y[block * MR + r, T.ramp(tile * TILE + c * LANES, 1, LANES)] = acc0[lanes(r, c)]
                        if block * MR + r + 2 < M:
                            y[block * MR + r + 2, T.ramp(tile * TILE + c * LANES, 1, LANES)] = acc1[lanes(r, c)]
                        if block * MR + r + 4 < M:
                            y[block * MR + r + 4, T.ramp(tile * TILE + c * LANES, 1, LANES)] = acc2[lanes(r, c)]

    attrs = kernel_attrs("float_gemm", scheduled=True)
    return kernel.without_attr("global_symbol").with_attr(attrs)


def gemm_narrow(rows: int, in_features: int, tiles: int, num_cores: int) -> tirx.PrimFunc:
    """`gemm` for CPUs with 16 vector registers (AVX2): the 6 × 64 register tile is 48 ymm accumulators there,
    and its spills ran SmolLM2's prefill GEMMs at 13 G multiply-adds/s on a Zen 3 core. Here each 64-column tile
    is done in halves of 32 columns and blocks of up to 64 inputs (8 KiB of weights, in L1), two rows at a time
    (8 accumulators), the partial sums kept in y. Same weights, same result layout."""
    from tvm.script import tirx as T

    K, M = in_features, rows
    half, pairs = TILE // 2, -(-rows // 2)
    chunks = half // LANES
    depth = next(d for d in (64, 48, 32, 16, 8, 4, 2, 1) if K % d == 0)  # inputs per block
    loop = T.parallel if num_cores > 1 else T.serial

    def lanes(r: int, c: int) -> tirx.Expr:
        return T.ramp(r * half + c * LANES, 1, LANES)

    def columns(tile: tirx.Expr, h: tirx.Expr, c: int) -> tirx.Expr:
        return T.ramp(tile * TILE + h * half + c * LANES, 1, LANES)

    @T.prim_func
    def kernel(
        x: T.Buffer((M, K), "float32"),
        weights: T.Buffer((tiles, K, TILE), "float32"),
        y: T.Buffer((M, tiles * TILE), "float32"),
    ):
        T.func_attr({"tir.noalias": True})
        for tile in loop(tiles):
            for h in T.serial(2):
                for m in T.serial(M):
                    for c in T.unroll(chunks):
                        y[m, columns(tile, h, c)] = T.Broadcast(T.float32(0), LANES)
                for block in T.serial(K // depth):
                    for p in T.serial(pairs):
                        acc = T.alloc_buffer((2 * half,), "float32")
                        for c in T.unroll(chunks):
                            acc[lanes(0, c)] = y[2 * p, columns(tile, h, c)]
                            acc[lanes(1, c)] = y[T.min(2 * p + 1, M - 1), columns(tile, h, c)]
                        for k in T.serial(depth):
                            for c in T.unroll(chunks):
                                acc[lanes(0, c)] = (
                                    acc[lanes(0, c)]
                                    + T.Broadcast(x[2 * p, block * depth + k], LANES)
                                    * weights[tile, block * depth + k, T.ramp(h * half + c * LANES, 1, LANES)]
                                )
                                acc[lanes(1, c)] = (
                                    acc[lanes(1, c)]
                                    + T.Broadcast(x[T.min(2 * p + 1, M - 1), block * depth + k], LANES)
                                    * weights[tile, block * depth + k, T.ramp(h * half + c * LANES, 1, LANES)]
                                )
                        for c in T.unroll(chunks):
                            y[2 * p, columns(tile, h, c)] = acc[lanes(0, c)]
                            if 2 * p + 1 < M:
                                y[2 * p + 1, columns(tile, h, c)] = acc[lanes(1, c)]

    attrs = kernel_attrs("float_gemm", scheduled=True)
    return kernel.without_attr("global_symbol").with_attr(attrs)


# imported last, so that no line above moves: the kernel's source lines end up in the compiled artifacts
if TYPE_CHECKING:
    from tvm import tirx
