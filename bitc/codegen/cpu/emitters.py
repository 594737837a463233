"""bitc nodes → Relax calls to their CPU kernels (weights re-blocked for the target's vector lanes and bound as
constants), and float GEMVs over large constant weights (re-blocked to stream; on GPUs dlight's GEMV rule schedules
those). Each emitter registers itself (`registry.emitter`) for the "llvm" target kind."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import onnx_ir as ir

from bitc import ops
from bitc.codegen import registry
from bitc.codegen.cpu import float_gemv
from bitc.codegen.cpu.nchwc import from_blocked, to_blocked
from bitc.codegen.kernels import binary_kernels as kernels
from bitc.codegen.kernels import kv_chunk_kernels, kv_kernels
from bitc.codegen.kernels import lowbit_kernels as lowbit
from bitc.codegen.kernels.nodes import (
    constant_input,
    conv_compute,
    conv_parts,
    dense_compute,
    epilogue_constants,
    reinterpret_compute,
    relax_const,
    round_to_format_compute,
)
from bitc.ops.kv_attention import FIXED_INPUTS
from bitc.runtime.kv_cache import STATE_NAMES

if TYPE_CHECKING:
    from tvm import relax, te

    from bitc.codegen.target import CpuTarget


def _attrs(kernel: str) -> dict[str, Any]:
    return {"primfunc_attrs": registry.kernel_attrs(kernel, scheduled=False)}


@registry.emitter("BitPack", "llvm")
def _bitpack(bb: relax.BlockBuilder, node: ir.Node, args: list[relax.Expr], target: CpuTarget) -> relax.Expr:
    lanes = target.vector_lanes
    x = args[0]
    shape = [int(d) for d in node.inputs[0].shape]
    if len(shape) == 4 and shape[1] % lanes == 0:  # read the blocked layout the float convs around us use
        x = bb.emit(to_blocked(x, lanes))
    thresholds = tuple(float(t) for t in ops.get("BitPack").attrs(node)["thresholds"])

    def compute(x: te.Tensor) -> te.Tensor:
        return kernels.bitpack(x, thresholds)

    return bb.emit_te(compute, x, primfunc_name_hint="bitc_bitpack", **_attrs("bitpack"))


@registry.emitter("RoundToFormat", "llvm")
def _round_to_format(bb: relax.BlockBuilder, node: ir.Node, args: list[relax.Expr], target: CpuTarget) -> relax.Expr:
    return bb.emit_te(round_to_format_compute(node), args[0], primfunc_name_hint="bitc_round_to_format")


@registry.emitter("Reinterpret", "llvm")
def _reinterpret(bb: relax.BlockBuilder, node: ir.Node, args: list[relax.Expr], target: CpuTarget) -> relax.Expr:
    return bb.emit_te(reinterpret_compute(node), args[0], primfunc_name_hint="bitc_reinterpret")


@registry.emitter("BinaryConv", "llvm")
def _binary_conv(bb: relax.BlockBuilder, node: ir.Node, args: list[relax.Expr], target: CpuTarget) -> relax.Expr:
    lanes = target.vector_lanes
    parts = conv_parts(node)
    out_channels = parts.geometry.out_channels
    out_block = lanes if parts.output == "float" and out_channels % lanes == 0 else None
    constants = [kernels.block_weights(constant_input(node, 1), lanes), *parts.epilogue, *parts.correction]
    out = bb.emit_te(
        conv_compute(parts, lanes, out_block=out_block),
        args[0],
        *(relax_const(c) for c in constants),
        primfunc_name_hint="bitc_binary_conv",
        **_attrs("binary_conv"),
    )
    return bb.emit(from_blocked(out, out_block)) if out_block else out


@registry.emitter("BinaryDense", "llvm")
def _binary_dense(bb: relax.BlockBuilder, node: ir.Node, args: list[relax.Expr], target: CpuTarget) -> relax.Expr:
    constants = [kernels.block_weights(constant_input(node, 1), target.vector_lanes), *epilogue_constants(node)]
    return bb.emit_te(
        dense_compute(node, target.vector_lanes),
        args[0],
        *(relax_const(c) for c in constants),
        primfunc_name_hint="bitc_binary_dense",
        **_attrs("binary_dense"),
    )


@registry.emitter("PackedMaxPool", "llvm")
def _packed_max_pool(bb: relax.BlockBuilder, node: ir.Node, args: list[relax.Expr], target: CpuTarget) -> relax.Expr:
    attrs = ops.get("PackedMaxPool").attrs(node)

    def compute(x: te.Tensor) -> te.Tensor:
        return kernels.packed_max_pool(x, tuple(attrs["kernel_shape"]), tuple(attrs["strides"]), tuple(attrs["pads"]))

    return bb.emit_te(compute, args[0], primfunc_name_hint="bitc_packed_max_pool", **_attrs("packed_max_pool"))


@registry.emitter("LowBitMatMul", "llvm")
def _lowbit_matmul(bb: relax.BlockBuilder, node: ir.Node, args: list[relax.Expr], target: CpuTarget) -> relax.Expr:
    from tvm import relax

    attrs = ops.get("LowBitMatMul").attrs(node)
    packed, scales = constant_input(node, 1), constant_input(node, 2).astype(np.float32)
    planes, out_features, in_words = packed.shape
    in_features, group_size = int(attrs["in_features"]), int(attrs["group_size"])
    shape = [int(d) for d in node.inputs[0].shape]
    rows = int(np.prod(shape[:-1]))
    x = args[0] if len(shape) == 2 else bb.emit(relax.op.reshape(args[0], [rows, in_features]))
    if (lookup := target.lookup_isa) is not None:
        lanes = lowbit.lookup_lanes(lookup)
        tables = bb.emit_te(
            lowbit.lookup_tables, x, in_words, primfunc_name_hint="bitc_lowbit_tables", **_attrs("lowbit_tables")
        )
        weights, blocked_scales = lowbit.block_weights(packed, lanes), lowbit.block_scales(scales, lanes)
        blocks, groups = weights.shape[1], scales.shape[2]
        group_words = in_words if group_size <= 0 else group_size // lowbit.WORD_BITS
        kernel = lowbit.lut_matmul(rows, blocks, in_words, planes, groups, group_words, lookup)
        gvar = bb.add_func(kernel, "bitc_lowbit_matmul")
        padded = relax.TensorType([rows, blocks * lanes], "float32")
        out = bb.emit(relax.call_tir(gvar, [tables, relax_const(weights), relax_const(blocked_scales)], padded))
        if blocks * lanes != out_features:
            out = bb.emit(relax.op.strided_slice(out, axes=[1], begin=[0], end=[out_features]))
    else:

        def compute(x: te.Tensor, weights: te.Tensor, scales: te.Tensor) -> te.Tensor:
            return lowbit.generic_matmul(x, weights, scales, in_features, group_size)

        out = bb.emit_te(
            compute,
            x,
            relax_const(packed),
            relax_const(scales),
            primfunc_name_hint="bitc_lowbit_matmul",
            **_attrs("lowbit_generic"),
        )
    return out if len(shape) == 2 else bb.emit(relax.op.reshape(out, [*shape[:-1], out_features]))


@registry.emitter("MatMul", "llvm", domain="", when=float_gemv.is_blocked_matmul)
def _float_gemv(bb: relax.BlockBuilder, node: ir.Node, args: list[relax.Expr], target: CpuTarget) -> relax.Expr:
    """One row (a decode step) or a few (a prefill chunk) by a constant matrix, over the same re-blocked weights."""
    from tvm import relax

    weights = constant_input(node, 1)
    in_features, out_features = weights.shape
    rows = float_gemv.blocked_rows(node)
    blocked = float_gemv.block_weights(weights)
    if rows == 1:
        kernel = float_gemv.gemv(in_features, blocked.shape[0], target.num_cores)
        gvar = bb.add_func(kernel, "bitc_float_gemv")
    else:
        kernel = float_gemv.gemm(rows, in_features, blocked.shape[0], target.num_cores)
        gvar = bb.add_func(kernel, "bitc_float_gemm")
    x = bb.emit(relax.op.reshape(args[0], [rows, in_features]))
    padded = blocked.shape[0] * float_gemv.TILE
    out = bb.emit(relax.call_tir(gvar, [x, relax_const(blocked)], relax.TensorType([rows, padded], "float32")))
    if padded != out_features:
        out = bb.emit(relax.op.strided_slice(out, axes=[1], begin=[0], end=[out_features]))
    shape = [int(d) for d in node.outputs[0].shape]
    return bb.emit(relax.op.reshape(out, shape))


@registry.emitter("KVAttention", "llvm")
def _kv_attention(bb: relax.BlockBuilder, node: ir.Node, args: list[relax.Expr], target: CpuTarget) -> relax.Expr:
    from tvm import relax

    from bitc.ops.kv_attention import layout_of

    attrs = ops.get("KVAttention").attrs(node)
    query = [int(d) for d in node.inputs[0].shape]
    tokens = int(node.inputs[1].shape[2])
    layers = int(node.inputs[len(FIXED_INPUTS)].shape[0])
    layout = layout_of(attrs, layers=layers, kv_heads=query[1], head_dim=query[3])
    if tokens == 1:
        positions = layout.quantized_capacity + layout.window_slots + kv_kernels.LANES
    else:
        positions = kv_chunk_kernels.scratch_tokens(layout, tokens)
    if layout.pre_rope:
        cos, sin = (constant_input(node, len(node.inputs) - 2), constant_input(node, len(node.inputs) - 1))
        tables = kv_kernels.rope_tables_transposed(cos, sin, positions)
    else:
        tables = (np.zeros((layout.head_dim, 1), np.float32),) * 2
    rope_positions = positions if layout.pre_rope else 0
    layer, scale = int(attrs["layer"]), float(attrs["scale"])
    if tokens == 1:
        kernel = kv_kernels.kv_attention(layout, query[2], layer, scale, rope_positions)
    else:
        kernel = kv_chunk_kernels.kv_chunk_attention(layout, query[2] // tokens, tokens, layer, scale, rope_positions)
    gvar = bb.add_func(kernel, f"bitc_kv_attention_{int(attrs['layer'])}")
    inputs = [*args[: len(FIXED_INPUTS) + len(STATE_NAMES)], *(relax_const(t) for t in tables)]
    return bb.emit(relax.call_tir(gvar, inputs, relax.TensorType(query, "float32")))
