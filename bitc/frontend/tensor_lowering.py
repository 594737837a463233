"""Standard ops TVM's importer lacks or gets wrong in these forms, rewritten as plain ONNX ops with the same
values: OneHot with run-time values, EyeLike with a dtype, Swish, CumProd, BitCast, Elu in float16/float64,
variadic Sum, and ReduceMax/ReduceMin over booleans."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

if TYPE_CHECKING:
    from bitc.frontend.onnx_lowering import Builder

Lowered = list[ir.Value | None] | None
# CumProd is unrolled into one multiply per position: longer axes are left for the refusal.
MAX_CUMPROD_LENGTH = 1024


def _static_shape(value: ir.Value | None) -> list[int] | None:
    if value is None or value.shape is None or not value.shape.is_static():
        return None
    return [int(d) for d in value.shape]


def constant_int(value: ir.Value | None) -> int | None:
    """The integer a one-element constant holds (a scalar attribute given as an input), else None."""
    if value is None or value.const_value is None or value.const_value.size != 1:
        return None
    return int(value.const_value.numpy().reshape(-1)[0])


def _lower_one_hot(b: Builder, node: ir.Node) -> Lowered:
    """values[1] where the index (negative ones counted from the end) equals the position along `axis`, else
    values[0]; an index outside [-depth, depth) matches no position, as in onnx's reference."""
    indices, depth, values = node.inputs[:3]
    rank = len(indices.shape) if indices.shape is not None else None
    count = constant_int(depth)
    if count is None or rank is None:
        return None
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


def _lower_sum(b: Builder, node: ir.Node) -> Lowered:
    """Sum(a, b, c, ...) as ((a + b) + c) + ...: the same order of additions, with broadcasting. TVM's importer
    stacks the inputs into one tensor and reduces it (ResNet-50's residual Sum: a copy of both operands and a
    layout round trip each time)."""
    inputs = [value for value in node.inputs if value is not None]
    if not inputs:
        return None
    total = inputs[0] if len(inputs) > 1 else b.op("Identity", inputs[0])
    for value in inputs[1:]:
        total = b.op("Add", total, value)
    return [total]


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
    """Running products along the axis, one multiply per position in numpy's order (LLVM's reassociation inside
    a fused kernel can still change the rounding, as for every float kernel)."""
    x, axis_value = node.inputs[0], node.inputs[1]
    shape, axis = _static_shape(x), constant_int(axis_value)
    if shape is None or axis is None or x.dtype is None:
        return None
    axis %= len(shape)
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
    return [b.bitc_op("Reinterpret", x, to=int(target))]


def is_exotic(dtype: ir.DataType) -> bool:
    """Types the kernels have no value type for (bfloat16, float8, int4... run on carriers, strings not at all)."""
    return dtype.numpy().kind not in "biuf" or dtype.numpy().itemsize * 8 != dtype.bitwidth


