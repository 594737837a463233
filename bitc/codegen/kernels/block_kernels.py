"""Kernels of BlockQuantMatMul: float activations × 4- or 8-bit block-quantized weights (scale · q + offset).

Weights are re-blocked at compile time to stream like the float GEMV's (`cpu.float_gemv`): a tile of `tile`
output columns reads one contiguous run of codes, front to back, with its scales and offsets beside it. Each
column's codes for 8 (4-bit) or 4 (8-bit) consecutive inputs share a 32-bit word, and a tile's words for the same
inputs sit side by side, so one vector load serves `per_word` inputs and a code becomes a float lane by a shift,
a mask and a convert: no byte shuffles (widening bytes across lanes ran the 4-bit GEMV at a third of the speed).

One row (a decode step): per block, acc = Σₖ xₖ · q (integer codes widened to float, one FMA per weight), then
y += scale · acc + offset · Σₖ xₖ, so the scales and offsets cost one FMA per block, not per weight. Signed codes
are stored plus a bias (unsigned), taken back out per block as bias · Σₖ xₖ. Several rows
(a prefill chunk): each tile's block is dequantized once into a small buffer that every row then multiplies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from bitc.codegen.registry import kernel_attrs

LANES = 16  # floats per TIR vector (one zmm; two ymm on AVX2)
# 512 KiB of weights stream in tens of µs, a parallel launch costs a few
PARALLEL_MIN_WEIGHTS = 1 << 17


@dataclass(frozen=True)
class BlockWeights:
    """One matrix as the kernels read it: `tiles` tiles of `tile` columns (`block_codes`, `block_scales`)."""

    in_features: int
    block_size: int
    bits: int
    tiles: int
    tile: int
    signed: bool
    scale_dtype: str  # of the scales and offsets: "float16" or "float32"
    with_offsets: bool

    @property
    def per_word(self) -> int:
        return codes_per_word(self.bits)

    @property
    def blocks(self) -> int:
        return self.in_features // self.block_size

    @property
    def groups(self) -> int:
        """32-bit words per block and column."""
        return self.block_size // self.per_word

    @property
    def vectors(self) -> int:
        return self.tile // LANES


def tile_columns(vector_lanes: int) -> int:
    """Output columns per tile: four vector accumulators plus four running totals fit the register file (16
    ymm on AVX2: 32 columns; 32 zmm on AVX-512: 64)."""
    return 64 if vector_lanes >= 16 else 32


def codes_per_word(bits: int) -> int:
    return 32 // bits


def bias(bits: int) -> int:
    """What signed codes are stored plus: 8 for 4-bit, 128 for 8-bit."""
    return 1 << (bits - 1)


def in_place_exponent(bits: int, index: tirx.Expr) -> tirx.Expr:
    """Where the GEMV leaves code `index` of a word (an expression: the kernel's unrolled loop variable, or the
    input's position in its word): at bit bits·index (masked in place, no shift), except the top one, shifted
    down one code width so the masked value stays below 2³¹ (a signed int32 converts in one instruction)."""
    from tvm import tirx

    top = index == codes_per_word(bits) - 1
    return bits * (index - tirx.Select(top, 1, 0))


def block_codes(codes: np.ndarray, bits: int, tile: int, signed: bool = False) -> np.ndarray:
    """Canonical codes [N, K·bits/8] → words [⌈N/tile⌉, K / per_word, tile] uint32: word (g, n) holds column n's
    codes for inputs g·per_word + i at bits i·bits, signed codes biased by 2^(bits−1) to unsigned (columns past N
    hold code 0, their scales are 0)."""
    from bitc.ops.block_matmul import unpack_codes

    per_word = codes_per_word(bits)
    q = (unpack_codes(codes, bits, signed).astype(np.int64) + (bias(bits) if signed else 0)) & ((1 << bits) - 1)
    rows, k = q.shape
    tiles = -(-rows // tile)
    padded = np.zeros((tiles * tile, k), np.int64)
    padded[:rows] = q
    shifted = padded.reshape(tiles * tile, k // per_word, per_word) << (np.arange(per_word) * bits)
    words = shifted.sum(axis=2).astype(np.uint32)  # [tiles·tile, K / per_word]
    return np.ascontiguousarray(words.reshape(tiles, tile, k // per_word).transpose(0, 2, 1))


def block_scales(scales: np.ndarray, tile: int) -> np.ndarray:
    """Scales or offsets [N, K/B] → [⌈N/tile⌉, K/B, tile] (padded columns 0), in their own float type."""
    rows, blocks = scales.shape
    tiles = -(-rows // tile)
    padded = np.zeros((tiles * tile, blocks), scales.dtype)
    padded[:rows] = scales
    return np.ascontiguousarray(padded.reshape(tiles, tile, blocks).transpose(0, 2, 1))


def block_sums(x: te.Tensor, block_size: int) -> te.Tensor:
    """x [M, K] → [M, K/B]: each block's sum of inputs, which multiplies the block's offset."""
    from tvm import te

    rows, in_features = (int(d) for d in x.shape)
    k = te.reduce_axis((0, block_size), name="k")
    return te.compute(
        (rows, in_features // block_size),
        lambda m, b: te.sum(x[m, b * block_size + k], axis=k),
        name="block_sums",
    )


def _code(word: tirx.Expr, bits: int, index: tirx.Expr, signed: bool) -> tirx.Expr:
    """Code `index` (an unrolled loop variable, so the shifts become immediates) of each lane's word as float
    lanes: a shift and a mask, minus the bias of signed codes (exact integers, then converted)."""
    from tvm.script import tirx as T

    down = T.shift_right(word, T.Broadcast(T.Cast("uint32", bits * index), LANES))
    code = T.reinterpret("int32x16", down & T.Broadcast(T.uint32((1 << bits) - 1), LANES))
    if signed:
        code = code - T.Broadcast(T.int32(bias(bits)), LANES)
    return T.Cast("float32x16", code)


def _code_in_place(word: tirx.Expr, bits: int, index: tirx.Expr) -> tirx.Expr:
    """Code `index` as q · 2^e (e = `in_place_exponent`): a mask in place, one shift only for the top code; the
    GEMV multiplies it by x · 2^−e, so the product is x · q, rounded once, as without the scaling."""
    from tvm.script import tirx as T

    exponent = in_place_exponent(bits, index)
    down = T.shift_right(word, T.Broadcast(T.Cast("uint32", bits * index - exponent), LANES))
    mask = T.shift_left(T.Broadcast(T.uint32((1 << bits) - 1), LANES), T.Broadcast(T.Cast("uint32", exponent), LANES))
    return T.Cast("float32x16", T.reinterpret("int32x16", down & mask))


def scaled_inputs(x: te.Tensor, bits: int) -> te.Tensor:
    """x [M, K] → x[k] · 2^−e(k mod per_word): each input scaled to meet its code where the GEMV leaves it.
    Multiplying by a power of two is exact while the result stays a normal float (|x| ≥ 2^−102 for 4-bit
    codes; anything smaller contributes below the sum's own rounding)."""
    from tvm import te, tirx

    per_word = codes_per_word(bits)

    def scaled(m: tirx.Var, k: tirx.Var) -> tirx.Expr:
        exponent = in_place_exponent(bits, k % per_word)
        power = tirx.reinterpret("float32", ((127 - exponent) << 23).astype("int32"))
        return x[m, k] * power

    return te.compute(x.shape, scaled, name="scaled_inputs")


def _dims(weights: BlockWeights) -> tuple[int, int, int, int, int, int]:
    """K, B, codes per word, bits, tiles, tile: the sizes the kernels' TVMScript bodies name."""
    return weights.in_features, weights.block_size, weights.per_word, weights.bits, weights.tiles, weights.tile


def _parallel(rows: int, weights: BlockWeights, num_cores: int) -> bool:
    return num_cores > 1 and weights.tiles * weights.tile * weights.in_features * rows >= PARALLEL_MIN_WEIGHTS


def block_gemv(weights: BlockWeights, num_cores: int) -> tirx.PrimFunc:
    """Scaled inputs [1, K] (`scaled_inputs`), code words [tiles, K / per_word, tile], scales (and offsets)
    [tiles, K/B, tile], block sums of the unscaled inputs [1, K/B] → y [1, tiles·tile]. Per code: a mask, a
    convert and an FMA (the shift is folded into the input's scale)."""
    from tvm.script import tirx as T

    K, B, P, bits, tiles, tile = _dims(weights)
    blocks, vectors, groups = weights.blocks, weights.vectors, weights.groups
    signed, scale_dtype, with_offsets = weights.signed, weights.scale_dtype, weights.with_offsets
    loop = T.parallel if _parallel(1, weights, num_cores) else T.serial

    def lanes(v: int) -> tirx.Expr:
        return T.ramp(v * LANES, 1, LANES)

    @T.prim_func
    def kernel(
        x: T.Buffer((1, K), "float32"),
        codes: T.Buffer((tiles, K // P, tile), "uint32"),
        scales: T.Buffer((tiles, blocks, tile), scale_dtype),
        offsets: T.Buffer((tiles, blocks, tile), scale_dtype),
        sums: T.Buffer((1, blocks), "float32"),
        y: T.Buffer((1, tiles * tile), "float32"),
    ):
        T.func_attr({"tir.noalias": True})
        for t in loop(tiles):
            total = T.alloc_buffer((tile,), "float32")  # small "global" buffers: on the stack, in registers
            acc = T.alloc_buffer((tile,), "float32")
            for v in T.unroll(vectors):
                total[lanes(v)] = T.Broadcast(T.float32(0), LANES)
            for b in T.serial(blocks):
                for v in T.unroll(vectors):
                    acc[lanes(v)] = T.Broadcast(T.float32(0), LANES)
                for g in T.serial(groups):
                    for i in T.unroll(P):
                        for v in T.unroll(vectors):
                            acc[lanes(v)] = acc[lanes(v)] + T.Broadcast(
                                x[0, b * B + g * P + i], LANES
                            ) * _code_in_place(codes[t, b * groups + g, lanes(v)], bits, i)
                for v in T.unroll(vectors):
                    if signed:  # codes are stored plus the bias: take bias · Σx back out
                        acc[lanes(v)] = acc[lanes(v)] - T.Broadcast(T.float32(bias(bits)) * sums[0, b], LANES)
                    if with_offsets:
                        total[lanes(v)] = (
                            total[lanes(v)]
                            + T.Cast("float32x16", scales[t, b, lanes(v)]) * acc[lanes(v)]
                            + T.Cast("float32x16", offsets[t, b, lanes(v)]) * T.Broadcast(sums[0, b], LANES)
                        )
                    else:
                        total[lanes(v)] = total[lanes(v)] + T.Cast("float32x16", scales[t, b, lanes(v)]) * acc[lanes(v)]
            for v in T.unroll(vectors):
                y[0, T.ramp(t * tile + v * LANES, 1, LANES)] = total[lanes(v)]

    attrs = kernel_attrs("block_gemv", scheduled=True)
    return kernel.without_attr("global_symbol").with_attr(attrs)


def block_gemm(rows: int, weights: BlockWeights, num_cores: int) -> tirx.PrimFunc:
    """x [M, K], code words [tiles, K / per_word, tile], scales and offsets [tiles, K/B, tile] → y [M, tiles·tile]
    (a prefill chunk): each tile's block is dequantized once (scale · q + offset, exactly as the reference) into
    a buffer of B × tile floats that stays in L1, which every row then multiplies, two rows at a time (8
    accumulators: three rows measured 2× slower on AVX2, where the 16th register spilled one accumulator and its
    store-load chain set the pace)."""
    from tvm.script import tirx as T

    M, (K, B, P, bits, tiles, tile) = rows, _dims(weights)
    blocks, vectors, groups = weights.blocks, weights.vectors, weights.groups
    signed, scale_dtype, with_offsets = weights.signed, weights.scale_dtype, weights.with_offsets
    pairs = -(-M // 2)
    loop = T.parallel if _parallel(M, weights, num_cores) else T.serial

    def lanes(v: int, row: int = 0) -> tirx.Expr:
        return T.ramp(row * tile + v * LANES, 1, LANES)

    def columns(t: tirx.Expr, v: int) -> tirx.Expr:
        return T.ramp(t * tile + v * LANES, 1, LANES)

    @T.prim_func
    def kernel(
        x: T.Buffer((M, K), "float32"),
        codes: T.Buffer((tiles, K // P, tile), "uint32"),
        scales: T.Buffer((tiles, blocks, tile), scale_dtype),
        offsets: T.Buffer((tiles, blocks, tile), scale_dtype),
        y: T.Buffer((M, tiles * tile), "float32"),
    ):
        T.func_attr({"tir.noalias": True})
        for t in loop(tiles):
            w = T.alloc_buffer((B, tile), "float32")
            for m in T.serial(M):
                for v in T.unroll(vectors):
                    y[m, columns(t, v)] = T.Broadcast(T.float32(0), LANES)
            for b in T.serial(blocks):
                for g in T.serial(groups):
                    for i in T.unroll(P):
                        for v in T.unroll(vectors):
                            if with_offsets:
                                w[g * P + i, lanes(v)] = T.Cast("float32x16", scales[t, b, lanes(v)]) * _code(
                                    codes[t, b * groups + g, lanes(v)], bits, i, signed
                                ) + T.Cast("float32x16", offsets[t, b, lanes(v)])
                            else:
                                w[g * P + i, lanes(v)] = T.Cast("float32x16", scales[t, b, lanes(v)]) * _code(
                                    codes[t, b * groups + g, lanes(v)], bits, i, signed
                                )
                for p in T.serial(pairs):
                    acc = T.alloc_buffer((2 * tile,), "float32")
                    for v in T.unroll(vectors):
                        acc[lanes(v)] = y[2 * p, columns(t, v)]
                        acc[lanes(v, 1)] = y[T.min(2 * p + 1, M - 1), columns(t, v)]
                    for k in T.serial(B):
                        for v in T.unroll(vectors):
                            acc[lanes(v)] = acc[lanes(v)] + T.Broadcast(x[2 * p, b * B + k], LANES) * w[k, lanes(v)]
                            acc[lanes(v, 1)] = (
                                acc[lanes(v, 1)]
                                + T.Broadcast(x[T.min(2 * p + 1, M - 1), b * B + k], LANES) * w[k, lanes(v)]
                            )
                    for v in T.unroll(vectors):
                        y[2 * p, columns(t, v)] = acc[lanes(v)]
                        if 2 * p + 1 < M:
                            y[2 * p + 1, columns(t, v)] = acc[lanes(v, 1)]

    attrs = kernel_attrs("block_gemm", scheduled=True)
    return kernel.without_attr("global_symbol").with_attr(attrs)


# imported last, so that no line above moves: the kernel's source lines end up in the compiled artifacts
if TYPE_CHECKING:
    from tvm import te, tirx
