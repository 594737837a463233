"""Standard ops TVM's importer lacks or gets wrong in these forms, rewritten as plain ONNX ops with the same
values: OneHot with run-time values, EyeLike with a dtype, Swish, CumProd, BitCast, Elu in float16/float64, and
ReduceMax/ReduceMin over booleans."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

if TYPE_CHECKING:
    from bitc.frontend.onnx_lowering import Builder

Lowered = list[ir.Value | None] | None
# CumProd is unrolled into one multiply per position (the reference's order): longer axes are refused.
MAX_CUMPROD_LENGTH = 1024


def _static_shape(value: ir.Value | None) -> list[int] | None:
    if value is None or value.shape is None or not all(isinstance(d, int) for d in value.shape):
        return None
    return [int(d) for d in value.shape]


def _lower_one_hot(b: Builder, node: ir.Node) -> Lowered:
    """values[1] where the index (negative ones counted from the end) equals the position along `axis`, else
    values[0]; an index outside [-depth, depth) matches no position, as in onnx's reference."""
    indices, depth, values = node.inputs[:3]
    rank = len(indices.shape) if indices.shape is not None else None
    if depth.const_value is None or rank is None:
        return None
    count = int(np.asarray(depth.const_value.numpy()).reshape(-1)[0])
    axis = node.attributes.get_int("axis", -1) % (rank + 1)
    index = b.op("Cast", indices, to=ir.DataType.INT64)
    size = b.const(np.array(count, np.int64))
    index = b.op("Where", b.op("Less", index, b.const(np.array(0, np.int64))), b.op("Add", index, size), index)
    positions = np.arange(count, dtype=np.int64).reshape([count if i == axis else 1 for i in range(rank + 1)])
    hit = b.op("Equal", b.op("Unsqueeze", index, b.const(np.array([axis], np.int64))), b.const(positions))
    off = b.op("Gather", values, b.const(np.array(0, np.int64)), axis=0)
    on = b.op("Gather", values, b.const(np.array(1, np.int64)), axis=0)
    return [b.op("Where", hit, on, off)]


def _lower_eye_like(b: Builder, node: ir.Node) -> Lowered:
    """A constant: the identity pattern depends only on the (static) shape."""
    shape = _static_shape(node.inputs[0])
    dtype_attr = node.attributes.get("dtype")
    dtype = ir.DataType(dtype_attr.as_int()) if dtype_attr is not None else node.inputs[0].dtype
    if shape is None or len(shape) != 2 or dtype is None:
        return None
    eye = np.eye(shape[0], shape[1], k=node.attributes.get_int("k", 0)).astype(dtype.numpy())
    return [b.const(eye)]


def _lower_swish(b: Builder, node: ir.Node) -> Lowered:
    """x · sigmoid(alpha · x)."""
    x = node.inputs[0]
    if x.dtype is None:
        return None
    alpha = b.const(np.array(node.attributes.get_float("alpha", 1.0), x.dtype.numpy()))
    return [b.op("Mul", x, b.op("Sigmoid", b.op("Mul", alpha, x)))]


def _not_float32(node: ir.Node) -> bool:
    return node.inputs[0] is not None and node.inputs[0].dtype not in (None, ir.DataType.FLOAT)


def _lower_elu(b: Builder, node: ir.Node) -> Lowered:
    """x where x > 0, else alpha · (exp(x) - 1), in x's dtype (the importer's Elu mixes in a float32 constant)."""
    x = node.inputs[0]
    dtype = x.dtype.numpy()
    alpha = b.const(np.array(node.attributes.get_float("alpha", 1.0), dtype))
    negative = b.op("Mul", alpha, b.op("Sub", b.op("Exp", x), b.const(np.array(1, dtype))))
    return [b.op("Where", b.op("Greater", x, b.const(np.array(0, dtype))), x, negative)]


