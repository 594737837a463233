"""Narrow types (bfloat16, float8, float4, int4, int2) run on wider carriers, exactly.

TVM has no kernels for these types, and numpy only knows them through ml_dtypes. Every value of a narrow type
becomes a carrier value holding exactly a value of that type: float32 for the float formats, int8/uint8 for the
integers. Values enter a narrow type only through the ops rewritten here, each with the type's own rounding:

- Cast / QuantizeLinear to a narrow float: `bitc.RoundToFormat` (round to nearest even, ONNX's saturation);
- Cast / QuantizeLinear to a narrow integer: wrap (Cast) or clamp (QuantizeLinear) to the type's range;
- Cast / DequantizeLinear from a narrow type read the carrier, which holds the exact value.

Ops that only move or select values (Reshape, Gather, Where, Max, comparisons...) give the same carrier values
as the narrow type would. Any other op computing in a narrow type is refused naming the node: computing it in
float32 would round differently from the type. The graph's narrow inputs and outputs are recorded in the model's
metadata (`IO_METADATA_KEY`); the runtime converts them from and to the narrow numpy types (ml_dtypes).
"""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir

from bitc.errors import BadInputError
from bitc.frontend.onnx_lowering import Builder, taken_names
from bitc.ir import graph_edit
from bitc.ops.round_to_format import FORMATS, RoundToFormat
from bitc.runtime.narrow_dtypes import CARRIERS

IO_METADATA_KEY = "bitc.narrow_io"

# Ops whose outputs are values (or shapes, indices, booleans) of their inputs: exact on carriers.
MOVES_VALUES = {
    "Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Concat", "Split", "Slice", "Gather",
    "GatherElements", "GatherND", "Expand", "Tile", "Compress", "ReverseSequence", "Unique", "OneHot", "Where",
    "Pad", "Shape", "Size", "Max", "Min", "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "ReduceMax",
    "ReduceMin", "ArgMax", "ArgMin", "TopK", "DepthToSpace", "SpaceToDepth", "IsNaN", "Optional", "OptionalGetElement",
}  # fmt: skip


# Every ONNX type the runtime carries (bitc.runtime.narrow_dtypes names them by their numpy names).
NARROW_TYPES = frozenset(d for d in ir.DataType if d != ir.DataType.UNDEFINED and d.numpy().name in CARRIERS)


def narrow_io(model: ir.Model) -> dict[str, str]:
    """The model's inputs and outputs of a narrow type, by name: their numpy dtype names (not the carriers')."""
    return json.loads(model.metadata_props.get(IO_METADATA_KEY, "{}"))


def is_narrow(dtype: ir.DataType | None) -> bool:
    return dtype in NARROW_TYPES


def carrier(dtype: ir.DataType) -> ir.DataType:
    return ir.DataType.from_numpy(np.dtype(CARRIERS[dtype.numpy().name]))


def float_format(dtype: ir.DataType | None) -> str | None:
    """The RoundToFormat format of a narrow float type (its numpy name), else None."""
    return dtype.numpy().name if is_narrow(dtype) and dtype.is_floating_point() else None


def emulate_narrow_types(model: ir.Model, source: str) -> bool:
    """Rewrite `model` so no value has a narrow type; False (nothing changed) when none has one."""
    graph = model.graph
    values = [*graph.inputs, *graph.initializers.values(), *(v for node in graph for v in node.outputs)]
    if not any(is_narrow(v.dtype) for v in values) and not any(_needs_rewrite(node) for node in graph):
        return False
    io = {v.name: v.dtype.numpy().name for v in [*graph.inputs, *graph.outputs] if is_narrow(v.dtype)}
    taken = taken_names(graph)
    for node in list(graph):
        _rewrite(graph, node, source, taken)
    for value in graph.initializers.values():
        if is_narrow(value.dtype) and value.const_value is not None:
            array = value.const_value.numpy().astype(carrier(value.dtype).numpy())
            value.const_value = ir.tensor(array, name=value.name)
    for value in [*graph.inputs, *graph.initializers.values(), *(v for node in graph for v in node.outputs)]:
        if is_narrow(value.dtype):
            value.dtype = carrier(value.dtype)
    if io:
        model.metadata_props[IO_METADATA_KEY] = json.dumps(io)
    return True


def _needs_rewrite(node: ir.Node) -> bool:
    """A Cast to a narrow type, or a blocked (de)quantization, all of whose values may have wide types."""
    if node.domain != "":
        return False
    return (node.op_type == "Cast" and is_narrow(_target(node))) or (
        node.op_type in ("QuantizeLinear", "DequantizeLinear") and _blocked(node)
    )


def _target(node: ir.Node) -> ir.DataType | None:
    attr = node.attributes.get("to")
    return ir.DataType(attr.as_int()) if attr is not None else None


