"""bitc nodes → Relax calls to our TE kernels (weights re-blocked for the target and bound as constants)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir

from bitc import ops
from bitc.codegen import binary_kernels as kernels
from bitc.codegen import float_gemv, kv_kernels, narrow_kernels
from bitc.codegen import lowbit_kernels as lowbit
from bitc.codegen.relax_rewrite import rewrite_calls
from bitc.errors import CompileError
from bitc.ops.kv_attention import FIXED_INPUTS
from bitc.ops.round_to_format import FORMATS
from bitc.runtime.kv_cache import STATE_NAMES


@dataclass(frozen=True)
class KernelTarget:
    """What the bitc kernels need to know of the device. CPU: its 32-bit vector lanes (the binary kernels' channel
    block) and the ISA of the low-bit table lookup (`lowbit_kernels.lookup_isa`; None: the portable compute).
    CUDA (`kind="cuda"`): whether 1-bit tensor-core mma exists (sm_80+)."""

    lanes: int = 16
    lookup: str | None = "avx512"
    cores: int = 1
    kind: str = "llvm"
    b1_mma: bool = False


def is_custom(node: ir.Node, target: KernelTarget) -> bool:
    """Nodes bitc emits itself: its own ops, and (on CPUs) float GEMVs over large constant weights (re-blocked;
    on GPUs dlight's GEMV rule schedules those)."""
    return ops.is_bitc(node) or (target.kind == "llvm" and float_gemv.is_streamed_gemv(node))


def emit(bb: Any, node: ir.Node, args: list[Any], target: KernelTarget) -> list[Any]:
    """Emit `node` into the block builder; `args` are the Relax values of its non-constant inputs, in order."""
    if not ops.is_bitc(node):
        return [_float_gemv(bb, node, args, target)]
    emitter = _EMITTERS.get(node.op_type)
    if emitter is None:
        raise CompileError(f"node '{node.name}': bitc op {node.op_type} has no kernel")
    return [emitter(bb, node, args, target)]


def _attrs(kernel: str) -> dict[str, Any]:
    return {"primfunc_attrs": kernels.kernel_attrs(kernel, scheduled=False)}


def constant_input(node: ir.Node, index: int) -> np.ndarray:
    value = node.inputs[index]
    if value is None or value.const_value is None:
        raise CompileError(f"node '{node.name}': input {index} of {node.op_type} must be a constant")
    return value.const_value.numpy()


def as_planes(array: np.ndarray) -> np.ndarray:
    """A 1-D threshold [O] is one plane: [1, O] (scale is [P, O] already; bias [O] stays 1-D)."""
    return array.reshape(1, -1) if array.dtype == np.int32 and array.ndim == 1 else array


def relax_const(array: np.ndarray) -> Any:
    from tvm import relax

    return relax.const(np.ascontiguousarray(array))


def _bitpack(bb: Any, node: ir.Node, args: list[Any], target: KernelTarget) -> Any:
    lanes = target.lanes
    x = args[0]
    shape = [int(d) for d in node.inputs[0].shape]
    if len(shape) == 4 and shape[1] % lanes == 0:  # read the blocked layout the float convs around us use
        x = bb.emit(to_blocked(x, lanes))
    thresholds = tuple(float(t) for t in ops.get("BitPack").attrs(node)["thresholds"])

    def compute(x: Any) -> Any:
        return kernels.bitpack(x, thresholds)

    return bb.emit_te(compute, x, primfunc_name_hint="bitc_bitpack", **_attrs("bitpack"))


def _round_to_format(bb: Any, node: ir.Node, args: list[Any], target: KernelTarget) -> Any:
    return bb.emit_te(round_to_format_compute(node), args[0], primfunc_name_hint="bitc_round_to_format")


def round_to_format_compute(node: ir.Node) -> Callable[[Any], Any]:
    """compute(x) of a RoundToFormat node (an elementwise kernel the default schedules handle on any target)."""
    attrs = ops.get("RoundToFormat").attrs(node)
    fmt, saturate = FORMATS[attrs["format"]], bool(attrs["saturate"])
    return lambda x: narrow_kernels.round_to_format(x, fmt, saturate)


def _reinterpret(bb: Any, node: ir.Node, args: list[Any], target: KernelTarget) -> Any:
    return bb.emit_te(reinterpret_compute(node), args[0], primfunc_name_hint="bitc_reinterpret")


def reinterpret_compute(node: ir.Node) -> Callable[[Any], Any]:
    """compute(x) of a Reinterpret node: each element's bits as the target type."""
    from tvm import te, tirx

    dtype = ir.DataType(ops.get("Reinterpret").attrs(node)["to"]).numpy().name
    return lambda x: te.compute(x.shape, lambda *i: tirx.reinterpret(dtype, x(*i)), name="reinterpret")


def to_blocked(x: Any, block: int) -> Any:
    """NCHW → NCHW{block}c. `cancel_layout_round_trips` removes it where the producer is blocked already."""
    from tvm import relax

    return relax.op.layout_transform(x, index_map=lambda n, c, h, w: (n, c // block, h, w, c % block))


def from_blocked(x: Any, block: int) -> Any:
    from tvm import relax

    return relax.op.layout_transform(x, index_map=lambda n, cb, h, w, cl: (n, cb * block + cl, h, w))


def epilogue_constants(node: ir.Node) -> list[np.ndarray]:
    """A BinaryConv/BinaryDense node's epilogue inputs (thresholds, or scale and bias), thresholds as [P, O]."""
    return [np.ascontiguousarray(as_planes(constant_input(node, i))) for i in range(2, len(node.inputs))]


@dataclass
class ConvParts:
    """What a BinaryConv node's kernels (CPU and CUDA) are built from: geometry, epilogue constants, the
    zero-padding correction and its edge classes."""

    geometry: kernels.ConvGeometry
    epilogue: list[np.ndarray]
    correction: list[np.ndarray]  # [] or [table]
    classes: tuple[int, int, int, int]
    output: str


def conv_parts(node: ir.Node) -> ConvParts:
    attrs = ops.get("BinaryConv").attrs(node)
    packed = constant_input(node, 1)
    planes, out_channels, kh, kw, _ = packed.shape
    n, h, w, _ = (int(d) for d in node.inputs[0].shape)
    geometry = kernels.ConvGeometry(
        n=n,
        h=h,
        w=w,
        in_channels=int(attrs["in_channels"]),
        out_channels=out_channels,
        kh=kh,
        kw=kw,
        strides=tuple(attrs["strides"]),
        pads=tuple(attrs["pads"]),
        planes=planes,
    )
    correction, classes = [], (0, 0, 0, 0)
    if attrs["pad_value"] == 0 and any(geometry.pads):
        table, *classes = kernels.zero_pad_correction(packed, geometry)
        correction = [table]
    return ConvParts(geometry, epilogue_constants(node), correction, tuple(classes), attrs["output_format"])


def conv_compute(parts: ConvParts, lanes: int, **layout: Any) -> Callable[..., Any]:
    """compute(x, weights, *epilogue, [correction]) of `binary_kernels.binary_conv` for these parts; `layout`
    passes out_block / flat_pixels through."""
    count = len(parts.epilogue)

    def compute(x: Any, weights: Any, *rest: Any) -> Any:
        return kernels.binary_conv(
            x,
            weights,
            list(rest[:count]),
            rest[count] if parts.correction else None,
            parts.geometry,
            lanes=lanes,
            output=parts.output,
            classes=parts.classes,
            **layout,
        )

    return compute


def dense_compute(node: ir.Node, lanes: int) -> Callable[..., Any]:
    """compute(x, weights, *epilogue) of `binary_kernels.binary_dense` for a BinaryDense node."""
    attrs = ops.get("BinaryDense").attrs(node)
    planes, out_features, _ = constant_input(node, 1).shape

    def compute(x: Any, weights: Any, *epilogue: Any) -> Any:
        return kernels.binary_dense(
            x,
            weights,
            list(epilogue),
            in_features=int(attrs["in_features"]),
            out_features=out_features,
            planes=planes,
            lanes=lanes,
            output=attrs["output_format"],
        )

    return compute


def _binary_conv(bb: Any, node: ir.Node, args: list[Any], target: KernelTarget) -> Any:
    lanes = target.lanes
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


def _binary_dense(bb: Any, node: ir.Node, args: list[Any], target: KernelTarget) -> Any:
    constants = [kernels.block_weights(constant_input(node, 1), target.lanes), *epilogue_constants(node)]
    return bb.emit_te(
        dense_compute(node, target.lanes),
        args[0],
        *(relax_const(c) for c in constants),
        primfunc_name_hint="bitc_binary_dense",
        **_attrs("binary_dense"),
    )


def _packed_max_pool(bb: Any, node: ir.Node, args: list[Any], target: KernelTarget) -> Any:
    attrs = ops.get("PackedMaxPool").attrs(node)

    def compute(x: Any) -> Any:
        return kernels.packed_max_pool(x, tuple(attrs["kernel_shape"]), tuple(attrs["strides"]), tuple(attrs["pads"]))

    return bb.emit_te(compute, args[0], primfunc_name_hint="bitc_packed_max_pool", **_attrs("packed_max_pool"))


def _lowbit_matmul(bb: Any, node: ir.Node, args: list[Any], target: KernelTarget) -> Any:
    from tvm import relax

    attrs = ops.get("LowBitMatMul").attrs(node)
    packed, scales = constant_input(node, 1), constant_input(node, 2).astype(np.float32)
    planes, out_features, in_words = packed.shape
    in_features, group_size = int(attrs["in_features"]), int(attrs["group_size"])
    shape = [int(d) for d in node.inputs[0].shape]
    rows = int(np.prod(shape[:-1]))
    x = args[0] if len(shape) == 2 else bb.emit(relax.op.reshape(args[0], [rows, in_features]))
    if (lookup := target.lookup) is not None:
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

        def compute(x: Any, weights: Any, scales: Any) -> Any:
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


def _float_gemv(bb: Any, node: ir.Node, args: list[Any], target: KernelTarget) -> Any:
    from tvm import relax

    weights = constant_input(node, 1)
    in_features, out_features = weights.shape
    blocked = float_gemv.block_weights(weights)
    kernel = float_gemv.gemv(in_features, blocked.shape[0], target.cores)
    gvar = bb.add_func(kernel, "bitc_float_gemv")
    x = bb.emit(relax.op.reshape(args[0], [1, in_features]))
    padded = blocked.shape[0] * float_gemv.TILE
    out = bb.emit(relax.call_tir(gvar, [x, relax_const(blocked)], relax.TensorType([1, padded], "float32")))
    if padded != out_features:
        out = bb.emit(relax.op.strided_slice(out, axes=[1], begin=[0], end=[out_features]))
    shape = [int(d) for d in node.outputs[0].shape]
    return bb.emit(relax.op.reshape(out, shape))


def _kv_attention(bb: Any, node: ir.Node, args: list[Any], target: KernelTarget) -> Any:
    from tvm import relax

    from bitc.ops.kv_attention import layout_of

    attrs = ops.get("KVAttention").attrs(node)
    query = [int(d) for d in node.inputs[0].shape]
    layers = int(node.inputs[len(FIXED_INPUTS)].shape[0])
    layout = layout_of(attrs, layers=layers, kv_heads=query[1], head_dim=query[3])
    positions = layout.quantized_capacity + layout.window_slots + kv_kernels.LANES
    if layout.pre_rope:
        cos, sin = (constant_input(node, len(node.inputs) - 2), constant_input(node, len(node.inputs) - 1))
        tables = kv_kernels.rope_tables_transposed(cos, sin, positions)
    else:
        tables = (np.zeros((layout.head_dim, 1), np.float32),) * 2
    kernel = kv_kernels.kv_attention(
        layout, query[2], int(attrs["layer"]), float(attrs["scale"]), positions if layout.pre_rope else 0
    )
    gvar = bb.add_func(kernel, f"bitc_kv_attention_{int(attrs['layer'])}")
    inputs = [*args[: len(FIXED_INPUTS) + len(STATE_NAMES)], *(relax_const(t) for t in tables)]
    return bb.emit(relax.call_tir(gvar, inputs, relax.TensorType(query, "float32")))


_EMITTERS = {
    "BitPack": _bitpack,
    "BinaryConv": _binary_conv,
    "BinaryDense": _binary_dense,
    "PackedMaxPool": _packed_max_pool,
    "LowBitMatMul": _lowbit_matmul,
    "KVAttention": _kv_attention,
    "RoundToFormat": _round_to_format,
    "Reinterpret": _reinterpret,
}


def cancel_layout_round_trips(mod: Any) -> Any:
    """layout_transform(layout_transform(x)) that maps every index back to itself → x.

    The binary kernels read and write the blocked layout; after ConvertLayout has blocked the float ops around
    them, the transform pairs between the two meet back to back and cancel."""
    from tvm import relax

    def cancel(mutator: Any, call: Any) -> Any | None:
        inner = _bound_layout_transform(mutator, call.args[0]) if _is_layout_transform(call) else None
        return inner.args[0] if inner is not None and _round_trip_is_identity(inner, call) else None

    return relax.transform.DeadCodeElimination()(rewrite_calls(mod, cancel))


def _is_layout_transform(call: Any) -> bool:
    import tvm

    return isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.layout_transform"


def _bound_layout_transform(mutator: Any, value: Any) -> Any | None:
    from tvm import relax

    if isinstance(value, relax.Var):
        value = mutator.lookup_binding(value)
    if isinstance(value, relax.Call) and _is_layout_transform(value) and value.attrs.pad_value is None:
        return value
    return None


def _round_trip_is_identity(inner: Any, outer: Any) -> bool:
    """Both maps are affine div/mod maps: checking corners and a spread of points of the input decides it."""
    if outer.attrs.pad_value is not None:
        return False
    try:
        shape = [int(d) for d in inner.args[0].ty.shape]
        if [int(d) for d in outer.ty.shape] != shape:
            return False
    except (AttributeError, TypeError, ValueError):
        return False
    rng = np.random.default_rng(0)
    points = [[0] * len(shape), [d - 1 for d in shape]] + [[int(rng.integers(d)) for d in shape] for _ in range(32)]
    for point in points:
        middle = [int(v) for v in inner.attrs.index_map.map_indices(point)]
        if [int(v) for v in outer.attrs.index_map.map_indices(middle)] != point:
            return False
    return True
