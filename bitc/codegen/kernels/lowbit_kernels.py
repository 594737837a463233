"""Kernels of LowBitMatMul: float activations × 1-bit weight planes, by table lookup (the T-MAC idea in fp32).

For every 4 consecutive inputs x₀..x₃ there are only 16 possible signed sums ±x₀±x₁±x₂±x₃; a table of them per
activation row is built once (K/4 × 16 floats). A 4-bit nibble of a weight row then selects its partial sum, and
on AVX-512 one `vpermps` looks up 16 output rows at once: 64 multiply-adds per instruction, against 16 for an fp32
FMA, reading 1/32 of the weight bytes. Measured on one Zen 4 core: ~85 G MAC/s per plane (4096×4096 GEMV
0.2 ms, onnxruntime fp32 2.5 ms). Rows are handled in vectors of 16 (weights re-blocked to [P, N/16, K/32, 16]),
`rows` vectors at a time so one table load serves several output vectors.

AVX2 CPUs get the same kernel on 8 rows per vector: two 8-entry `vpermps` (one per half of the table) and a blend
on the nibble's top bit. CPUs without AVX2 get the plain compute (select ±x per bit), correct, not fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from bitc.codegen.registry import kernel_attrs
from bitc.ops.packing import WORD_BITS

LANES = 16  # output rows per vpermps (one zmm of float32)
NIBBLES = WORD_BITS // 4
# multiply-adds below which a kernel runs on one core (waking the pool costs ~10-20 µs)
PARALLEL_MIN_MACS = 1 << 22


def block_weights(packed: np.ndarray, lanes: int = LANES) -> np.ndarray:
    """[P, N, KW] → [P, ⌈N/lanes⌉, KW, lanes]: `lanes` rows' words side by side (padded rows are zero bits)."""
    return _rows_innermost(packed, np.uint32, lanes)


def block_scales(scales: np.ndarray, lanes: int = LANES) -> np.ndarray:
    """[P, N, G] → [P, ⌈N/lanes⌉, G, lanes] float32 (padded rows get zero scales, so they add nothing)."""
    return _rows_innermost(scales, np.float32, lanes)