def _rewrite(graph: ir.Graph, node: ir.Node, source: str, taken: set[str]) -> None:
    where = f"{source}: node '{node.name}' ({node.op_type})"
    inputs = [v for v in node.inputs if v is not None]
    narrow = [v.dtype for v in [*inputs, *node.outputs] if is_narrow(v.dtype)]
    standard = node.domain == ""
    if standard and node.op_type == "Cast" and is_narrow(_target(node)):
        replacement = _cast_to(Builder(graph, node, taken=taken), node, where)
    elif standard and node.op_type == "QuantizeLinear" and (is_narrow(node.outputs[0].dtype) or _blocked(node)):
        replacement = _quantize(Builder(graph, node, taken=taken), node, where)
    elif standard and node.op_type == "DequantizeLinear" and (is_narrow(node.inputs[0].dtype) or _blocked(node)):
        replacement = _dequantize(Builder(graph, node, taken=taken), node, where)
    elif not narrow or (standard and node.op_type in MOVES_VALUES) or node.op_type == "Cast":
        if any(isinstance(a.value, ir.Graph) for a in node.attributes.values()) and narrow:
            raise BadInputError(f"{where} has a subgraph over {narrow[0].name.lower()} values: not supported")
        return  # Cast from a narrow type reads the carrier, which holds the exact value
    else:
        raise BadInputError(
            f"{where} computes in {narrow[0].name.lower()}: bitc runs narrow types only through Cast, "
            "QuantizeLinear, DequantizeLinear and ops that move values; cast to float32 around it"
        )
    output = node.outputs[0]
    graph_edit.replace_output(graph, output, replacement)
    replacement.shape, replacement.dtype = output.shape, output.dtype  # narrow until every node is rewritten
    graph.remove(node, safe=True)


def _blocked(node: ir.Node) -> bool:
    """Blocked (de)quantization: TVM's importer has none, and the rewrite below covers it for every type."""
    return node.attributes.get_int("block_size", 0) > 0


def _integer_range(dtype: ir.DataType | None) -> tuple[int, int] | None:
    """(lowest, highest) of an integer type, narrow or not; None for other types."""
    if dtype is None or not dtype.is_integer():
        return None
    bits = dtype.bitwidth
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if dtype.is_signed() else (0, (1 << bits) - 1)


def _cast_to(b: Builder, node: ir.Node, where: str) -> ir.Value:
    target, x = _target(node), node.inputs[0]
    if x.dtype in (ir.DataType.INT64, ir.DataType.UINT64):
        raise BadInputError(f"{where}: casting 64-bit integers to {target.name.lower()} is not supported")
    if target.is_integer() and x.dtype is not None and x.dtype.is_floating_point():
        return _float_to_narrow_int(b, x, target)
    if target.is_integer():
        return _wrap(b, b.op("Cast", x, to=ir.DataType.INT32), target)
    return _round(b, _as_float(b, x), float_format(target), node.attributes.get_int("saturate", 1))


def _typed(value: ir.Value, dtype: ir.DataType | None, shape: ir.Shape | None) -> ir.Value:
    """Give a new value its type now: the rewrites below read it before shape inference runs again."""
    value.dtype, value.shape = dtype, shape
    return value


def _as_float(b: Builder, x: ir.Value) -> ir.Value:
    """x as float32 or float64, exactly (every narrow or ≤32-bit source fits)."""
    if x.dtype in (ir.DataType.FLOAT, ir.DataType.DOUBLE):
        return x
    return _typed(b.op("Cast", x, to=ir.DataType.FLOAT), ir.DataType.FLOAT, x.shape)


def _round(b: Builder, x: ir.Value, fmt: str, saturate: int) -> ir.Value:
    """bitc.RoundToFormat(x); computed here when x is a constant."""
    if x.const_value is not None:
        (array,) = RoundToFormat.reference(x.const_value.numpy(), format=fmt, saturate=saturate)
        return b.const(array)
    if x.shape is None or not x.shape.is_static():
        raise BadInputError(f"node '{b.anchor.name}' ({b.anchor.op_type}): rounding to {fmt} needs a static shape")
    return b.bitc_op("RoundToFormat", x, format=fmt, saturate=int(saturate))


def _float_to_narrow_int(b: Builder, x: ir.Value, target: ir.DataType) -> ir.Value:
    """Truncation toward zero; a value outside the type's range (and NaN) becomes 0, as onnx's reference
    (ml_dtypes) gives: ONNX leaves it undefined, and 0 keeps it defined without ever casting an out-of-range float."""
    low, high = _integer_range(target)
    x = _as_float(b, x)
    dtype = x.dtype.numpy()
    above = b.op("Greater", x, b.const(np.array(low - 1, dtype)))
    inside = b.op("And", above, b.op("Less", x, b.const(np.array(high + 1, dtype))))
    return b.op("Cast", b.op("Where", inside, x, b.const(np.array(0, dtype))), to=carrier(target))


