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

from bitc import graph_edit, ops
from bitc.errors import BadInputError
from bitc.frontend.onnx_lowering import Builder, taken_names
from bitc.ops.round_to_format import FORMATS, RoundToFormat

IO_METADATA_KEY = "bitc.narrow_io"

FLOAT_FORMATS: dict[ir.DataType, str] = {
    ir.DataType.BFLOAT16: "bfloat16",
    ir.DataType.FLOAT8E4M3FN: "float8_e4m3fn",
    ir.DataType.FLOAT8E4M3FNUZ: "float8_e4m3fnuz",
    ir.DataType.FLOAT8E5M2: "float8_e5m2",
    ir.DataType.FLOAT8E5M2FNUZ: "float8_e5m2fnuz",
    ir.DataType.FLOAT4E2M1: "float4_e2m1fn",
}
# narrow integer type → (bits, signed, carrier, ml_dtypes name)
INT_FORMATS: dict[ir.DataType, tuple[int, bool, ir.DataType, str]] = {
    ir.DataType.INT4: (4, True, ir.DataType.INT8, "int4"),
    ir.DataType.UINT4: (4, False, ir.DataType.UINT8, "uint4"),
    ir.DataType.INT2: (2, True, ir.DataType.INT8, "int2"),
    ir.DataType.UINT2: (2, False, ir.DataType.UINT8, "uint2"),
}

# Ops whose outputs are values (or shapes, indices, booleans) of their inputs: exact on carriers.
MOVES_VALUES = {
    "Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Concat", "Split", "Slice", "Gather",
    "GatherElements", "GatherND", "Expand", "Tile", "Compress", "ReverseSequence", "Unique", "OneHot", "Where",
    "Pad", "Shape", "Size", "Max", "Min", "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "ReduceMax",
    "ReduceMin", "ArgMax", "ArgMin", "TopK", "DepthToSpace", "SpaceToDepth", "IsNaN", "Optional", "OptionalGetElement",
}  # fmt: skip


def is_narrow(dtype: ir.DataType | None) -> bool:
    return dtype in FLOAT_FORMATS or dtype in INT_FORMATS


def carrier(dtype: ir.DataType) -> ir.DataType:
    return INT_FORMATS[dtype][2] if dtype in INT_FORMATS else ir.DataType.FLOAT


def numpy_name(dtype: ir.DataType) -> str:
    """The dtype's name in numpy (ml_dtypes) and in manifests."""
    return FLOAT_FORMATS[dtype] if dtype in FLOAT_FORMATS else INT_FORMATS[dtype][3]


def emulate_narrow_types(model: ir.Model, source: str) -> bool:
    """Rewrite `model` so no value has a narrow type; False (nothing changed) when none has one."""
    graph = model.graph
    values = [*graph.inputs, *graph.initializers.values(), *(v for node in graph for v in node.outputs)]
    if not any(is_narrow(v.dtype) for v in values) and not any(_needs_rewrite(node) for node in graph):
        return False
    io = {v.name: numpy_name(v.dtype) for v in [*graph.inputs, *graph.outputs] if is_narrow(v.dtype)}
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
    if any(ops.is_bitc(node) for node in graph):
        model.opset_imports.setdefault(ops.DOMAIN, ops.DOMAIN_VERSION)
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
    elif not narrow or (node.domain == "" and node.op_type in MOVES_VALUES) or node.op_type == "Cast":
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


def _integer_range(dtype: ir.DataType) -> tuple[int, int, ir.DataType] | None:
    """(lowest, highest, carrier) of an integer type, narrow or not; None for other types."""
    if dtype in INT_FORMATS:
        bits, signed, carrier_type, _ = INT_FORMATS[dtype]
        low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
        return low, high, carrier_type
    if dtype is not None and dtype.is_integer():
        info = np.iinfo(dtype.numpy())
        return int(info.min), int(info.max), dtype
    return None