def _lower_dft(b: Builder, node: ir.Node) -> Lowered:
    """The DFT as products with constant cosine and sine matrices along the signal axis, in float64 and rounded
    to the signal's dtype once (as onnx's reference, a float64 FFT): O(n²) work instead of an FFT's O(n log n),
    for the lengths models use. Covers forward, inverse, one-sided (rfft) and one-sided inverse (irfft, the half
    spectrum's conjugate symmetry as numpy's irfft uses it), and dft_length padding or truncating the signal."""
    x = node.inputs[0]
    shape = _static_shape(x)
    if shape is None or x.dtype is None or shape[-1] not in (1, 2):
        return None
    rank, new_opset = len(shape), b.opset >= 20
    axis = constant_int(node.inputs[2]) if new_opset and len(node.inputs) > 2 and node.inputs[2] else None
    if axis is None and new_opset and len(node.inputs) > 2 and node.inputs[2] is not None:
        return None  # a run-time axis
    if axis is None:
        axis = -2 if new_opset else node.attributes.get_int("axis", 1)
    axis %= rank
    length_input = node.inputs[1] if len(node.inputs) > 1 else None
    length = constant_int(length_input)
    if (length_input is not None and length is None) or axis == rank - 1:
        return None
    inverse, onesided = node.attributes.get_int("inverse", 0), node.attributes.get_int("onesided", 0)
    size = shape[axis]
    if length is None:
        length = 2 * (size - 1) if inverse and onesided else size
    if length <= 0:
        return None
    order = [d for d in range(rank - 1) if d != axis] + [axis, rank - 1]
    moved = b.op("Cast", b.op("Transpose", x, perm=order), to=ir.DataType.DOUBLE)
    real = b.op("Gather", moved, b.const(np.array(0, np.int64)), axis=-1)
    imag = b.op("Gather", moved, b.const(np.array(1, np.int64)), axis=-1) if shape[-1] == 2 else None
    if inverse and onesided:
        rows, columns = min(size, length // 2 + 1), length
    else:
        rows, columns = min(size, length), (length // 2 + 1 if onesided else length)
    if rows < size:
        ends = b.const(np.array([rows], np.int64))
        start, axes = b.const(np.array([0], np.int64)), b.const(np.array([-1], np.int64))
        real = b.op("Slice", real, start, ends, axes)
        imag = b.op("Slice", imag, start, ends, axes) if imag is not None else None
    angle = 2 * np.pi * (np.outer(np.arange(rows), np.arange(columns)) % length) / length
    cos, sin = np.cos(angle), np.sin(angle)
    if inverse and onesided:
        weights = np.full(rows, 2.0)
        weights[0] = 1.0
        if length % 2 == 0 and rows > length // 2:
            weights[length // 2] = 1.0
        cos, sin = cos * weights[:, None] / length, sin * weights[:, None] / length
    elif inverse:
        cos, sin = cos / length, sin / length
    cos_m, sin_m = b.const(cos), b.const(sin)  # float64

    def product(value: ir.Value | None, matrix: ir.Value) -> ir.Value | None:
        return b.op("MatMul", value, matrix) if value is not None else None

    def combine(first: ir.Value | None, second: ir.Value | None, subtract: bool) -> ir.Value:
        if second is None:
            return first
        if first is None:
            return b.op("Neg", second) if subtract else second
        return b.op("Sub" if subtract else "Add", first, second)

    # forward: re = Σ re·cos + im·sin, im = Σ im·cos - re·sin; inverse: the signs of the sine terms flip
    out_real = combine(product(real, cos_m), product(imag, sin_m), subtract=bool(inverse))
    parts = [out_real]
    if not (inverse and onesided):
        parts.append(combine(product(imag, cos_m), product(real, sin_m), subtract=not inverse))
    last = b.const(np.array([-1], np.int64))
    stacked = [b.op("Unsqueeze", part, last) for part in parts]
    result = stacked[0] if len(stacked) == 1 else b.op("Concat", *stacked, axis=-1)
    result = b.op("Transpose", result, perm=[order.index(d) for d in range(rank)])
    return [b.op("Cast", result, to=x.dtype)]


def _lower_col2im(b: Builder, node: ir.Node) -> Lowered:
    """Col2Im as a ScatterElements(add) of every column entry onto its image position, with constant indices
    (entries that land in the padding go to one extra slot, cut off after)."""
    x = node.inputs[0]
    shape = _static_shape(x)
    image_value, block_value = node.inputs[1], node.inputs[2]
    if shape is None or len(shape) != 3 or x.dtype is None or image_value.const_value is None:
        return None
    if block_value.const_value is None:
        return None
    image = [int(v) for v in image_value.const_value.numpy().reshape(-1)]
    block = [int(v) for v in block_value.const_value.numpy().reshape(-1)]
    rank = len(image)
    dilations = list(node.attributes.get_ints("dilations", [1] * rank))
    strides = list(node.attributes.get_ints("strides", [1] * rank))
    pads = list(node.attributes.get_ints("pads", [0] * 2 * rank))
    kernel = int(np.prod(block))
    counts = [(image[d] + pads[d] + pads[d + rank] - dilations[d] * (block[d] - 1) - 1) // strides[d] + 1
              for d in range(rank)]  # fmt: skip
    batch, channels_kernel, blocks = shape
    if channels_kernel % kernel or blocks != int(np.prod(counts)) or min(counts) < 1:
        return None
    channels, pixels = channels_kernel // kernel, int(np.prod(image))
    offsets = np.indices(block).reshape(rank, -1, 1)  # [rank, K, 1]
    starts = np.indices(counts).reshape(rank, 1, -1)  # [rank, 1, L]
    position = np.array(starts) * np.array(strides).reshape(rank, 1, 1)
    position = position - np.array(pads[:rank]).reshape(rank, 1, 1) + offsets * np.array(dilations).reshape(rank, 1, 1)
    inside = np.all((position >= 0) & (position < np.array(image).reshape(rank, 1, 1)), axis=0)
    flat = np.ravel_multi_index(tuple(np.clip(position, 0, np.array(image).reshape(rank, 1, 1) - 1)), image)
    targets = np.where(inside, flat, pixels).reshape(1, 1, kernel * blocks).astype(np.int64)
    updates = b.op("Reshape", x, b.const(np.array([batch, channels, kernel * blocks], np.int64)))
    indices = b.op("Expand", b.const(targets), b.const(np.array([batch, channels, kernel * blocks], np.int64)))
    zeros = b.const(np.zeros((batch, channels, pixels + 1), x.dtype.numpy()))
    summed = b.op("ScatterElements", zeros, indices, updates, axis=2, reduction="add")
    image_part = b.op("Slice", summed, b.const(np.array([0], np.int64)), b.const(np.array([pixels], np.int64)),
                      b.const(np.array([2], np.int64)))  # fmt: skip
    return [b.op("Reshape", image_part, b.const(np.array([batch, channels, *image], np.int64)))]


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
    "Sum": (_always, _lower_sum),
    "CumProd": (_always, _lower_cumprod),
    "BitCast": (_always, _lower_bitcast),
    "Elu": (_not_float32, _lower_elu),
    "DFT": (_always, _lower_dft),
    "Col2Im": (_always, _lower_col2im),
}
BOOLEAN_REDUCTIONS = ("ReduceMax", "ReduceMin")
boolean_reduction = (_boolean_reduction, _lower_boolean_reduction)
