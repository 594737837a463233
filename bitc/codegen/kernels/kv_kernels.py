"""The decode-step attention over a compressed KV cache, as one hand-vectorised TIR function per layer.

Per key/value head, for its query heads (GQA: the cache is read once for all of them):
- scores of quantized keys: key words hold 32/bits tokens of one channel, so a word unpacks to a vector of
  tokens; with x = scale·code + zero per channel, q·x = Σ_d (q_d·scale_d)·code + Σ_d q_d·zero_d, so a key group
  costs one vector FMA per channel and query head, and no horizontal sums;
- scores of the float window (stored channel-major: tokens are vector lanes) and of this step's key;
- softmax (max, polynomial exp, sum) over the tokens actually cached: loop bounds come from `kv_lengths`, so a
  short context costs a short loop whatever the cache's capacity;
- Σ_t p_t·v_t: value words hold 32/bits channels of one token, unpacked to a vector of channels, times p_t·scale.
With pre-RoPE keys the query is rotated back per token instead (q·R(t)k = Σ_e k_e·(q_e·cos + q̃_e·sin)), reading
transposed rotary tables.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from bitc.codegen.registry import kernel_attrs
from bitc.runtime.kv_cache import WORD_BITS, KVCacheLayout

LANES = 16  # float32 lanes of the softmax and window loops (one AVX-512 vector; two on AVX2)
_EXP_HI, _EXP_LO = 88.3762626647949, -87.3365478515625  # Cephes expf range (2^127 and a normal 2^-126)


def _exp(x: tirx.Expr) -> tirx.Expr:
    """Cephes' expf polynomial on a PrimExpr (vector or scalar float32): range-reduce by ln 2, a degree-5
    polynomial, scale by 2^n built in the exponent bits. It vectorises; TVM's exp is one libm call per lane."""
    from tvm import tirx

    dtype = x.ty.dtype
    lanes = int(dtype.lanes)

    def c(value: float) -> tirx.Expr:
        scalar = tirx.const(value, "float32")
        return scalar if lanes == 1 else tirx.Broadcast(scalar, lanes)

    x = tirx.max(tirx.min(x, c(_EXP_HI)), c(_EXP_LO))
    n = tirx.floor(x * c(1.44269504088896341) + c(0.5))
    r = x - n * c(0.693359375) + n * c(2.12194440e-4)
    poly = c(1.9875691500e-4)
    for coefficient in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1):
        poly = poly * r + c(coefficient)
    poly = poly * r * r + r + c(1.0)
    int_type = "int32" if lanes == 1 else f"int32x{lanes}"
    bias = tirx.const(127, "int32") if lanes == 1 else tirx.Broadcast(tirx.const(127, "int32"), lanes)
    shift = tirx.const(23, "int32") if lanes == 1 else tirx.Broadcast(tirx.const(23, "int32"), lanes)
    power = tirx.reinterpret(dtype, (tirx.Cast(int_type, n) + bias) << shift)
    return poly * power