def _cast_to(b: Builder, node: ir.Node, where: str) -> ir.Value:
    target, x = _target(node), node.inputs[0]
    if x.dtype in (ir.DataType.INT64, ir.DataType.UINT64):
        raise BadInputError(f"{where}: casting 64-bit integers to {target.name.lower()} is not supported")
    if target in INT_FORMATS and x.dtype is not None and x.dtype.is_floating_point():
        return _float_to_narrow_int(b, x, target)
    if target in INT_FORMATS:
        return _wrap(b, b.op("Cast", x, to=ir.DataType.INT32), target)
    saturate = node.attributes.get_int("saturate", 1)
    if target not in FLOAT_FORMATS:
        raise BadInputError(f"{where}: casting to {target.name.lower()} is not supported")
    return _round(b, _as_float(b, x), FLOAT_FORMATS[target], saturate)


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
    if x.shape is None or not all(isinstance(d, int) for d in x.shape):
        raise BadInputError(f"node '{b.anchor.name}' ({b.anchor.op_type}): rounding to {fmt} needs a static shape")
    b.count += 1
    node = ir.Node(
        ops.DOMAIN,
        "RoundToFormat",
        [x],
        attributes=ir.convenience.convert_attributes({"format": fmt, "saturate": int(saturate)}),
        name=f"{b.prefix}_round{b.count}",
    )
    node.outputs[0].name = f"{node.name}_out0"
    node.outputs[0].dtype, node.outputs[0].shape = ir.DataType.FLOAT, x.shape
    b.graph.insert_before(b.anchor, node)
    return node.outputs[0]


def _float_to_narrow_int(b: Builder, x: ir.Value, target: ir.DataType) -> ir.Value:
    """Truncation toward zero; a value outside the type's range (and NaN) becomes 0, as onnx's reference
    (ml_dtypes) gives: ONNX leaves it undefined, and 0 keeps it defined without ever casting an out-of-range float."""
    bits, signed, carrier_type, _ = INT_FORMATS[target]
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    x = _as_float(b, x)
    dtype = x.dtype.numpy()
    above = b.op("Greater", x, b.const(np.array(low - 1, dtype)))
    inside = b.op("And", above, b.op("Less", x, b.const(np.array(high + 1, dtype))))
    return b.op("Cast", b.op("Where", inside, x, b.const(np.array(0, dtype))), to=carrier_type)


def _wrap(b: Builder, x: ir.Value, target: ir.DataType) -> ir.Value:
    """int32 → the narrow integer type's low bits, two's complement when signed (ONNX Cast between integers)."""
    bits, signed, carrier_type, _ = INT_FORMATS[target]
    mask = b.const(np.array((1 << bits) - 1, np.int32))
    if signed:
        half = b.const(np.array(1 << (bits - 1), np.int32))
        x = b.op("Sub", b.op("BitwiseAnd", b.op("Add", x, half), mask), half)
    else:
        x = b.op("BitwiseAnd", x, mask)
    return b.op("Cast", x, to=carrier_type)


def _broadcast(b: Builder, param: ir.Value, node: ir.Node, where: str) -> ir.Value:
    """A scale or zero point shaped to broadcast against the data: scalar, per-axis or per-block."""
    x = node.inputs[0]
    if param.shape is None or x.shape is None or not all(isinstance(d, int) for d in (*param.shape, *x.shape)):
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
    if x.dtype in FLOAT_FORMATS:  # the quotient is a value of x's type, as in onnx's reference
        scaled = _round(b, scaled, FLOAT_FORMATS[x.dtype], 0)
    if (integer := _integer_range(target)) is not None:
        low, high, carrier_type = integer
        levels = b.op("Cast", b.op("Round", scaled), to=ir.DataType.FLOAT)
        if zero_point is not None:
            levels = b.op("Add", levels, b.op("Cast", _broadcast(b, zero_point, node, where), to=ir.DataType.FLOAT))
        clamped = b.op("Min", b.op("Max", levels, b.const(np.float32(low))), b.const(np.float32(high)))
        return b.op("Cast", clamped, to=carrier_type)
    if target not in FLOAT_FORMATS:
        name = target.name.lower() if target else "an unknown type"
        raise BadInputError(f"{where}: quantizing to {name} is not supported")
    fmt = FLOAT_FORMATS[target]
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
    if out in FLOAT_FORMATS:
        return _round(b, y, FLOAT_FORMATS[out], 0)
    return y if out == ir.DataType.FLOAT else b.op("Cast", y, to=out)
