"""BinaryDense: matrix product of bit-packed ±1 rows with bit-packed ±1 weights (xor + popcount).

Same epilogues as BinaryConv: float (Σ planes scale·dot + bias) or packed sign bits against a threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import onnx_ir as ir

from bitc.ops.base import BitcOp
from bitc.ops.packing import scaled_plane_sum, threshold_bits, to_pm1, unpack_signs, words


class BinaryDense(BitcOp):
    """Binary dense: packed input [M, ⌈K/32⌉], packed weights [planes, N, ⌈K/32⌉]; float [M, N] or packed output."""

    name = "BinaryDense"
    inputs = ("x", "weights", "epilogue*")  # epilogue: scale [P, O], bias [O]; or threshold [P, O]
    required = ("in_features",)
    attributes: ClassVar[dict[str, Any]] = {"output_format": "float"}

    @classmethod
    def output_types(cls, input_shapes: Sequence[tuple[int, ...]], **attrs: Any) -> list[tuple[ir.DataType, tuple]]:
        m = input_shapes[0][0]
        n = input_shapes[1][1]
        if attrs["output_format"] == "packed":
            planes = input_shapes[2][0] if len(input_shapes[2]) == 2 else 1
            return [(ir.DataType.UINT32, (m, words(planes * n)))]
        return [(ir.DataType.FLOAT, (m, n))]

    @staticmethod
    def reference(x: np.ndarray, weights: np.ndarray, *epilogue: np.ndarray, **attrs: Any) -> tuple[np.ndarray, ...]:
        k = attrs["in_features"]
        a = to_pm1(unpack_signs(x, k), np.int64)  # M K
        w = to_pm1(unpack_signs(weights, k), np.int64)  # P N K
        dots = np.einsum("mk,pnk->pmn", a, w)
        if attrs["output_format"] == "packed":
            (threshold,) = epilogue
            return (threshold_bits(dots.sum(axis=0), threshold),)
        return (scaled_plane_sum(dots, *epilogue),)
