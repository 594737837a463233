"""ConvInteger, QLinearMatMul and QLinearConv (TVM's importer has none) as float64 convolutions and products.

Integer inputs minus their zero points are exact in float64, and so is every partial sum below 2**53 (any
8-bit layer with fewer than 2**37 terms per output), whatever order the kernel adds them in: the integer
accumulation is reproduced exactly. The requantization then follows onnx's reference step by step: the scale
product in the scales' own dtype, applied in float64, plus the zero point, rounded half to even and clamped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

if TYPE_CHECKING:
    from bitc.frontend.onnx_lowering import Builder

Lowered = list[ir.Value | None] | None
_CONV_ATTRIBUTES = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")


def _centered(b: Builder, x: ir.Value, zero_point: ir.Value | None, channel_axis_rank: int | None = None) -> ir.Value:
    """float64(x) - float64(zero point); a per-channel weight zero point [O] broadcasts over the output axis."""
    value = b.op("Cast", x, to=ir.DataType.DOUBLE)
    if zero_point is None:
        return value
    zero = b.op("Cast", zero_point, to=ir.DataType.DOUBLE)
    if channel_axis_rank is not None and zero_point.shape is not None and len(zero_point.shape) == 1:
        zero = b.op("Reshape", zero, b.const(np.array([-1] + [1] * (channel_axis_rank - 1), np.int64)))
    return b.op("Sub", value, zero)


def _conv_attributes(node: ir.Node) -> dict[str, object]:
    return {name: node.attributes[name].value for name in _CONV_ATTRIBUTES if name in node.attributes}


def _optional(node: ir.Node, index: int) -> ir.Value | None:
    return node.inputs[index] if len(node.inputs) > index else None


def _rank(value: ir.Value) -> int | None:
    return len(value.shape) if value.shape is not None else None


def _lower_conv_integer(b: Builder, node: ir.Node) -> Lowered:
    x, w = node.inputs[0], node.inputs[1]
    if _rank(w) is None:
        return None
    conv = b.op(
        "Conv",
        _centered(b, x, _optional(node, 2)),
        _centered(b, w, _optional(node, 3), _rank(w)),
        **_conv_attributes(node),
    )
    return [b.op("Cast", conv, to=ir.DataType.INT32)]


def _requantize(
    b: Builder, accumulated: ir.Value, scales: list[ir.Value], zero_point: ir.Value | None, out: ir.DataType
) -> ir.Value:
    """round(acc · (s_in · s_w / s_out) + zero point) clamped to `out`, as onnx's reference computes it."""
    multiplier = b.op("Div", b.op("Mul", scales[0], scales[1]), scales[2])
    scaled = b.op("Mul", accumulated, b.op("Cast", multiplier, to=ir.DataType.DOUBLE))
    if zero_point is not None:
        scaled = b.op("Add", scaled, b.op("Cast", zero_point, to=ir.DataType.DOUBLE))
    info = np.iinfo(out.numpy())
    rounded = b.op("Round", scaled)
    clamped = b.op("Min", b.op("Max", rounded, b.const(np.float64(info.min))), b.const(np.float64(info.max)))
    return b.op("Cast", clamped, to=out)


def _lower_qlinear_matmul(b: Builder, node: ir.Node) -> Lowered:
    a, a_scale, a_zero, w, w_scale, w_zero, y_scale, y_zero = node.inputs[:8]
    out = (y_zero or a).dtype
    if out is None:
        return None
    product = b.op("MatMul", _centered(b, a, a_zero), _centered(b, w, w_zero))
    return [_requantize(b, product, [a_scale, w_scale, y_scale], y_zero, out)]


def _lower_qlinear_conv(b: Builder, node: ir.Node) -> Lowered:
    x, x_scale, x_zero, w, w_scale, w_zero, y_scale, y_zero = node.inputs[:8]
    bias = _optional(node, 8)
    out = (y_zero or x).dtype
    if out is None or _rank(w) is None or (w_scale.shape is not None and len(w_scale.shape) > 1):
        return None
    inputs = [_centered(b, x, x_zero), _centered(b, w, w_zero, _rank(w))]
    if bias is not None:
        inputs.append(b.op("Cast", bias, to=ir.DataType.DOUBLE))
    conv = b.op("Conv", *inputs, **_conv_attributes(node))
    if w_scale.shape is not None and len(w_scale.shape) == 1 and int(w_scale.shape[0]) > 1:
        shape = np.array([1, -1] + [1] * (_rank(w) - 2), np.int64)
        w_scale = b.op("Reshape", w_scale, b.const(shape))
    return [_requantize(b, conv, [x_scale, w_scale, y_scale], y_zero, out)]


INTEGER_LOWERINGS: dict[str, Callable[[Builder, ir.Node], Lowered]] = {
    "ConvInteger": _lower_conv_integer,
    "QLinearMatMul": _lower_qlinear_matmul,
    "QLinearConv": _lower_qlinear_conv,
}
