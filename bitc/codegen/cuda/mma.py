"""BinaryDense and BinaryConv on 1-bit tensor cores (sm_80+): `mma.sync.m16n8k256 .b1 .and.popc`, one
instruction per 16 × 8 × 256 binary multiply-adds. A conv is the same GEMM over its packed im2col rows (pixels ×
window words; 1/32 of a float im2col's bytes; padding reads zero words, i.e. +1, as the CPU kernel does, and the
zero-padding correction follows in the epilogue).

`.and.popc` counts the bits set in both operands; the xor count the binary dot needs follows from the row bit
counts: popc(a ^ b) = popc(a) + popc(b) − 2·popc(a & b). (`.xor.popc` would give it directly but is not offered
on every arch that has `.and`.) Weight bit counts are constants; activation bit counts are one small reduction.

Tiles: a block of 4 warps computes 64 rows × 64 output channels; per step it stages 16 packed words (512 bits)
of both operands in shared memory (words swizzled per row pair, so a fragment load hits 32 distinct banks); each
warp owns 32 × 32 outputs = 2 × 4 mma tiles, accumulating in registers. The fragment layouts are those of the
PTX ISA's m16n8k256 tables, written once below (`a_fragment`, `b_fragment`, `c_fragment`) and shared by the
kernel and by its numpy emulation in the tests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from bitc.codegen.cuda.te_kernel import TeKernel, elementwise_schedule, emit_scheduled_te
from bitc.codegen.kernels import binary_kernels as kernels
from bitc.codegen.kernels.nodes import constant_input, conv_parts, epilogue_constants, relax_const
from bitc.codegen.registry import kernel_attrs

if TYPE_CHECKING:
    import onnx_ir as ir
    from tvm import relax, te, tirx

BM = BN = 64  # block tile: activation rows × output channels
STAGE_WORDS = 16  # packed words per shared-memory stage: two k256 steps
MMA_WORDS = 8  # 256 bits per mma
WARPS_M, WARPS_N = 2, 2
TILES_M, TILES_N = BM // WARPS_M // 16, BN // WARPS_N // 8  # mma tiles per warp: 2 × 4
THREADS = WARPS_M * WARPS_N * 32
MIN_ROWS = 32  # below this many activation rows the CUDA-core popcount kernel wastes less

MMA_FUNCTION = "bitc_mma_b1_and"
MMA_SOURCE = r"""
__device__ __forceinline__ void bitc_mma_b1_and(int& d0, int& d1, int& d2, int& d3,
    unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0, unsigned b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+r"(d0), "+r"(d1), "+r"(d2), "+r"(d3)
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
"""


def a_fragment(lane: Any, register: int) -> tuple[Any, Any]:
    """(row, word) of the 16 × 8-word A tile that `register` (0-3) of `lane` holds."""
    group, thread = lane // 4, lane % 4
    return group + 8 * (register % 2), thread + 4 * (register // 2)


def b_fragment(lane: Any, register: int) -> tuple[Any, Any]:
    """(column, word) of the 8-word × 8 B tile (B stored column-major = weight rows) of `register` (0-1)."""
    return lane // 4, lane % 4 + 4 * register


def c_fragment(lane: Any, register: int) -> tuple[Any, Any]:
    """(row, column) of the 16 × 8 accumulator tile that `register` (0-3) of `lane` holds."""
    return lane // 4 + 8 * (register // 2), 2 * (lane % 4) + register % 2


def swizzle(row: Any, word: Any) -> Any:
    """Shared-memory column of (row, word): 8 rows × 4 words of a fragment load land in 32 different banks
    (16-word rows put every other row on the same banks)."""
    return word ^ (((row >> 1) & 3) << 2)


def emit_binary_dense(bb: relax.BlockBuilder, node: ir.Node, x: relax.Expr) -> relax.Expr | None:
    """A BinaryDense node on tensor cores: the and-GEMM, then its epilogue; None where the shapes do not fit."""
    packed = constant_input(node, 1)
    if not fits(int(node.inputs[0].shape[0]), packed.shape[0] * packed.shape[1]):
        return None
    counts = emit_and_gemm(bb, x, packed)
    return emit_scheduled_te(bb, epilogue_kernel(node), [x, counts])


def emit_binary_conv(bb: relax.BlockBuilder, node: ir.Node, x: relax.Expr) -> relax.Expr | None:
    """A BinaryConv node on tensor cores: packed im2col, the and-GEMM over its rows, then the conv epilogue; None
    where the shapes do not fit."""
    packed, geometry = constant_input(node, 1), conv_parts(node).geometry
    if not fits(geometry.n * geometry.out_h * geometry.out_w, packed.shape[0] * packed.shape[1]):
        return None
    columns = emit_scheduled_te(bb, im2col_kernel(geometry), [x])
    counts = emit_and_gemm(bb, columns, packed.reshape(*packed.shape[:2], -1))
    return emit_scheduled_te(bb, conv_epilogue_kernel(node), [columns, counts])


def fits(rows: int, columns: int) -> bool:
    """Enough rows and columns to fill mma tiles (the GEMM case: batched dense layers)."""
    return rows >= MIN_ROWS and columns >= BN // 2


def padded_weights(packed: np.ndarray) -> np.ndarray:
    """[P, O, KW] → [⌈P·O/64⌉·64, ⌈KW/16⌉·16] uint32, zero padded (zero bits add nothing to `and`)."""
    planes, out_features, in_words = packed.shape
    flat = packed.reshape(planes * out_features, in_words)
    rows, cols = -(-flat.shape[0] // BN) * BN, -(-in_words // STAGE_WORDS) * STAGE_WORDS
    out = np.zeros((rows, cols), np.uint32)
    out[: flat.shape[0], :in_words] = flat
    return out


def weight_bit_counts(packed: np.ndarray) -> np.ndarray:
    """popc of every weight row [P·O] int32."""
    planes, out_features, _ = packed.shape
    bits = np.unpackbits(packed.reshape(planes * out_features, -1).view(np.uint8), axis=1)
    return bits.sum(axis=1).astype(np.int32)


def and_gemm(rows: int, columns: int, in_words: int) -> tirx.PrimFunc:
    """y[m, n] = Σ_k popc(x[m, k] & w[n, k]) over packed words: x [rows, KW], w padded [⌈cols/64⌉·64, ⌈KW/16⌉·16]."""
    from tvm.backend.cuda.op import cuda_func_call
    from tvm.script import tirx as T

    padded_columns = -(-columns // BN) * BN
    padded_words = -(-in_words // STAGE_WORDS) * STAGE_WORDS
    row_blocks = -(-rows // BM)
    loads = BM * STAGE_WORDS // THREADS

    def mma(acc: Any, tile: Any, a_s: Any, b_s: Any, row0: Any, col0: Any, word0: Any, lane: Any) -> Any:
        a = [_swizzled(a_s, row0 + a_fragment(lane, r)[0], word0 + a_fragment(lane, r)[1]) for r in range(4)]
        b = [_swizzled(b_s, col0 + b_fragment(lane, r)[0], word0 + b_fragment(lane, r)[1]) for r in range(2)]
        d = [acc[tile * 4 + r] for r in range(4)]
        return cuda_func_call(MMA_FUNCTION, *d, *a, *b, source_code=MMA_SOURCE)

    def out_row(bm: tirx.Var, warp: tirx.Var, mt: tirx.Var, lane: tirx.Var, r: int) -> tirx.Expr:
        return bm * BM + (warp // WARPS_N) * (TILES_M * 16) + mt * 16 + c_fragment(lane, r)[0]

    def out_col(bn: tirx.Var, warp: tirx.Var, nt: tirx.Var, lane: tirx.Var, r: int) -> tirx.Expr:
        return bn * BN + (warp % WARPS_N) * (TILES_N * 8) + nt * 8 + c_fragment(lane, r)[1]

    @T.prim_func
    def and_gemm(
        x: T.Buffer((rows, in_words), "uint32"),
        w: T.Buffer((padded_columns, padded_words), "uint32"),
        y: T.Buffer((rows, columns), "int32"),
    ):
        T.func_attr({"tir.noalias": True})
        for bn in T.thread_binding(padded_columns // BN, thread="blockIdx.x"):
            for bm in T.thread_binding(row_blocks, thread="blockIdx.y"):
                a_s = T.alloc_buffer((BM, STAGE_WORDS), "uint32", scope="shared")
                b_s = T.alloc_buffer((BN, STAGE_WORDS), "uint32", scope="shared")
                for warp in T.thread_binding(WARPS_M * WARPS_N, thread="threadIdx.y"):
                    for lane in T.thread_binding(32, thread="threadIdx.x"):
                        acc = T.alloc_buffer((TILES_M * TILES_N * 4,), "int32", scope="local")
                        for i in T.unroll(TILES_M * TILES_N * 4):
                            acc[i] = 0
                        for ko in range(padded_words // STAGE_WORDS):
                            for r in T.unroll(loads):
                                a_s[
                                    (r * THREADS + warp * 32 + lane) // STAGE_WORDS,
                                    swizzle((r * THREADS + warp * 32 + lane) // STAGE_WORDS, lane % STAGE_WORDS),
                                ] = T.if_then_else(
                                    bm * BM + (r * THREADS + warp * 32 + lane) // STAGE_WORDS < rows
                                    and ko * STAGE_WORDS + lane % STAGE_WORDS < in_words,
                                    x[
                                        T.min(bm * BM + (r * THREADS + warp * 32 + lane) // STAGE_WORDS, rows - 1),
                                        T.min(ko * STAGE_WORDS + lane % STAGE_WORDS, in_words - 1),
                                    ],
                                    T.uint32(0),
                                )
                                b_s[
                                    (r * THREADS + warp * 32 + lane) // STAGE_WORDS,
                                    swizzle((r * THREADS + warp * 32 + lane) // STAGE_WORDS, lane % STAGE_WORDS),
                                ] = w[
                                    bn * BN + (r * THREADS + warp * 32 + lane) // STAGE_WORDS,
                                    ko * STAGE_WORDS + lane % STAGE_WORDS,
                                ]
                            T.tvm_storage_sync("shared")
                            for ks in T.unroll(STAGE_WORDS // MMA_WORDS):
                                for mt in T.unroll(TILES_M):
                                    for nt in T.unroll(TILES_N):
                                        T.evaluate(
                                            mma(
                                                acc,
                                                mt * TILES_N + nt,
                                                a_s,
                                                b_s,
                                                (warp // WARPS_N) * (TILES_M * 16) + mt * 16,
                                                (warp % WARPS_N) * (TILES_N * 8) + nt * 8,
                                                ks * MMA_WORDS,
                                                lane,
                                            )
                                        )
                            T.tvm_storage_sync("shared")
                        for mt in T.unroll(TILES_M):
                            for nt in T.unroll(TILES_N):
                                for r in T.unroll(4):
                                    row, col = out_row(bm, warp, mt, lane, r), out_col(bn, warp, nt, lane, r)
                                    if row < rows and col < columns:
                                        y[row, col] = acc[(mt * TILES_N + nt) * 4 + r]

    attrs = kernel_attrs("binary_dense_mma", scheduled=True)
    return and_gemm.without_attr("global_symbol").with_attr(attrs)


def _swizzled(shared: tirx.Buffer, row: tirx.Expr, word: tirx.Expr) -> tirx.Expr:
    return shared[row, swizzle(row, word)]


def xor_counts(x: te.Tensor, and_counts: te.Tensor, weight_counts: te.Tensor) -> te.Tensor:
    """popc(x ^ w)[m, n, 0] = popc(x[m]) + popc(w[n]) − 2·popc(x[m] & w[n]), in the [M, P·O, lanes=1] shape of
    `binary_kernels.dense_epilogue`."""
    from tvm import te, tirx

    rows, in_words = (int(d) for d in x.shape)
    k = te.reduce_axis((0, in_words), "k")
    row_counts = te.compute(
        (rows,), lambda m: te.sum(tirx.popcount(x[m, k]).astype("int32"), axis=k), name="row_counts"
    )
    return te.compute(
        (rows, int(and_counts.shape[1]), 1),
        lambda m, n, _: row_counts[m] + weight_counts[n] - 2 * and_counts[m, n],
        name="xor_counts",
    )


def im2col_kernel(geometry: kernels.ConvGeometry) -> TeKernel:
    """Packed NHWC words [N, H, W, CW] → [N·OH·OW, KH·KW·CW] window rows (zero words outside the image)."""
    return TeKernel("packed_im2col", lambda x: packed_im2col(x, geometry), [], ["x"], elementwise_schedule)


def packed_im2col(x: te.Tensor, geometry: kernels.ConvGeometry) -> te.Tensor:
    from tvm import te, tirx

    g = geometry
    top, left = g.pads[0], g.pads[1]
    window_words = g.kh * g.kw * g.in_words

    def column(p: tirx.Var, k: tirx.Var) -> tirx.Expr:
        n, oh, ow = p // (g.out_h * g.out_w), p % (g.out_h * g.out_w) // g.out_w, p % g.out_w
        kh, kw, cw = k // (g.kw * g.in_words), k % (g.kw * g.in_words) // g.in_words, k % g.in_words
        h, w = oh * g.strides[0] + kh - top, ow * g.strides[1] + kw - left
        inside = tirx.all(h >= 0, h < g.h, w >= 0, w < g.w)
        clamped = x[n, tirx.max(tirx.min(h, g.h - 1), 0), tirx.max(tirx.min(w, g.w - 1), 0), cw]
        return tirx.if_then_else(inside, clamped, tirx.const(0, "uint32"))

    return te.compute((g.n * g.out_h * g.out_w, window_words), column, name="im2col")


def conv_epilogue_kernel(node: ir.Node) -> TeKernel:
    """(im2col rows, and-counts) → bit counts → dots → the BinaryConv node's epilogue (a `TeKernel`)."""
    parts = conv_parts(node)
    packed = constant_input(node, 1)
    g, count = parts.geometry, len(parts.epilogue)

    def compute(columns: te.Tensor, counts: te.Tensor, weight_counts: te.Tensor, *rest: te.Tensor) -> te.Tensor:
        popc = xor_counts(columns, counts, weight_counts)

        def popc_at(n: tirx.Expr, oh: tirx.Expr, ow: tirx.Expr, b: tirx.Expr, lane: tirx.Expr) -> tirx.Expr:
            return popc[(n * g.out_h + oh) * g.out_w + ow, b, lane]

        return kernels.conv_epilogue(
            popc_at,
            list(rest[:count]),
            rest[count] if parts.correction else None,
            g,
            lanes=1,
            output=parts.output,
            classes=parts.classes,
        )

    return TeKernel(
        "binary_conv_epilogue",
        compute,
        [weight_bit_counts(packed.reshape(*packed.shape[:2], -1)), *parts.epilogue, *parts.correction],
        [
            "columns",
            "counts",
            "weight_counts",
            *(f"epilogue{i}" for i in range(count)),
            *(["correction"] * len(parts.correction)),
        ],
        elementwise_schedule,
    )


def emit_and_gemm(bb: relax.BlockBuilder, x: relax.Expr, packed: np.ndarray) -> relax.Var:
    """popc(x & w) [M, P·O] int32 on tensor cores."""
    from tvm import relax

    planes, out_features, in_words = packed.shape
    rows, columns = int(x.ty.shape[0]), planes * out_features
    gvar = bb.add_func(and_gemm(rows, columns, in_words), "bitc_binary_dense_mma")
    weights = relax_const(padded_weights(packed))
    return bb.emit(relax.call_tir(gvar, [x, weights], relax.TensorType([rows, columns], "int32")))


def epilogue_kernel(node: ir.Node) -> TeKernel:
    """(x, and-counts) → bit counts → dots → the BinaryDense node's float or packed epilogue, one elementwise
    kernel (a `TeKernel`)."""
    from bitc import ops

    attrs = ops.get("BinaryDense").attrs(node)
    packed = constant_input(node, 1)
    epilogue = epilogue_constants(node)

    def compute(x: te.Tensor, counts: te.Tensor, weight_counts: te.Tensor, *rest: te.Tensor) -> te.Tensor:
        return kernels.dense_epilogue(
            xor_counts(x, counts, weight_counts),
            list(rest),
            in_features=int(attrs["in_features"]),
            out_features=packed.shape[1],
            output=attrs["output_format"],
        )

    return TeKernel(
        "binary_dense_epilogue",
        compute,
        [weight_bit_counts(packed), *epilogue],
        ["x", "counts", "weight_counts", *(f"epilogue{i}" for i in range(len(epilogue)))],
        elementwise_schedule,
    )
