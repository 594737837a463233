"""PackedMaxPool: max-pooling on packed ±1 activations, exact as a bitwise AND (max is −1 only if all are −1)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import onnx_ir as ir

from bitc.ops.base import BitcOp
from bitc.ops.binary_conv import conv_output_size


class PackedMaxPool(BitcOp):
    """Max-pool of packed NHWC words: AND over the window; padding never wins (padded with all-ones words)."""

    name = "PackedMaxPool"
    inputs = ("x",)
    required = ("kernel_shape",)
    attributes: ClassVar[dict[str, Any]] = {"strides": [1, 1], "pads": [0, 0, 0, 0]}

    @classmethod
    def output_types(cls, input_shapes: Sequence[tuple[int, ...]], **attrs: Any) -> list[tuple[ir.DataType, tuple]]:
        n, h, w, cw = input_shapes[0]
        kh, kw = attrs["kernel_shape"]
        top, left, bottom, right = attrs["pads"]
        oh = conv_output_size(h, kh, attrs["strides"][0], top, bottom)
        ow = conv_output_size(w, kw, attrs["strides"][1], left, right)
        return [(ir.DataType.UINT32, (n, oh, ow, cw))]

    @staticmethod
    def reference(x: np.ndarray, **attrs: Any) -> tuple[np.ndarray, ...]:
        kh, kw = attrs["kernel_shape"]
        top, left, bottom, right = attrs["pads"]
        padded = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=np.uint32(0xFFFFFFFF))
        windows = np.lib.stride_tricks.sliding_window_view(padded, (kh, kw), axis=(1, 2))
        windows = windows[:, :: attrs["strides"][0], :: attrs["strides"][1]]
        return (np.bitwise_and.reduce(np.bitwise_and.reduce(windows, axis=-1), axis=-1).astype(np.uint32),)
