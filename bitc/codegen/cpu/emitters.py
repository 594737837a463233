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
from bitc.codegen.kernels import block_kernels, kv_chunk_kernels, kv_kernels
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
from bitc.errors import CompileError
from bitc.ops import block_matmul
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


def _block_tables(node: ir.Node, target: CpuTarget) -> tuple[block_kernels.BlockWeights, list[np.ndarray], int]:
    """A block-quantized node's codes, scales and offsets (the scales again where it has none, so the kernels
    always take three tables) re-blocked into the column tiles the CPU kernels stream, their layout, and the
    row count N; tables the format does not define are refused naming the node."""
    attrs = ops.get(node.op_type).attrs(node)
    bits, block_size, in_features = int(attrs["bits"]), int(attrs["block_size"]), int(attrs["in_features"])
    signed = bool(attrs["signed"])
    codes, scales = constant_input(node, 1), constant_input(node, 2)
    has_offsets = len(node.inputs) > 3 and node.inputs[3] is not None
    offsets = constant_input(node, 3) if has_offsets else scales
    try:
        block_matmul.check_dtypes(codes, scales, offsets, bits, signed)
    except ValueError as exc:
        raise CompileError(f"node '{node.name}': {exc}") from None
    if offsets.dtype != scales.dtype:  # one float type for both, widened only if they differ
        scales, offsets = scales.astype(np.float32), offsets.astype(np.float32)
    tile = block_kernels.tile_columns(target.vector_lanes)
    blocked = [block_kernels.block_codes(codes, bits, tile, signed)]
    blocked += [block_kernels.block_scales(table, tile) for table in (scales, offsets)]
    weights = block_kernels.BlockWeights(
        in_features, block_size, bits, blocked[0].shape[0], tile, signed, str(scales.dtype), has_offsets
    )
    return weights, blocked, codes.shape[0]


@registry.emitter("BlockQuantMatMul", "llvm")
def _block_quant_matmul(bb: relax.BlockBuilder, node: ir.Node, args: list[relax.Expr], target: CpuTarget) -> relax.Expr:
    """Codes, scales and offsets re-blocked into column tiles that stream; one row runs the GEMV (offsets through
    per-block input sums), more rows the GEMM over a dequantized block."""
    from tvm import relax

    weights, blocked, out_features = _block_tables(node, target)
    in_features, block_size, padded = weights.in_features, weights.block_size, weights.tiles * weights.tile
    constants = [relax_const(table) for table in blocked]
    shape = [int(d) for d in node.inputs[0].shape]
    rows = int(np.prod(shape[:-1]))
    x = bb.emit(relax.op.reshape(args[0], [rows, in_features]))
    if rows == 1:
        if weights.with_offsets or weights.signed:
            sums = bb.emit_te(block_kernels.block_sums, x, block_size, primfunc_name_hint="bitc_block_sums")
        else:
            sums = relax_const(np.zeros((1, in_features // block_size), np.float32))
        scaled = bb.emit_te(block_kernels.scaled_inputs, x, weights.bits, primfunc_name_hint="bitc_scaled_inputs")
        kernel = block_kernels.block_gemv(weights, target.num_cores)
        inputs = [scaled, *constants, sums]
    else:
        kernel = block_kernels.block_gemm(rows, weights, target.num_cores)
        inputs = [x, *constants]
    gvar = bb.add_func(kernel, "bitc_block_matmul")
    out = bb.emit(relax.call_tir(gvar, inputs, relax.TensorType([rows, padded], "float32")))
    if padded != out_features:
        out = bb.emit(relax.op.strided_slice(out, axes=[1], begin=[0], end=[out_features]))
    return bb.emit(relax.op.reshape(out, [*shape[:-1], out_features]))


@registry.emitter("BlockQuantGather", "llvm")
def _block_quant_gather(bb: relax.BlockBuilder, node: ir.Node, args: list[relax.Expr], target: CpuTarget) -> relax.Expr:
    """Rows of a block-quantized table, dequantized as they are read (from the layout the Linear kernels stream:
    a tied vocabulary head's blocks are then the same bytes, which the artifact stores once); the indices are
    bounds-checked first (the call fails naming the node), so no index reads outside the table."""
    from tvm import te, tirx

    from bitc.codegen.relax import index_checks

    weights, blocked, rows = _block_tables(node, target)
    bits, block_size, in_features, tile, signed = (
        weights.bits,
        weights.block_size,
        weights.in_features,
        weights.tile,
        weights.signed,
    )
    shape = tuple(int(d) for d in node.inputs[0].shape)
    dtype = str(node.inputs[0].dtype.numpy())
    spec = index_checks.index_spec(shape, dtype, (rows,), True, f"Gather '{node.name}'", normalised=False)
    indices = index_checks.emit_check(bb, args[0], spec)
    per_word = block_kernels.codes_per_word(bits)

    def compute(ids: te.Tensor, words: te.Tensor, scales: te.Tensor, *offsets: te.Tensor) -> te.Tensor:
        def value(*position: tirx.Var) -> tirx.Expr:
            raw = ids[position[:-1]].astype("int64")
            row, k = tirx.if_then_else(raw < 0, raw + rows, raw), position[-1]
            tile_of, lane, block = row // tile, row % tile, k // block_size
            word = words[tile_of, k // per_word, lane]
            code = ((word >> ((k % per_word) * bits).astype("uint32")) & ((1 << bits) - 1)).astype("int32")
            if signed:
                code = code - block_kernels.bias(bits)
            w = scales[tile_of, block, lane].astype("float32") * code.astype("float32")
            return w + offsets[0][tile_of, block, lane].astype("float32") if offsets else w

        return te.compute((*shape, in_features), value, name="block_gather")

    tables = blocked if weights.with_offsets else blocked[:2]
    return bb.emit_te(compute, indices, *(relax_const(t) for t in tables), primfunc_name_hint="bitc_block_gather")


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
        gemm = float_gemv.gemm if target.vector_lanes >= 16 else float_gemv.gemm_narrow
        kernel = gemm(rows, in_features, blocked.shape[0], target.num_cores)
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