def kv_attention(layout: KVCacheLayout, groups: int, layer: int, scale: float, rope_positions: int = 0) -> PrimFunc:
    """The PrimFunc for one layer: (query, key, value, *state, [cos_t, sin_t]) → out [1, H, groups, D].

    `rope_positions` > 0 (pre-RoPE keys) adds two inputs, the rotary tables transposed to [D, positions]."""
    from tvm.script import tirx as T

    H, D, G, LY = layout.kv_heads, layout.head_dim, groups, layer
    KB, VB, KG = layout.key_bits, layout.value_bits, layout.key_group
    TQ, WS = layout.quantized_capacity, layout.window_slots
    KL, VL, VW = WORD_BITS // KB, WORD_BITS // VB, layout.value_words
    VGS = layout.value_group or D
    ROWS_PER_GROUP = KG // KL
    S = TQ + WS + LANES
    DP = VW * VL
    HALF = D // 2
    PRE = rope_positions > 0
    P = max(rope_positions, 1)
    layers = layout.layers
    SC = float(scale)
    kmask, vmask = (1 << KB) - 1, (1 << VB) - 1

    def unpack(word: tirx.Expr, bits: int, lanes: int, mask: int) -> tirx.Expr:
        shifted = T.Broadcast(word, lanes) >> T.ramp(T.uint32(0), T.uint32(bits), lanes)
        return T.Cast(f"float32x{lanes}", shifted & T.Broadcast(T.uint32(mask), lanes))

    def rotated_query(q: tirx.Buffer, h: tirx.Var, g: tirx.Var, e: tirx.Var) -> tirx.Expr:
        """q̃_e: the query channel that meets k_e·sin (q_{e+D/2} below half, −q_{e−D/2} above)."""
        return T.if_then_else(e < HALF, q[0, h, g, T.min(e + HALF, D - 1)], -q[0, h, g, T.max(e - HALF, 0)])

    def lane_sum(buffer: tirx.Buffer, g: tirx.Var) -> tirx.Expr:
        """Σ of a local [G, LANES] buffer's row, as a tree of halves (no loop-carried index)."""
        width = LANES // 2
        vector = buffer[g, T.ramp(0, 1, width)] + buffer[g, T.ramp(width, 1, width)]
        while width > 1:
            width //= 2
            vector = T.Shuffle([vector], list(range(width))) + T.Shuffle([vector], list(range(width, 2 * width)))
        return vector

    @T.prim_func
    def kernel(
        q: T.Buffer((1, H, G, D), "float32"),
        k_new: T.Buffer((1, H, 1, D), "float32"),
        v_new: T.Buffer((1, H, 1, D), "float32"),
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
        out: T.Buffer((1, H, G, D), "float32"),
    ):
        T.func_attr({"tir.noalias": True})
        # the loops below read (and write scores) as far as the lengths say: out-of-range state must not reach them
        assert lengths[0] >= T.int64(0) and lengths[0] <= T.int64(TQ) and lengths[0] % T.int64(KG) == T.int64(0), (
            f"kv_lengths[0] (quantized tokens) must be a multiple of {KG} in [0, {TQ}]"
        )
        assert lengths[1] >= T.int64(0) and lengths[1] <= T.int64(WS), f"kv_lengths[1] (window) must be in [0, {WS}]"
        nq = T.Cast("int32", lengths[0])
        nw = T.Cast("int32", lengths[1])
        n = nq + nw + 1
        for h in T.serial(H):
            scores = T.alloc_buffer((G, S), "float32")
            qs = T.alloc_buffer((G, D), "float32")
            # Loops that index a "local" buffer are unrolled (T.unroll) so every index is a constant and LLVM
            # keeps the buffer in registers; a loop-carried index would leave it in memory, and each
            # accumulation would wait on a store-to-load round trip.
            bias = T.alloc_buffer((G, LANES), "float32")
            acc = T.alloc_buffer((G, KL), "float32")
            codes = T.alloc_buffer((KL,), "float32")
            keys = T.alloc_buffer((KL,), "float32")
            # ---- scores of the quantized keys, one group of KG tokens (KG/KL word rows) at a time
            for grp in T.serial(nq // KG):
                for g in T.unroll(G):
                    bias[g, T.ramp(0, 1, LANES)] = T.Broadcast(T.float32(0), LANES)
                    for c in T.unroll(D // LANES):
                        qs[g, T.ramp(c * LANES, 1, LANES)] = (
                            q[0, h, g, T.ramp(c * LANES, 1, LANES)]
                            * T.Cast(f"float32x{LANES}", key_scales[LY, h, grp, T.ramp(c * LANES, 1, LANES)])
                            * T.Broadcast(T.float32(SC), LANES)
                        )
                        bias[g, T.ramp(0, 1, LANES)] = bias[g, T.ramp(0, 1, LANES)] + q[
                            0, h, g, T.ramp(c * LANES, 1, LANES)
                        ] * T.Cast(f"float32x{LANES}", key_zeros[LY, h, grp, T.ramp(c * LANES, 1, LANES)])
                for r in T.serial(ROWS_PER_GROUP):
                    row = grp * ROWS_PER_GROUP + r
                    for g in T.unroll(G):
                        acc[g, T.ramp(0, 1, KL)] = T.Broadcast(
                            T.float32(0) if PRE else lane_sum(bias, g) * T.float32(SC), KL
                        )
                    for d in T.serial(D):
                        codes[T.ramp(0, 1, KL)] = unpack(key_codes[LY, h, row, d], KB, KL, kmask)
                        if PRE:
                            keys[T.ramp(0, 1, KL)] = codes[T.ramp(0, 1, KL)] * T.Broadcast(
                                T.Cast("float32", key_scales[LY, h, grp, d]), KL
                            ) + T.Broadcast(T.Cast("float32", key_zeros[LY, h, grp, d]), KL)
                            for g in T.unroll(G):
                                acc[g, T.ramp(0, 1, KL)] = acc[g, T.ramp(0, 1, KL)] + keys[T.ramp(0, 1, KL)] * (
                                    T.Broadcast(q[0, h, g, d] * SC, KL) * cos_t[d, T.ramp(row * KL, 1, KL)]
                                    + T.Broadcast(rotated_query(q, h, g, d) * SC, KL)
                                    * sin_t[d, T.ramp(row * KL, 1, KL)]
                                )
                        else:
                            for g in T.unroll(G):
                                acc[g, T.ramp(0, 1, KL)] = (
                                    acc[g, T.ramp(0, 1, KL)] + T.Broadcast(qs[g, d], KL) * codes[T.ramp(0, 1, KL)]
                                )
                    for g in T.unroll(G):
                        scores[g, T.ramp(row * KL, 1, KL)] = acc[g, T.ramp(0, 1, KL)]
            # ---- scores of the float window (tokens are lanes), then of this step's key
            for g, c in T.grid(G, WS // LANES):
                scores[g, T.ramp(nq + c * LANES, 1, LANES)] = T.Broadcast(T.float32(0), LANES)
            for d in T.serial(D):
                for g, c in T.grid(G, WS // LANES):
                    if PRE:
                        scores[g, T.ramp(nq + c * LANES, 1, LANES)] = scores[
                            g, T.ramp(nq + c * LANES, 1, LANES)
                        ] + window_keys[LY, h, d, T.ramp(c * LANES, 1, LANES)] * (
                            T.Broadcast(q[0, h, g, d] * SC, LANES) * cos_t[d, T.ramp(nq + c * LANES, 1, LANES)]
                            + T.Broadcast(rotated_query(q, h, g, d) * SC, LANES)
                            * sin_t[d, T.ramp(nq + c * LANES, 1, LANES)]
                        )
                    else:
                        scores[g, T.ramp(nq + c * LANES, 1, LANES)] = (
                            scores[g, T.ramp(nq + c * LANES, 1, LANES)]
                            + T.Broadcast(q[0, h, g, d] * SC, LANES)
                            * window_keys[LY, h, d, T.ramp(c * LANES, 1, LANES)]
                        )
            for g in T.unroll(G):
                bias[g, T.ramp(0, 1, LANES)] = T.Broadcast(T.float32(0), LANES)
                if PRE:  # the tables are channel-major: read this position's column one channel at a time
                    for d in T.unroll(D):
                        bias[g, 0] = bias[g, 0] + k_new[0, h, 0, d] * (
                            q[0, h, g, d] * cos_t[d, n - 1] + rotated_query(q, h, g, d) * sin_t[d, n - 1]
                        )
                else:
                    for c in T.unroll(D // LANES):
                        bias[g, T.ramp(0, 1, LANES)] = (
                            bias[g, T.ramp(0, 1, LANES)]
                            + k_new[0, h, 0, T.ramp(c * LANES, 1, LANES)] * q[0, h, g, T.ramp(c * LANES, 1, LANES)]
                        )
                scores[g, n - 1] = lane_sum(bias, g) * T.float32(SC)
            # ---- softmax weights (unnormalised; the sum divides at the end)
            largest = T.alloc_buffer((LANES,), "float32")
            total = T.alloc_buffer((LANES,), "float32")
            top = T.alloc_buffer((1,), "float32")
            inverse = T.alloc_buffer((G,), "float32")
            for g in T.unroll(G):
                largest[T.ramp(0, 1, LANES)] = T.Broadcast(T.float32(-3.0e38), LANES)
                for c in T.serial(n // LANES):
                    largest[T.ramp(0, 1, LANES)] = T.max(
                        largest[T.ramp(0, 1, LANES)], scores[g, T.ramp(c * LANES, 1, LANES)]
                    )
                top[0] = T.float32(-3.0e38)
                for i in T.unroll(LANES):
                    top[0] = T.max(top[0], largest[i])
                for t in T.serial(n - n // LANES * LANES):
                    top[0] = T.max(top[0], scores[g, n // LANES * LANES + t])
                total[T.ramp(0, 1, LANES)] = T.Broadcast(T.float32(0), LANES)
                for c in T.serial(n // LANES):
                    scores[g, T.ramp(c * LANES, 1, LANES)] = _exp(
                        scores[g, T.ramp(c * LANES, 1, LANES)] - T.Broadcast(top[0], LANES)
                    )
                    total[T.ramp(0, 1, LANES)] = total[T.ramp(0, 1, LANES)] + scores[g, T.ramp(c * LANES, 1, LANES)]
                for t in T.serial(n - n // LANES * LANES):
                    scores[g, n // LANES * LANES + t] = _exp(scores[g, n // LANES * LANES + t] - top[0])
                    total[0] = total[0] + scores[g, n // LANES * LANES + t]
                inverse[g] = T.float32(0)
                for i in T.unroll(LANES):
                    inverse[g] = inverse[g] + total[i]
                inverse[g] = T.float32(1) / inverse[g]
            # ---- Σ_t p_t·v_t: quantized values (channels are lanes), the window, this step's value
            weighted = T.alloc_buffer((G, DP), "float32")
            zero_sum = T.alloc_buffer((G, D // VGS), "float32")
            vcodes = T.alloc_buffer((VW, VL), "float32")
            for g in T.unroll(G):
                for c in T.unroll(DP // LANES):
                    weighted[g, T.ramp(c * LANES, 1, LANES)] = T.Broadcast(T.float32(0), LANES)
                for j in T.unroll(D // VGS):
                    zero_sum[g, j] = T.float32(0)
            for t in T.serial(nq):
                for j in T.unroll(VW):
                    vcodes[j, T.ramp(0, 1, VL)] = unpack(value_codes[LY, h, t, j], VB, VL, vmask)
                for g in T.unroll(G):
                    for j in T.unroll(VW):
                        weighted[g, T.ramp(j * VL, 1, VL)] = (
                            weighted[g, T.ramp(j * VL, 1, VL)]
                            + T.Broadcast(scores[g, t] * T.Cast("float32", value_scales[LY, h, t, j * VL // VGS]), VL)
                            * vcodes[j, T.ramp(0, 1, VL)]
                        )
                    for j in T.unroll(D // VGS):
                        zero_sum[g, j] = zero_sum[g, j] + scores[g, t] * T.Cast("float32", value_zeros[LY, h, t, j])
            for t in T.serial(nw):
                for g in T.unroll(G):
                    for c in T.unroll(D // LANES):
                        weighted[g, T.ramp(c * LANES, 1, LANES)] = weighted[g, T.ramp(c * LANES, 1, LANES)] + (
                            T.Broadcast(scores[g, nq + t], LANES) * window_values[LY, h, t, T.ramp(c * LANES, 1, LANES)]
                        )
            for g in T.unroll(G):
                for c in T.unroll(D // LANES):
                    out[0, h, g, T.ramp(c * LANES, 1, LANES)] = (
                        weighted[g, T.ramp(c * LANES, 1, LANES)]
                        + T.Broadcast(zero_sum[g, c * LANES // VGS], LANES)
                        + T.Broadcast(scores[g, n - 1], LANES) * v_new[0, h, 0, T.ramp(c * LANES, 1, LANES)]
                    ) * T.Broadcast(inverse[g], LANES)

    attrs = kernel_attrs("kv_attention", scheduled=True)
    return kernel.without_attr("global_symbol").with_attr(attrs)


def rope_tables_transposed(cos: np.ndarray, sin: np.ndarray, positions: int) -> tuple[np.ndarray, np.ndarray]:
    """[P, D] tables → [D, positions] (zero past P): the kernel reads positions as vector lanes, and reads whole
    vectors past the last cached token, so `positions` covers the cache's capacity plus a window of slack."""
    out = []
    for table in (cos, sin):
        padded = np.zeros((positions, table.shape[1]), np.float32)
        rows = min(positions, table.shape[0])
        padded[:rows] = table[:rows]
        out.append(np.ascontiguousarray(padded.T))
    return out[0], out[1]


# imported last, so that no line above moves: the kernel's source lines end up in the compiled artifacts
if TYPE_CHECKING:
    from tvm import tirx
    from tvm.tirx import PrimFunc