def _lower_cumprod(b: Builder, node: ir.Node) -> Lowered:
    """Running products along the axis, one multiply per position in order (as numpy's cumprod)."""
    x, axis_value = node.inputs[0], node.inputs[1]
    shape = _static_shape(x)
    if shape is None or axis_value.const_value is None or x.dtype is None:
        return None
    axis = int(np.asarray(axis_value.const_value.numpy()).reshape(-1)[0]) % len(shape)
    length = shape[axis]
    if length == 0 or length > MAX_CUMPROD_LENGTH:
        return None
    exclusive, reverse = node.attributes.get_int("exclusive", 0), node.attributes.get_int("reverse", 0)
    axes = b.const(np.array([axis], np.int64))

    def part(i: int) -> ir.Value:
        return b.op("Slice", x, b.const(np.array([i], np.int64)), b.const(np.array([i + 1], np.int64)), axes)

    order = list(range(length))[::-1] if reverse else list(range(length))
    ones_shape = [1 if i == axis else d for i, d in enumerate(shape)]
    running = b.const(np.ones(ones_shape, x.dtype.numpy())) if exclusive else part(order[0])
    results = {order[0]: running}
    for previous, position in itertools.pairwise(order):
        running = b.op("Mul", running, part(previous if exclusive else position))
        results[position] = running
    if length == 1:
        return [results[0]]
    return [b.op("Concat", *(results[i] for i in range(length)), axis=axis)]


def _lower_bitcast(b: Builder, node: ir.Node) -> Lowered:
    """Integers of one width: Cast (two's complement wrap keeps the bits; bool is the byte 0 or 1). Floats and
    integers: bitc.Reinterpret. Other widths (and casts to bool, whose other byte values are not booleans) stay."""
    x, target = node.inputs[0], ir.DataType(node.attributes.get_int("to", 0))
    if x.dtype is None or target == ir.DataType.BOOL or x.dtype.bitwidth != target.bitwidth:
        return None
    if x.dtype == target:
        return [b.op("Identity", x)]
    if not x.dtype.is_floating_point() and not target.is_floating_point():
        return [b.op("Cast", x, to=target)]
    if any(is_exotic(t) for t in (x.dtype, target)):
        return None
    return [bitc_node(b, "Reinterpret", x, to=int(target))]


def is_exotic(dtype: ir.DataType) -> bool:
    """Types the kernels have no value type for (bfloat16, float8, int4... run on carriers, strings not at all)."""
    return dtype.numpy().kind not in "biuf" or dtype.numpy().itemsize * 8 != dtype.bitwidth


def bitc_node(b: Builder, op_type: str, *inputs: ir.Value, **attributes: object) -> ir.Value:
    """A bitc-domain node before the anchor, its output typed by the op's own rule."""
    from bitc import ops

    b.count += 1
    node = ir.Node(
        ops.DOMAIN,
        op_type,
        list(inputs),
        attributes=ir.convenience.convert_attributes(attributes),
        name=f"{b.prefix}_{op_type.lower()}{b.count}",
    )
    node.outputs[0].name = f"{node.name}_out0"
    if all(v.shape is not None and all(isinstance(d, int) for d in v.shape) for v in inputs):
        ops.infer_shapes(node)
    b.graph.insert_before(b.anchor, node)
    b.graph.opset_imports.setdefault(ops.DOMAIN, ops.DOMAIN_VERSION)
    return node.outputs[0]


def _boolean_reduction(node: ir.Node) -> bool:
    return node.inputs[0] is not None and node.inputs[0].dtype == ir.DataType.BOOL


def _lower_boolean_reduction(b: Builder, node: ir.Node) -> Lowered:
    """max/min of booleans (any/all) over 0/1 bytes: TVM has no min or max value for bool."""
    inputs = [b.op("Cast", node.inputs[0], to=ir.DataType.UINT8), *node.inputs[1:]]
    attributes = {name: attr.value for name, attr in node.attributes.items()}
    reduced = b.op(node.op_type, *inputs, **attributes)
    return [b.op("Cast", reduced, to=ir.DataType.BOOL)]


def _always(node: ir.Node) -> bool:
    return True


TENSOR_LOWERINGS: dict[str, tuple[Callable[[ir.Node], bool], Callable[[Builder, ir.Node], Lowered]]] = {
    "OneHot": (_always, _lower_one_hot),
    "EyeLike": (_always, _lower_eye_like),
    "Swish": (_always, _lower_swish),
    "CumProd": (_always, _lower_cumprod),
    "BitCast": (_always, _lower_bitcast),
    "Elu": (_not_float32, _lower_elu),
}
BOOLEAN_REDUCTIONS = ("ReduceMax", "ReduceMin")
boolean_reduction = (_boolean_reduction, _lower_boolean_reduction)
