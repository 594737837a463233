"""BitPack: sign + bit packing of a float activation, channels last (the input of every binary layer)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from bitc.ops.base import BitcOp
from bitc.ops.packing import pack_activations, words


class BitPack(BitcOp):
    """float [N, C, H, W] → uint32 [N, H, W, ⌈C/32⌉]; float [M, K] → uint32 [M, ⌈K/32⌉]. Bit 1 ↔ x < 0."""

    name = "BitPack"

    @classmethod
    def output_types(cls, input_shapes: Sequence[tuple[int, ...]], **attrs: Any) -> list[tuple[ir.DataType, tuple]]:
        shape = input_shapes[0]
        if len(shape) == 4:
            n, c, h, w = shape
            return [(ir.DataType.UINT32, (n, h, w, words(c)))]
        m, k = shape
        return [(ir.DataType.UINT32, (m, words(k)))]

    @staticmethod
    def reference(x: np.ndarray, **attrs: Any) -> tuple[np.ndarray, ...]:
        return (pack_activations(x),)
