"""Attention of a chunk of S new tokens (prefill) over a compressed KV cache, as one TIR function per layer.

A decode step reads the low-bit codes in place (`kv_kernels`); a chunk of prompt tokens reads every cached key
S·groups times, so here each head's cache is dequantized once into a float scratch (keys channel-major: tokens
are vector lanes, so a query's scores need no horizontal sums; values token-major), the chunk's own keys and
values appended, pre-RoPE keys rotated at their positions, and then every query row (a query head of the key/value
head and one of the S tokens) runs a causal softmax over the cached tokens and the chunk's tokens up to its own.
Rows go in blocks of four (in parallel): every key and value vector loaded feeds four rows' FMAs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bitc.codegen.kernels.kv_kernels import LANES, _exp
from bitc.codegen.registry import kernel_attrs
from bitc.runtime.kv_cache import WORD_BITS, KVCacheLayout


def scratch_tokens(layout: KVCacheLayout, tokens: int) -> int:
    """Token slots of the float scratch: the quantized capacity, the window's slots and the chunk, in whole
    register tiles of 64 tokens (scores are computed a tile at a time past the last token)."""
    return -(-(layout.quantized_capacity + layout.window_slots + tokens) // (4 * LANES)) * 4 * LANES


def kv_chunk_attention(
    layout: KVCacheLayout, groups: int, tokens: int, layer: int, scale: float, rope_positions: int = 0
) -> PrimFunc:
    """The PrimFunc for one layer: (query [1, H, groups·S, D], keys and values [1, H, S, D], *state,
    cos_t, sin_t [D, P]) → out [1, H, groups·S, D]; row g·S + s attends to the cache and chunk tokens 0..s.
    `rope_positions` > 0 (pre-RoPE keys): the tables are real, with at least `scratch_tokens` positions."""
    from tvm.script import tirx as T

    H, D, G, S, LY = layout.kv_heads, layout.head_dim, groups, tokens, layer
    KB, VB, KG = layout.key_bits, layout.value_bits, layout.key_group
    TQ, WS = layout.quantized_capacity, layout.window_slots
    KL, VL, VW = WORD_BITS // KB, WORD_BITS // VB, layout.value_words
    VGS = layout.value_group or D
    ROWS_PER_GROUP = KG // KL
    N = scratch_tokens(layout, tokens)
    ROWS, TILE = 4, 4 * LANES  # register tile: 4 query rows × 64 tokens (scores) or × 64 channels (values)
    BLOCKS = -(-S // ROWS)
    ACC = max(TILE, D)
    DP = VW * VL
    HALF = D // 2
    PRE = rope_positions > 0
    P = max(rope_positions, 1)
    if PRE and P < N:
        raise ValueError(f"the rotary tables need {N} positions, got {P}")
    layers = layout.layers
    SC = float(scale)
    kmask, vmask = (1 << KB) - 1, (1 << VB) - 1

    def unpack(word: tirx.Expr, bits: int, lanes: int, mask: int) -> tirx.Expr:
        shifted = T.Broadcast(word, lanes) >> T.ramp(T.uint32(0), T.uint32(bits), lanes)
        return T.Cast(f"float32x{lanes}", shifted & T.Broadcast(T.uint32(mask), lanes))

    def vec(start: tirx.Expr, lanes: int = LANES) -> tirx.Expr:
        return T.ramp(start, 1, lanes)

    def query_row(g: tirx.Expr, first: tirx.Expr, i: int) -> tirx.Expr:
        """Query row of head g and token first + i (the last token again past the chunk: computed, not stored)."""
        return g * S + T.min(first + i, S - 1)

    @T.prim_func
    def kernel(
        q: T.Buffer((1, H, G * S, D), "float32"),
        k_new: T.Buffer((1, H, S, D), "float32"),
        v_new: T.Buffer((1, H, S, D), "float32"),
        key_codes: T.Buffer((layers, H, TQ // KL, D), "uint32"),
        key_scales: T.Buffer((layers, H, TQ // KG, D), "float16"),
        key_zeros: T.Buffer((layers, H, TQ // KG, D), "float16"),
        value_codes: T.Buffer((layers, H, TQ, VW), "uint32"),
        value_scales: T.Buffer((layers, H, TQ, D // VGS), "float16"),
        value_zeros: T.Buffer((layers, H, TQ, D // VGS), "float16"),
        window_keys: T.Buffer((layers, H, D, WS), "float32"),
        window_values: T.Buffer((layers, H, WS, D), "float32"),
        lengths: T.Buffer((2,), "int64"),
        cos_t: T.Buffer((D, P), "float32"),
        sin_t: T.Buffer((D, P), "float32"),
        out: T.Buffer((1, H, G * S, D), "float32"),
    ):
        T.func_attr({"tir.noalias": True})
        # every loop bound below comes from the lengths: out-of-range state must not reach them
        assert lengths[0] >= T.int64(0) and lengths[0] <= T.int64(TQ) and lengths[0] % T.int64(KG) == T.int64(0), (
            f"kv_lengths[0] (quantized tokens) must be a multiple of {KG} in [0, {TQ}]"
        )
        assert lengths[1] >= T.int64(0) and lengths[1] <= T.int64(WS), f"kv_lengths[1] (window) must be in [0, {WS}]"
        nq = T.Cast("int32", lengths[0])
        nw = T.Cast("int32", lengths[1])
        cached = nq + nw
        for h in T.serial(H):
            kt = T.alloc_buffer((D, N), "float32")
            vv = T.alloc_buffer((N, DP), "float32")
            # ---- the cache and the chunk as float keys (channel-major) and values (token-major)
            for grp in T.serial(nq // KG):
                for r, d in T.grid(ROWS_PER_GROUP, D):
                    row = grp * ROWS_PER_GROUP + r
                    kt[d, vec(row * KL, KL)] = unpack(key_codes[LY, h, row, d], KB, KL, kmask) * T.Broadcast(
                        T.Cast("float32", key_scales[LY, h, grp, d]), KL
                    ) + T.Broadcast(T.Cast("float32", key_zeros[LY, h, grp, d]), KL)
            for d, c in T.grid(D, WS // LANES):
                kt[d, vec(nq + c * LANES)] = window_keys[LY, h, d, vec(c * LANES)]
            for t, d in T.grid(S, D):
                kt[d, cached + t] = k_new[0, h, t, d]
            for d, t in T.grid(D, (cached + S + TILE - 1) // TILE * TILE - cached - S):
                kt[d, cached + S + t] = T.float32(0)  # the last tile's columns past the tokens: no stale bits
            if PRE:  # rotate every token at its position: pairs of channels d, d + D/2
                for d, c in T.grid(HALF, (cached + S + TILE - 1) // TILE * (TILE // LANES)):
                    low = kt[d, vec(c * LANES)]
                    high = kt[d + HALF, vec(c * LANES)]
                    kt[d, vec(c * LANES)] = low * cos_t[d, vec(c * LANES)] - high * sin_t[d, vec(c * LANES)]
                    kt[d + HALF, vec(c * LANES)] = (
                        high * cos_t[d + HALF, vec(c * LANES)] + low * sin_t[d + HALF, vec(c * LANES)]
                    )
            for t, j in T.grid(nq, VW):
                vv[t, vec(j * VL, VL)] = unpack(value_codes[LY, h, t, j], VB, VL, vmask) * T.Broadcast(
                    T.Cast("float32", value_scales[LY, h, t, j * VL // VGS]), VL
                ) + T.Broadcast(T.Cast("float32", value_zeros[LY, h, t, j * VL // VGS]), VL)
            for t, c in T.grid(nw, D // LANES):
                vv[nq + t, vec(c * LANES)] = window_values[LY, h, t, vec(c * LANES)]
            for t, c in T.grid(S, D // LANES):
                vv[cached + t, vec(c * LANES)] = v_new[0, h, t, vec(c * LANES)]
            # ---- blocks of 4 query rows (one query head, 4 consecutive tokens): scores as a [4, D] × [D, n]
            # product in 4 × 64-token register tiles, a causal softmax per row, then [4, n] × [n, D]
            for block in T.parallel(G * BLOCKS):
                g = block // BLOCKS
                first = block % BLOCKS * ROWS
                n_max = cached + T.min(first + ROWS, S)
                scores = T.alloc_buffer((ROWS, N), "float32")
                inverse = T.alloc_buffer((ROWS,), "float32")
                qs = T.alloc_buffer((ROWS * D,), "float32")  # the block's query rows, scaled
                for i, d in T.grid(ROWS, D):
                    qs[i * D + d] = q[0, h, query_row(g, first, i), d] * SC
                acc0 = T.alloc_buffer((ACC,), "float32")  # one small buffer per row: kept in registers
                acc1 = T.alloc_buffer((ACC,), "float32")
                acc2 = T.alloc_buffer((ACC,), "float32")
                acc3 = T.alloc_buffer((ACC,), "float32")
                for tile in T.serial((n_max + TILE - 1) // TILE):
                    for c in T.unroll(TILE // LANES):
                        acc0[vec(c * LANES)] = T.Broadcast(T.float32(0), LANES)
                        acc1[vec(c * LANES)] = T.Broadcast(T.float32(0), LANES)
                        acc2[vec(c * LANES)] = T.Broadcast(T.float32(0), LANES)
                        acc3[vec(c * LANES)] = T.Broadcast(T.float32(0), LANES)
                    for d in T.serial(D):
                        for c in T.unroll(TILE // LANES):
                            acc0[vec(c * LANES)] = (
                                acc0[vec(c * LANES)]
                                + T.Broadcast(qs[0 * D + d], LANES) * kt[d, vec(tile * TILE + c * LANES)]
                            )
                            acc1[vec(c * LANES)] = (
                                acc1[vec(c * LANES)]
                                + T.Broadcast(qs[1 * D + d], LANES) * kt[d, vec(tile * TILE + c * LANES)]
                            )
                            acc2[vec(c * LANES)] = (
                                acc2[vec(c * LANES)]
                                + T.Broadcast(qs[2 * D + d], LANES) * kt[d, vec(tile * TILE + c * LANES)]
                            )
                            acc3[vec(c * LANES)] = (
                                acc3[vec(c * LANES)]
                                + T.Broadcast(qs[3 * D + d], LANES) * kt[d, vec(tile * TILE + c * LANES)]
                            )
                    for c in T.unroll(TILE // LANES):
                        scores[0, vec(tile * TILE + c * LANES)] = acc0[vec(c * LANES)]
                        scores[1, vec(tile * TILE + c * LANES)] = acc1[vec(c * LANES)]
                        scores[2, vec(tile * TILE + c * LANES)] = acc2[vec(c * LANES)]
                        scores[3, vec(tile * TILE + c * LANES)] = acc3[vec(c * LANES)]
                for i in T.serial(ROWS):  # softmax of row i over its own n tokens; its later ones weigh 0
                    n = cached + T.min(first + i, S - 1) + 1
                    full = n // LANES
                    largest = T.alloc_buffer((LANES,), "float32")
                    top = T.alloc_buffer((1,), "float32")
                    total = T.alloc_buffer((1,), "float32")
                    largest[vec(0)] = T.Broadcast(T.float32(-3.0e38), LANES)
                    for c in T.serial(full):
                        largest[vec(0)] = T.max(largest[vec(0)], scores[i, vec(c * LANES)])
                    top[0] = T.float32(-3.0e38)
                    for j in T.unroll(LANES):
                        top[0] = T.max(top[0], largest[j])
                    for t in T.serial(n - full * LANES):
                        top[0] = T.max(top[0], scores[i, full * LANES + t])
                    largest[vec(0)] = T.Broadcast(T.float32(0), LANES)
                    for c in T.serial(full):
                        scores[i, vec(c * LANES)] = _exp(scores[i, vec(c * LANES)] - T.Broadcast(top[0], LANES))
                        largest[vec(0)] = largest[vec(0)] + scores[i, vec(c * LANES)]
                    total[0] = T.float32(0)
                    for t in T.serial(n - full * LANES):
                        scores[i, full * LANES + t] = _exp(scores[i, full * LANES + t] - top[0])
                        total[0] = total[0] + scores[i, full * LANES + t]
                    for j in T.unroll(LANES):
                        total[0] = total[0] + largest[j]
                    inverse[i] = T.float32(1) / total[0]
                    for t in T.serial(n_max - n):
                        scores[i, n + t] = T.float32(0)
                for c in T.unroll(D // LANES):
                    acc0[vec(c * LANES)] = T.Broadcast(T.float32(0), LANES)
                    acc1[vec(c * LANES)] = T.Broadcast(T.float32(0), LANES)
                    acc2[vec(c * LANES)] = T.Broadcast(T.float32(0), LANES)
                    acc3[vec(c * LANES)] = T.Broadcast(T.float32(0), LANES)
                for t in T.serial(n_max):
                    for c in T.unroll(D // LANES):
                        values = vv[t, vec(c * LANES)]
                        acc0[vec(c * LANES)] = acc0[vec(c * LANES)] + T.Broadcast(scores[0, t], LANES) * values
                        acc1[vec(c * LANES)] = acc1[vec(c * LANES)] + T.Broadcast(scores[1, t], LANES) * values
                        acc2[vec(c * LANES)] = acc2[vec(c * LANES)] + T.Broadcast(scores[2, t], LANES) * values
                        acc3[vec(c * LANES)] = acc3[vec(c * LANES)] + T.Broadcast(scores[3, t], LANES) * values
                for c in T.unroll(D // LANES):
                    out[0, h, query_row(g, first, 0), vec(c * LANES)] = acc0[vec(c * LANES)] * T.Broadcast(
                        inverse[0], LANES
                    )
                    if first + 1 < S:
                        out[0, h, query_row(g, first, 1), vec(c * LANES)] = acc1[vec(c * LANES)] * T.Broadcast(
                            inverse[1], LANES
                        )
                    if first + 2 < S:
                        out[0, h, query_row(g, first, 2), vec(c * LANES)] = acc2[vec(c * LANES)] * T.Broadcast(
                            inverse[2], LANES
                        )
                    if first + 3 < S:
                        out[0, h, query_row(g, first, 3), vec(c * LANES)] = acc3[vec(c * LANES)] * T.Broadcast(
                            inverse[3], LANES
                        )

    attrs = kernel_attrs("kv_attention", scheduled=True)
    return kernel.without_attr("global_symbol").with_attr(attrs)


# imported last, so that no line above moves: the kernel's source lines end up in the compiled artifacts
if TYPE_CHECKING:
    from tvm import tirx
    from tvm.tirx import PrimFunc
