"""bitc nodes → Relax calls to CUDA kernels: the TE computes of `binary_kernels` in their canonical layouts
(one output channel per lane), scheduled for the GPU here, plus the CUDA-only low-bit GEMV and 1-bit mma GEMM.
Each emitter registers itself (`registry.emitter`) for the "cuda" target kind; the `*_kernel(node)` functions give
an op's CUDA-core kernel (tests build their computes for the CPU).

Float ops are not emitted here: they go through TVM's ONNX importer and get dlight's GPU schedules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from bitc import ops
from bitc.codegen import registry
from bitc.codegen.cuda import gemv, mma
from bitc.codegen.cuda.te_kernel import TeKernel, elementwise_schedule, emit_scheduled_te, popcount_schedule
from bitc.codegen.kernels import binary_kernels as kernels
from bitc.codegen.kernels import lowbit_kernels as lowbit
from bitc.codegen.kernels.nodes import (
    constant_input,
    conv_compute,
    conv_parts,
    dense_compute,
    epilogue_constants,
    reinterpret_compute,
    round_to_format_compute,
)

if TYPE_CHECKING:
    from tvm import relax

    from bitc.codegen.target import CudaTarget


def _emits(op_type: str) -> Callable[[Callable[[ir.Node], TeKernel]], Callable[[ir.Node], TeKernel]]:
    """Decorator: register `kernel(node) -> TeKernel` as the CUDA emitter of `op_type`: the kernel, scheduled,
    called on the node's activation."""

    def register(kernel: Callable[[ir.Node], TeKernel]) -> Callable[[ir.Node], TeKernel]:
        @registry.emitter(op_type, "cuda")
        def emit(bb: relax.BlockBuilder, node: ir.Node, args: list[relax.Expr], target: CudaTarget) -> relax.Expr:
            return emit_scheduled_te(bb, kernel(node), [args[0]])

        return kernel

    return register


@registry.emitter("BinaryDense", "cuda")
def _binary_dense(bb: relax.BlockBuilder, node: ir.Node, args: list[relax.Expr], target: CudaTarget) -> relax.Expr:
    """On 1-bit tensor cores where the target has them and the shapes fill mma tiles, else the popcount kernel."""
    if target.has_b1_mma and (out := mma.emit_binary_dense(bb, node, args[0])) is not None:
        return out
    return emit_scheduled_te(bb, binary_dense_kernel(node), [args[0]])


@registry.emitter("BinaryConv", "cuda")
def _binary_conv(bb: relax.BlockBuilder, node: ir.Node, args: list[relax.Expr], target: CudaTarget) -> relax.Expr:
    """As BinaryDense: packed im2col and the mma GEMM where they apply, else the popcount kernel."""
    if target.has_b1_mma and (out := mma.emit_binary_conv(bb, node, args[0])) is not None:
        return out
    return emit_scheduled_te(bb, binary_conv_kernel(node), [args[0]])


@registry.emitter("LowBitMatMul", "cuda")
def _lowbit_matmul(bb: relax.BlockBuilder, node: ir.Node, args: list[relax.Expr], target: CudaTarget) -> relax.Expr:
    """The kernel over the activation's rows flattened to 2-D."""
    from tvm import relax

    kernel = lowbit_matmul_kernel(node)
    shape = [int(d) for d in node.inputs[0].shape]
    x = args[0]
    if len(shape) != 2:
        x = bb.emit(relax.op.reshape(x, [int(np.prod(shape[:-1])), shape[-1]]))
    out = emit_scheduled_te(bb, kernel, [x])
    if len(shape) != 2:
        out = bb.emit(relax.op.reshape(out, [*shape[:-1], int(node.inputs[1].shape[1])]))
    return out


@_emits("BitPack")
def bitpack_kernel(node: ir.Node) -> TeKernel:
    thresholds = tuple(float(t) for t in ops.get("BitPack").attrs(node)["thresholds"])
    return TeKernel("bitpack", lambda x: kernels.bitpack(x, thresholds), [], ["x"], elementwise_schedule)


@_emits("PackedMaxPool")
def packed_max_pool_kernel(node: ir.Node) -> TeKernel:
    attrs = ops.get("PackedMaxPool").attrs(node)
    window, strides, pads = tuple(attrs["kernel_shape"]), tuple(attrs["strides"]), tuple(attrs["pads"])
    return TeKernel(
        "packed_max_pool",
        lambda x: kernels.packed_max_pool(x, window, strides, pads),
        [],
        ["x"],
        elementwise_schedule,
    )


@_emits("RoundToFormat")
def round_to_format_kernel(node: ir.Node) -> TeKernel:
    return TeKernel("round_to_format", round_to_format_compute(node), [], ["x"], elementwise_schedule)


@_emits("Reinterpret")
def reinterpret_kernel(node: ir.Node) -> TeKernel:
    return TeKernel("reinterpret", reinterpret_compute(node), [], ["x"], elementwise_schedule)


def binary_conv_kernel(node: ir.Node) -> TeKernel:
    """The CUDA-core popcount conv over flattened pixels (one output channel per lane)."""
    parts = conv_parts(node)
    count = len(parts.epilogue)
    return TeKernel(
        "binary_conv",
        conv_compute(parts, 1, flat_pixels=True),
        [kernels.block_weights(constant_input(node, 1), 1), *parts.epilogue, *parts.correction],
        ["data", "weights", *(f"epilogue{i}" for i in range(count)), *(["correction"] * len(parts.correction))],
        popcount_schedule("weights"),
    )


def binary_dense_kernel(node: ir.Node) -> TeKernel:
    """The CUDA-core popcount GEMM (one output channel per lane)."""
    epilogue = epilogue_constants(node)
    return TeKernel(
        "binary_dense",
        dense_compute(node, 1),
        [kernels.block_weights(constant_input(node, 1), 1), *epilogue],
        ["data", "weights", *(f"epilogue{i}" for i in range(len(epilogue)))],
        popcount_schedule("data", "weights"),
    )


def lowbit_matmul_kernel(node: ir.Node) -> TeKernel:
    """Decode-sized row counts get the warp-per-row GEMV; larger ones the plain compute (dlight's schedule)."""
    attrs = ops.get("LowBitMatMul").attrs(node)
    packed, scales = constant_input(node, 1), constant_input(node, 2).astype(np.float32)
    in_features, group_size = int(attrs["in_features"]), int(attrs["group_size"])
    rows = int(np.prod([int(d) for d in node.inputs[0].shape[:-1]]))
    names = ["x", "weights", "scales"]
    if rows <= gemv.MAX_ROWS:
        return TeKernel(
            "lowbit_gemv",
            lambda x, w, s: gemv.compute(x, w, s, in_features, group_size),
            [packed, scales],
            names,
            lambda sch: gemv.schedule(sch, in_features),
        )
    return TeKernel(
        "lowbit_matmul",
        lambda x, w, s: lowbit.generic_matmul(x, w, s, in_features, group_size),
        [packed, scales],
        names,
        None,
    )
