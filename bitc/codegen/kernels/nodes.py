"""A bitc node's kernel, target-neutral: its constant inputs, its geometry and its TE compute, as the CPU and CUDA
emitters (`cpu.emitters`, `cuda.emitters`, `cuda.mma`) both build it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx_ir as ir

from bitc import ops
from bitc.codegen.kernels import binary_kernels as kernels
from bitc.codegen.kernels import narrow_kernels
from bitc.errors import CompileError
from bitc.ops.round_to_format import FORMATS

if TYPE_CHECKING:
    from tvm import relax, te


def constant_input(node: ir.Node, index: int) -> np.ndarray:
    value = node.inputs[index]
    if value is None or value.const_value is None:
        raise CompileError(f"node '{node.name}': input {index} of {node.op_type} must be a constant")
    return value.const_value.numpy()


def as_planes(array: np.ndarray) -> np.ndarray:
    """A 1-D threshold [O] is one plane: [1, O] (scale is [P, O] already; bias [O] stays 1-D)."""
    return array.reshape(1, -1) if array.dtype == np.int32 and array.ndim == 1 else array


def relax_const(array: np.ndarray) -> relax.Expr:
    from tvm import relax

    return relax.const(np.ascontiguousarray(array))


def round_to_format_compute(node: ir.Node) -> Callable[[te.Tensor], te.Tensor]:
    """compute(x) of a RoundToFormat node (an elementwise kernel the default schedules handle on any target)."""
    attrs = ops.get("RoundToFormat").attrs(node)
    fmt, saturate = FORMATS[attrs["format"]], bool(attrs["saturate"])
    return lambda x: narrow_kernels.round_to_format(x, fmt, saturate)


def reinterpret_compute(node: ir.Node) -> Callable[[te.Tensor], te.Tensor]:
    """compute(x) of a Reinterpret node: each element's bits as the target type."""
    from tvm import te, tirx

    dtype = ir.DataType(ops.get("Reinterpret").attrs(node)["to"]).numpy().name
    return lambda x: te.compute(x.shape, lambda *i: tirx.reinterpret(dtype, x(*i)), name="reinterpret")


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


def conv_compute(parts: ConvParts, lanes: int, **layout: Any) -> Callable[..., te.Tensor]:
    """compute(x, weights, *epilogue, [correction]) of `binary_kernels.binary_conv` for these parts; `layout`
    passes out_block / flat_pixels through."""
    count = len(parts.epilogue)

    def compute(x: te.Tensor, weights: te.Tensor, *rest: te.Tensor) -> te.Tensor:
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


def dense_compute(node: ir.Node, lanes: int) -> Callable[..., te.Tensor]:
    """compute(x, weights, *epilogue) of `binary_kernels.binary_dense` for a BinaryDense node."""
    attrs = ops.get("BinaryDense").attrs(node)
    planes, out_features, _ = constant_input(node, 1).shape

    def compute(x: te.Tensor, weights: te.Tensor, *epilogue: te.Tensor) -> te.Tensor:
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
