"""LowBitMatMul: float activations times low-bit weights W = Σₚ αₚ ⊙ Bₚ (Bₚ ∈ {±1}, one bit per weight).

The weight format of binarized transformer layers: 1 plane is 1-bit weights, k planes residual / multi-bit
binarization, two planes with equal scales a ternary code ({−α, 0, +α} = α/2·(B₁ + B₂)). Scales are per output
channel and group of `group_size` input channels (0: one group per row). Activations stay float: this is the
memory-bound decode GEMV of an LLM, where the weight bytes decide the speed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import onnx
import onnx_ir as ir

from bitc.ops.base import DOMAIN, BitcOp
from bitc.ops.packing import WORD_BITS, to_pm1, unpack_signs, words


class LowBitMatMul(BitcOp):
    """x [..., K] float, weights [planes, N, ⌈K/32⌉] uint32, scales [planes, N, groups] float16 or float32 →
    [..., N] float (scales are widened to float32 before use)."""

    name = "LowBitMatMul"
    inputs = ("x", "weights", "scales")
    required = ("in_features",)
    attributes: ClassVar[dict[str, Any]] = {"group_size": 0}

    @classmethod
    def output_types(cls, input_shapes: Sequence[tuple[int, ...]], **attrs: Any) -> list[tuple[ir.DataType, tuple]]:
        if len(input_shapes) != 3:
            raise ValueError(f"needs 3 inputs (x, weights, scales), got {len(input_shapes)}")
        x, weights, scales = input_shapes
        k, group_size = int(attrs["in_features"]), int(attrs["group_size"])
        expected_scales = (*weights[:2], group_count(k, group_size)) if len(weights) == 3 else None
        if not x or x[-1] != k or len(weights) != 3 or weights[2] != words(k) or tuple(scales) != expected_scales:
            raise ValueError(
                f"shapes x {list(x)}, weights {list(weights)}, scales {list(scales)} do not fit in_features={k}, "
                f"group_size={group_size} (want x [..., {k}], weights [P, N, {words(k)}], scales [P, N, groups])"
            )
        if group_size < 0 or group_size % WORD_BITS:
            raise ValueError(f"group_size must be 0 or a multiple of 32, got {group_size}")
        return [(ir.DataType.FLOAT, (*x[:-1], weights[1]))]

    @staticmethod
    def reference(x: np.ndarray, weights: np.ndarray, scales: np.ndarray, **attrs: Any) -> tuple[np.ndarray, ...]:
        dense = dequantize(weights, scales, int(attrs["in_features"]), int(attrs["group_size"]))
        return (np.matmul(x.astype(np.float32), dense.T).astype(np.float32),)


def group_count(in_features: int, group_size: int) -> int:
    """Scale groups per row: ⌈K / group_size⌉, or 1 for per-channel scales (group_size 0)."""
    return 1 if group_size <= 0 else -(-in_features // group_size)


def group_scales(scales: np.ndarray, in_features: int, group_size: int) -> np.ndarray:
    """Scales [P, N, G] → per-weight scales [P, N, K]."""
    if group_size <= 0:
        return np.repeat(scales, in_features, axis=-1)
    return np.repeat(scales, group_size, axis=-1)[..., :in_features]


def dequantize(weights: np.ndarray, scales: np.ndarray, in_features: int, group_size: int) -> np.ndarray:
    """The float weight matrix [N, K] that the packed planes and scales stand for."""
    signs = to_pm1(unpack_signs(weights, in_features), np.float32)  # P N K
    return (signs * group_scales(scales.astype(np.float32), in_features, group_size)).sum(axis=0)


def float_twin(model: ir.Model) -> onnx.ModelProto:
    """The model with every LowBitMatMul as a float MatMul on its dequantized weights: what the op computes (up to
    summation order), in standard ONNX, so onnxruntime can evaluate a low-bit model's quality quickly."""
    from onnx import helper, numpy_helper

    proto = ir.to_proto(model)
    initializers = {tensor.name: tensor for tensor in proto.graph.initializer}
    replaced: set[str] = set()
    for node in proto.graph.node:
        if node.op_type != LowBitMatMul.name or node.domain != DOMAIN:
            continue
        attrs = dict(LowBitMatMul.attributes) | {a.name: helper.get_attribute_value(a) for a in node.attribute}
        planes, scales = (numpy_helper.to_array(initializers[name]) for name in node.input[1:3])
        dense = dequantize(planes, scales, int(attrs["in_features"]), int(attrs["group_size"])).T
        name = f"{node.name or node.output[0]}__dequantized"
        proto.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(dense), name))
        replaced.update(node.input[1:3])
        node.ClearField("attribute")
        node.op_type, node.domain = "MatMul", ""
        node.input[:] = [node.input[0], name]
    still_used = {name for node in proto.graph.node for name in node.input}
    kept = [t for t in proto.graph.initializer if t.name not in replaced or t.name in still_used]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept)
    return proto
