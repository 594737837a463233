"""LowBitMatMul on CUDA for decode-sized batches: float activations × 1-bit weight planes, memory-bound.

One warp per output row: lane t reads packed words t, t+32, … of the row (128 contiguous bytes per warp load,
the weights are read exactly once), applies each word's 32 signs to the activations by flipping their sign bit
(no multiply, no branch), scales the word's sum by its group's scale, and the warp's partial sums meet in a
shuffle reduction. The activations are staged in shared memory once per block. Weight bytes are 1/16 of fp16,
which is the whole speedup of a memory-bound GEMV.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bitc.codegen.cuda.schedules import read_names
from bitc.ops.packing import WORD_BITS

if TYPE_CHECKING:
    from tvm import s_tir, te, tirx

ROWS_PER_BLOCK = 4  # warps per block, one output row each
MAX_ROWS = 8  # activation rows (tokens) up to which this kernel is used; above, the generic compute
SHARED_FLOATS = 12 * 1024  # activations staged in shared memory up to 48 KiB (the default per-block limit)


def compute(x: te.Tensor, weights: te.Tensor, scales: te.Tensor, in_features: int, group_size: int) -> te.Tensor:
    """y[m, n] = Σ_p Σ_w scale[p, n, group(w)] · Σ_b (bit b of word w ? −x : x)[m, 32w + b]: a reduction over the
    packed words, so the schedule can spread it over a warp."""
    from tvm import te, tirx

    rows = int(x.shape[0])
    planes, out_features, in_words = (int(d) for d in weights.shape)
    group_words = group_size // WORD_BITS if group_size > 0 else in_words
    p = te.reduce_axis((0, planes), name="p")
    w = te.reduce_axis((0, in_words), name="w")
    sign = tirx.const(0x80000000, "uint32")
    last_word_bits = in_features % WORD_BITS  # 0: K fills its last word

    def signed(m: tirx.Var, word: tirx.Expr, bit: int) -> tirx.Expr:
        """x[m, 32w + bit] with its sign bit xored with the weight bit (0 past K, in a partial last word)."""
        k = w * WORD_BITS + bit
        value = x[m, tirx.min(k, in_features - 1)]
        flip = (word << tirx.const(WORD_BITS - 1 - bit, "uint32")) & sign
        flipped = tirx.reinterpret("float32", tirx.reinterpret("uint32", value) ^ flip)
        if last_word_bits and bit >= last_word_bits:
            return tirx.Select(k < in_features, flipped, tirx.const(0.0, "float32"))
        return flipped

    def row(m: tirx.Var, n: tirx.Var) -> tirx.Expr:
        word = weights[p, n, w]
        total = signed(m, word, 0)
        for bit in range(1, WORD_BITS):
            total = total + signed(m, word, bit)
        return te.sum(total * scales[p, n, w // group_words], axis=[p, w])

    return te.compute((rows, out_features), row, name="gemv")


def schedule(sch: s_tir.Schedule, in_features: int) -> None:
    """Block = ROWS_PER_BLOCK output rows of one activation row; threadIdx.x (a warp) splits the packed words."""
    block = sch.get_sblock("gemv")
    m, n, p, w = sch.get_loops(block)
    no, ni = sch.split(n, [None, ROWS_PER_BLOCK])
    wo, wi = sch.split(w, [None, 32])
    sch.reorder(m, no, ni, p, wo, wi)
    blocks = sch.fuse(m, no)
    sch.bind(blocks, "blockIdx.x")
    sch.bind(ni, "threadIdx.y")
    sch.bind(wi, "threadIdx.x")
    if in_features <= SHARED_FLOATS:
        shared = sch.cache_read(block, read_names(sch, block).index("x"), "shared")
        sch.compute_at(shared, blocks)
        fused = sch.fuse(*sch.get_loops(shared)[1:])
        _, ty, tx = sch.split(fused, [None, ROWS_PER_BLOCK, 32])
        sch.bind(ty, "threadIdx.y")
        sch.bind(tx, "threadIdx.x")