def _wrap(b: Builder, x: ir.Value, target: ir.DataType) -> ir.Value:
    """int32 → the narrow integer type's low bits, two's complement when signed (ONNX Cast between integers)."""
    bits = target.bitwidth
    mask = b.const(np.array((1 << bits) - 1, np.int32))
    if target.is_signed():
        half = b.const(np.array(1 << (bits - 1), np.int32))
        x = b.op("Sub", b.op("BitwiseAnd", b.op("Add", x, half), mask), half)
    else:
        x = b.op("BitwiseAnd", x, mask)
    return b.op("Cast", x, to=carrier(target))


def _broadcast(b: Builder, param: ir.Value, node: ir.Node, where: str) -> ir.Value:
    """A scale or zero point shaped to broadcast against the data: scalar, per-axis or per-block."""
    x = node.inputs[0]
    if param.shape is None or x.shape is None or not (param.shape.is_static() and x.shape.is_static()):
        raise BadInputError(f"{where}: scale and zero point need static shapes")
    shape, rank = [int(d) for d in param.shape], len(x.shape)
    if int(np.prod(shape)) == 1:
        return b.op("Reshape", param, b.const(np.zeros(0, np.int64)))
    axis = node.attributes.get_int("axis", 1) % rank
    block = node.attributes.get_int("block_size", 0)
    if not block:
        dims = [1] * rank
        dims[axis] = shape[0]
        return b.op("Reshape", param, b.const(np.array(dims, np.int64)))
    indices = np.arange(int(x.shape[axis]), dtype=np.int64) // block
    return b.op("Gather", param, b.const(indices), axis=axis)


def _quantize(b: Builder, node: ir.Node, where: str) -> ir.Value:
    """round(x / scale) + zero point, clamped to the integer type; or x / scale rounded to the float format."""
    if node.attributes.get("precision") is not None:
        raise BadInputError(f"{where}: the 'precision' attribute is not supported with narrow types")
    x, scale = node.inputs[0], node.inputs[1]
    zero_point = node.inputs[2] if len(node.inputs) > 2 else None
    target = node.outputs[0].dtype
    scaled = _typed(b.op("Div", x, _broadcast(b, scale, node, where)), x.dtype, x.shape)
    if float_format(x.dtype):  # the quotient is a value of x's type, as in onnx's reference
        scaled = _round(b, scaled, float_format(x.dtype), 0)
    if (integer := _integer_range(target)) is not None:
        low, high = integer
        levels = b.op("Cast", b.op("Round", scaled), to=ir.DataType.FLOAT)
        if zero_point is not None:
            levels = b.op("Add", levels, b.op("Cast", _broadcast(b, zero_point, node, where), to=ir.DataType.FLOAT))
        clamped = b.op("Min", b.op("Max", levels, b.const(np.float32(low))), b.const(np.float32(high)))
        return b.op("Cast", clamped, to=carrier(target) if is_narrow(target) else target)
    if (fmt := float_format(target)) is None:
        name = target.name.lower() if target else "an unknown type"
        raise BadInputError(f"{where}: quantizing to {name} is not supported")
    scaled = _as_float(b, scaled)
    if zero_point is not None and not FORMATS[fmt].saturable:  # float4 adds its zero point; float8's must be 0
        zero = b.op("Cast", _broadcast(b, zero_point, node, where), to=scaled.dtype)
        scaled = _typed(b.op("Add", scaled, zero), scaled.dtype, scaled.shape)
    return _round(b, scaled, fmt, node.attributes.get_int("saturate", 1))


def _dequantize(b: Builder, node: ir.Node, where: str) -> ir.Value:
    """(x - zero point) · scale in float32, as onnx's reference; float formats ignore the zero point (float8's
    must be 0)."""
    x, scale = node.inputs[0], node.inputs[1]
    zero_point = node.inputs[2] if len(node.inputs) > 2 else None
    values = b.op("Cast", x, to=ir.DataType.FLOAT)
    if zero_point is not None and _integer_range(x.dtype) is not None:
        values = b.op("Sub", values, b.op("Cast", _broadcast(b, zero_point, node, where), to=ir.DataType.FLOAT))
    scale_f = _broadcast(b, scale, node, where)
    if scale.dtype != ir.DataType.FLOAT:
        scale_f = b.op("Cast", scale_f, to=ir.DataType.FLOAT)
    y = _typed(b.op("Mul", values, scale_f), ir.DataType.FLOAT, x.shape)
    out = node.outputs[0].dtype or ir.DataType.FLOAT
    if float_format(out):
        return _round(b, y, float_format(out), 0)
    return y if out == ir.DataType.FLOAT else b.op("Cast", y, to=out)
