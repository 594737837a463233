"""BitPack: sign + bit packing of a float activation, channels last (the input of every binary layer)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import onnx_ir as ir

from bitc.ops.base import BitcOp
from bitc.ops.packing import pack_activations, words


class BitPack(BitcOp):
    """float [N, C, H, W] → uint32 [N, H, W, ⌈P·C/32⌉]; float [M, K] → uint32 [M, ⌈P·K/32⌉].

    One bit plane per entry of `thresholds` (default [0]): plane p holds bit 1 (−1) where x < thresholds[p], in
    channels p·C … p·C + C − 1. Several planes are a thermometer code of a multi-level activation: a value with
    levels −n/2 … n/2 is ½·Σₚ (±1)ₚ, so k-bit activations run on the same xor/popcount kernels.
    """

    name = "BitPack"
    inputs = ("x",)
    attributes: ClassVar[dict[str, Any]] = {"thresholds": [0.0]}

    @classmethod
    def output_types(cls, input_shapes: Sequence[tuple[int, ...]], **attrs: Any) -> list[tuple[ir.DataType, tuple]]:
        shape = input_shapes[0]
        planes = len(attrs["thresholds"])
        if len(shape) == 4:
            n, c, h, w = shape
            return [(ir.DataType.UINT32, (n, h, w, words(planes * c)))]
        m, k = shape
        return [(ir.DataType.UINT32, (m, words(planes * k)))]

    @staticmethod
    def reference(x: np.ndarray, **attrs: Any) -> tuple[np.ndarray, ...]:
        return (pack_activations(x, attrs["thresholds"]),)