def _rows_innermost(array: np.ndarray, dtype: type, lanes: int) -> np.ndarray:
    planes, rows, inner = array.shape
    blocks = -(-rows // lanes)
    padded = np.zeros((planes, blocks * lanes, inner), dtype=dtype)
    padded[:, :rows] = array
    return np.ascontiguousarray(padded.reshape(planes, blocks, lanes, inner).transpose(0, 1, 3, 2))


def lookup_isa(features: frozenset[str] | set[str]) -> str | None:
    """Which table-lookup kernel the CPU can run: 'avx512' (16 rows per vpermps), 'avx2' (8 rows, two vpermps
    and a blend per nibble), or None (the portable compute)."""
    return "avx512" if "avx512f" in features else "avx2" if "avx2" in features else None


def _lookup_avx512(tables: tirx.Buffer, m: tirx.Var, table: tirx.Expr, nibbles: tirx.Expr) -> tirx.Expr:
    """16 rows' partial sums: vpermps uses the low 4 bits of each lane as the table index."""
    from tvm import tirx

    row = tables.vload([m, table, 0], "float32x16")
    index = tirx.reinterpret("int32x16", nibbles)
    return tirx.call_llvm_pure_intrin("float32x16", "llvm.x86.avx512.permvar.sf.512", row, index)


def _lookup_avx2(tables: tirx.Buffer, m: tirx.Var, table: tirx.Expr, nibbles: tirx.Expr) -> tirx.Expr:
    """8 rows' partial sums: an 8-entry vpermps on each half of the table (low 3 bits), bit 3 picks the half."""
    from tvm import tirx

    index = tirx.reinterpret("int32x8", nibbles)
    low, high = (
        tirx.call_llvm_pure_intrin(
            "float32x8", "llvm.x86.avx2.permps", tables.vload([m, table, half], "float32x8"), index
        )
        for half in (0, 8)
    )
    upper_half = (nibbles & tirx.Broadcast(tirx.const(8, "uint32"), 8)) != tirx.Broadcast(tirx.const(0, "uint32"), 8)
    return tirx.Select(upper_half, high, low)


_LOOKUPS = {"avx512": (16, _lookup_avx512), "avx2": (8, _lookup_avx2)}


def lookup_lanes(isa: str) -> int:
    """Output rows per lookup vector for that ISA."""
    return _LOOKUPS[isa][0]


def lookup_tables(x: te.Tensor, in_words: int) -> te.Tensor:
    """x [M, K] → tables [M, 8·KW, 16]: entry i of table g = Σ_b (bit b of i ? −1 : +1)·x[4g + b] (x past K is 0)."""
    from tvm import te, tirx

    rows, in_features = (int(d) for d in x.shape)

    def signed(m: tirx.Var, k: tirx.Expr, index: tirx.Var, bit: int) -> tirx.Expr:
        value = tirx.if_then_else(k < in_features, x[m, tirx.min(k, in_features - 1)], tirx.const(0.0, "float32"))
        return tirx.Select(((index >> bit) & 1) == 1, -value, value)

    return te.compute(
        (rows, in_words * NIBBLES, LANES),
        lambda m, g, i: (
            signed(m, 4 * g, i, 0)
            + signed(m, 4 * g + 1, i, 1)
            + signed(m, 4 * g + 2, i, 2)
            + signed(m, 4 * g + 3, i, 3)
        ),
        name="tables",
    )


def lut_matmul(
    rows: int, blocks: int, in_words: int, planes: int, groups: int, group_words: int, isa: str = "avx512"
) -> tirx.PrimFunc:
    """The lookup kernel: tables [M, 8·KW, 16], weights [P, NB, KW, L], scales [P, NB, G, L] → y [M, NB·L], with
    L = 16 rows per vector on AVX-512, 8 on AVX2.

    Per output vector: for each plane and scale group, sum the looked-up partial sums, then y += scale · sum."""
    from tvm.script import tirx as T

    lanes, lookup = _LOOKUPS[isa]
    tile = next(t for t in (4, 2, 1) if blocks % t == 0)
    parallel = rows * blocks * lanes * in_words * WORD_BITS * planes >= PARALLEL_MIN_MACS
    outer_loop = T.parallel if parallel else T.serial

    @T.prim_func
    def lut_matmul(
        tables: T.Buffer((rows, in_words * NIBBLES, LANES), "float32"),
        weights: T.Buffer((planes, blocks, in_words, lanes), "uint32"),
        scales: T.Buffer((planes, blocks, groups, lanes), "float32"),
        y: T.Buffer((rows, blocks * lanes), "float32"),
    ):
        T.func_attr({"tir.noalias": True})
        for outer in outer_loop(blocks // tile):
            for m in range(rows):
                # default ("global") scope: TVM puts small global allocations on the stack, where LLVM keeps
                # them in registers; "local" ones go to a heap workspace, and every accumulation to memory
                total = T.alloc_buffer((tile, lanes), "float32")
                acc = T.alloc_buffer((tile, lanes), "float32")
                for r in T.unroll(tile):
                    total[r, T.ramp(0, 1, lanes)] = T.Broadcast(T.float32(0), lanes)
                for p in range(planes):
                    for g in range(groups):
                        for r in T.unroll(tile):
                            acc[r, T.ramp(0, 1, lanes)] = T.Broadcast(T.float32(0), lanes)
                        for kw in range(T.min(group_words, in_words - g * group_words)):
                            for j in T.unroll(NIBBLES):
                                for r in T.unroll(tile):
                                    acc[r, T.ramp(0, 1, lanes)] = acc[r, T.ramp(0, 1, lanes)] + lookup(
                                        tables,
                                        m,
                                        (g * group_words + kw) * NIBBLES + j,
                                        weights[p, outer * tile + r, g * group_words + kw, T.ramp(0, 1, lanes)]
                                        >> T.Broadcast(T.uint32(4 * j), lanes),
                                    )
                        for r in T.unroll(tile):
                            total[r, T.ramp(0, 1, lanes)] = (
                                total[r, T.ramp(0, 1, lanes)]
                                + acc[r, T.ramp(0, 1, lanes)] * scales[p, outer * tile + r, g, T.ramp(0, 1, lanes)]
                            )
                for r in T.unroll(tile):
                    y[m, T.ramp((outer * tile + r) * lanes, 1, lanes)] = total[r, T.ramp(0, 1, lanes)]

    attrs = kernel_attrs("lowbit_matmul", scheduled=True)
    return lut_matmul.without_attr("global_symbol").with_attr(attrs)


def generic_matmul(x: te.Tensor, weights: te.Tensor, scales: te.Tensor, in_features: int, group_size: int) -> te.Tensor:
    """Portable compute on the canonical layout: y[m, n] = Σ_p Σ_k scale · (bit ? −x : x)."""
    from tvm import te, tirx

    rows = int(x.shape[0])
    planes, out_features = (int(d) for d in weights.shape[:2])
    p = te.reduce_axis((0, planes), name="p")
    k = te.reduce_axis((0, in_features), name="k")
    group = (lambda k: k // group_size) if group_size > 0 else (lambda k: 0)

    def term(m: tirx.Var, n: tirx.Var) -> tirx.Expr:
        bit = (weights[p, n, k // WORD_BITS] >> (k % WORD_BITS).astype("uint32")) & tirx.const(1, "uint32")
        value = tirx.Select(bit == tirx.const(1, "uint32"), -x[m, k], x[m, k])
        return te.sum(value * scales[p, n, group(k)], axis=[p, k])

    return te.compute((rows, out_features), term, name="lowbit_matmul")


# imported last, so that no line above moves: the kernel's source lines end up in the compiled artifacts
if TYPE_CHECKING:
    from tvm import te, tirx
