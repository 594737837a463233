"""bitc nodes → Relax calls to CUDA kernels: the TE computes of `binary_kernels` in their canonical layouts
(one output channel per lane), scheduled for the GPU here, plus the CUDA-only low-bit GEMV and 1-bit mma GEMM.

Float ops are not emitted here: they go through TVM's ONNX importer and get dlight's GPU schedules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx_ir as ir

from bitc import ops
from bitc.codegen import binary_kernels as kernels
from bitc.codegen import cuda_gemv, cuda_mma
from bitc.codegen.bitc_relax import (
    KernelTarget,
    constant_input,
    conv_compute,
    conv_parts,
    dense_compute,
    epilogue_constants,
    reinterpret_compute,
    relax_const,
    round_to_format_compute,
)
from bitc.codegen.cuda_te import TeKernel, elementwise_schedule, popcount_schedule
from bitc.errors import CompileError


def emit(bb: Any, node: ir.Node, args: list[Any], target: KernelTarget) -> list[Any]:
    """Emit `node` into the block builder (as `bitc_relax.emit` does for CPUs): its one output, in a list."""
    return [_emit(bb, node, args, target)]


def _emit(bb: Any, node: ir.Node, args: list[Any], target: KernelTarget) -> Any:
    from tvm import relax

    if node.op_type == "BinaryDense" and target.b1_mma:
        packed = constant_input(node, 1)
        if cuda_mma.fits(int(node.inputs[0].shape[0]), packed.shape[0] * packed.shape[1]):
            counts = cuda_mma.emit_and_gemm(bb, args[0], packed)
            return emit_scheduled_te(bb, cuda_mma.epilogue_kernel(node), [args[0], counts])
    if node.op_type == "BinaryConv" and target.b1_mma:
        packed, geometry = constant_input(node, 1), conv_parts(node).geometry
        if cuda_mma.fits(geometry.n * geometry.out_h * geometry.out_w, packed.shape[0] * packed.shape[1]):
            columns = emit_scheduled_te(bb, cuda_mma.im2col_kernel(geometry), [args[0]])
            counts = cuda_mma.emit_and_gemm(bb, columns, packed.reshape(*packed.shape[:2], -1))
            return emit_scheduled_te(bb, cuda_mma.conv_epilogue_kernel(node), [columns, counts])
    kernel = kernel_for(node)
    shape = [int(d) for d in node.inputs[0].shape]
    x = args[0]
    if node.op_type == "LowBitMatMul" and len(shape) != 2:
        x = bb.emit(relax.op.reshape(x, [int(np.prod(shape[:-1])), shape[-1]]))
    out = emit_scheduled_te(bb, kernel, [x])
    if node.op_type == "LowBitMatMul" and len(shape) != 2:
        out = bb.emit(relax.op.reshape(out, [*shape[:-1], int(node.inputs[1].shape[1])]))
    return out


def kernel_for(node: ir.Node) -> TeKernel:
    """The CUDA-core kernel of a bitc node (its compute over the node's input and constants, and its schedule)."""
    make = _KERNELS.get(node.op_type) if ops.is_bitc(node) else None
    if make is None:
        raise CompileError(f"node '{node.name}': {node.op_type} has no CUDA kernel (it runs on --target cpu)")
    return make(node)


def emit_scheduled_te(bb: Any, kernel: TeKernel, args: list[Any]) -> Any:
    """Build the compute over placeholders shaped like `args` + the kernel's constants, schedule it for the GPU
    (None: dlight schedules it later) and call it."""
    from tvm import relax, s_tir, te

    inputs = [*args, *(relax_const(c) for c in kernel.constants)]
    placeholders = [
        te.placeholder([int(d) for d in value.ty.shape], value.ty.dtype, name=name)
        for value, name in zip(inputs, kernel.names, strict=True)
    ]
    output = kernel.compute(*placeholders)
    func = te.create_prim_func([*placeholders, output])
    if kernel.schedule is not None:
        sch = s_tir.Schedule(func)
        kernel.schedule(sch)
        func = sch.mod["main"]
    attrs = kernels.kernel_attrs(kernel.name, scheduled=kernel.schedule is not None)
    gvar = bb.add_func(func.without_attr("global_symbol").with_attr(attrs), f"bitc_{kernel.name}")
    shape = [int(d) for d in output.shape]
    return bb.emit(relax.call_tir(gvar, inputs, relax.TensorType(shape, output.dtype)))


def _bitpack(node: ir.Node) -> TeKernel:
    thresholds = tuple(float(t) for t in ops.get("BitPack").attrs(node)["thresholds"])
    return TeKernel("bitpack", lambda x: kernels.bitpack(x, thresholds), [], ["x"], elementwise_schedule)


def _packed_max_pool(node: ir.Node) -> TeKernel:
    attrs = ops.get("PackedMaxPool").attrs(node)
    window, strides, pads = tuple(attrs["kernel_shape"]), tuple(attrs["strides"]), tuple(attrs["pads"])
    return TeKernel(
        "packed_max_pool",
        lambda x: kernels.packed_max_pool(x, window, strides, pads),
        [],
        ["x"],
        elementwise_schedule,
    )


def _binary_conv(node: ir.Node) -> TeKernel:
    parts = conv_parts(node)
    count = len(parts.epilogue)
    return TeKernel(
        "binary_conv",
        conv_compute(parts, 1, flat_pixels=True),
        [kernels.block_weights(constant_input(node, 1), 1), *parts.epilogue, *parts.correction],
        ["data", "weights", *(f"epilogue{i}" for i in range(count)), *(["correction"] * len(parts.correction))],
        popcount_schedule("weights"),
    )


def _round_to_format(node: ir.Node) -> TeKernel:
    return TeKernel("round_to_format", round_to_format_compute(node), [], ["x"], elementwise_schedule)


def _reinterpret(node: ir.Node) -> TeKernel:
    return TeKernel("reinterpret", reinterpret_compute(node), [], ["x"], elementwise_schedule)


def _binary_dense(node: ir.Node) -> TeKernel:
    epilogue = epilogue_constants(node)
    return TeKernel(
        "binary_dense",
        dense_compute(node, 1),
        [kernels.block_weights(constant_input(node, 1), 1), *epilogue],
        ["data", "weights", *(f"epilogue{i}" for i in range(len(epilogue)))],
        popcount_schedule("data", "weights"),
    )


def _lowbit_matmul(node: ir.Node) -> TeKernel:
    """Decode-sized row counts get the warp-per-row GEMV; larger ones the plain compute (dlight's schedule)."""
    from bitc.codegen import lowbit_kernels as lowbit

    attrs = ops.get("LowBitMatMul").attrs(node)
    packed, scales = constant_input(node, 1), constant_input(node, 2).astype(np.float32)
    in_features, group_size = int(attrs["in_features"]), int(attrs["group_size"])
    rows = int(np.prod([int(d) for d in node.inputs[0].shape[:-1]]))
    names = ["x", "weights", "scales"]
    if rows <= cuda_gemv.MAX_ROWS:
        return TeKernel(
            "lowbit_gemv",
            lambda x, w, s: cuda_gemv.compute(x, w, s, in_features, group_size),
            [packed, scales],
            names,
            lambda sch: cuda_gemv.schedule(sch, in_features),
        )
    return TeKernel(
        "lowbit_matmul",
        lambda x, w, s: lowbit.generic_matmul(x, w, s, in_features, group_size),
        [packed, scales],
        names,
        None,
    )


_KERNELS: dict[str, Callable[[ir.Node], TeKernel]] = {
    "BitPack": _bitpack,
    "BinaryConv": _binary_conv,
    "BinaryDense": _binary_dense,
    "PackedMaxPool": _packed_max_pool,
    "LowBitMatMul": _lowbit_matmul,
    "RoundToFormat": _round_to_format,
    "Reinterpret": _reinterpret,
}
