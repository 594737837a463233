"""BinaryConv: 2-D convolution of bit-packed ±1 activations with bit-packed ±1 weights (xor + popcount).

dot = Σ a·w over the window, computed as K − 2·popcount(a xor w). With `planes` > 1 the weights are a sum of
binary planes, W ≈ Σᵢ scale[i, o]·Bᵢ, and the float output is Σᵢ scale[i, o]·dotᵢ + bias[o]. `output_format="packed"`
instead emits the next layer's packed input directly: threshold [P, O] gives P bit planes (channels p·O + o),
bit 1 (−1) where dot < threshold[p, o], dot being summed over the weight planes (equal-scale planes: ternary).
`pad_value` 0 is true zero padding (a ternary border: the kernel subtracts a per-edge correction); 1 pads with +1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import onnx_ir as ir

from bitc.ops.base import BitcOp
from bitc.ops.packing import scaled_plane_sum, threshold_bits, to_pm1, unpack_signs, words


def conv_output_size(size: int, kernel: int, stride: int, pad_begin: int, pad_end: int) -> int:
    return (size + pad_begin + pad_end - kernel) // stride + 1


class BinaryConv(BitcOp):
    """Binary conv: packed NHWC input, packed weights [planes, O, KH, KW, ⌈C/32⌉]; float NCHW or packed output."""

    name = "BinaryConv"
    inputs = ("x", "weights", "epilogue*")  # epilogue: scale [P, O], bias [O]; or threshold [P, O]
    required = ("in_channels",)
    attributes: ClassVar[dict[str, Any]] = {
        "strides": [1, 1],
        "pads": [0, 0, 0, 0],
        "pad_value": 0,
        "output_format": "float",
    }

    @classmethod
    def output_types(cls, input_shapes: Sequence[tuple[int, ...]], **attrs: Any) -> list[tuple[ir.DataType, tuple]]:
        n, h, w, _ = input_shapes[0]
        _, out_channels, kh, kw, _ = input_shapes[1]
        top, left, bottom, right = attrs["pads"]
        oh = conv_output_size(h, kh, attrs["strides"][0], top, bottom)
        ow = conv_output_size(w, kw, attrs["strides"][1], left, right)
        if attrs["output_format"] == "packed":
            planes = input_shapes[2][0] if len(input_shapes[2]) == 2 else 1  # threshold [P, O]: P output planes
            return [(ir.DataType.UINT32, (n, oh, ow, words(planes * out_channels)))]
        return [(ir.DataType.FLOAT, (n, out_channels, oh, ow))]

    @staticmethod
    def reference(x: np.ndarray, weights: np.ndarray, *epilogue: np.ndarray, **attrs: Any) -> tuple[np.ndarray, ...]:
        dots = binary_conv_dots(x, weights, attrs["in_channels"], attrs["strides"], attrs["pads"], attrs["pad_value"])
        if attrs["output_format"] == "packed":
            (threshold,) = epilogue
            return (threshold_bits(dots.sum(axis=0), threshold),)
        out = scaled_plane_sum(dots, *epilogue)
        return (np.ascontiguousarray(np.transpose(out, (0, 3, 1, 2))),)


def binary_conv_dots(
    x: np.ndarray,
    weights: np.ndarray,
    in_channels: int,
    strides: Sequence[int],
    pads: Sequence[int],
    pad_value: int,
) -> np.ndarray:
    """Integer dot products [planes, N, OH, OW, O] straight from the definition (unpacked ±1 values)."""
    a = to_pm1(unpack_signs(x, in_channels), np.int64)  # N H W C
    top, left, bottom, right = pads
    a = np.pad(a, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=pad_value)
    w = to_pm1(unpack_signs(weights, in_channels), np.int64)  # P O KH KW C
    kh, kw = w.shape[2], w.shape[3]
    windows = np.lib.stride_tricks.sliding_window_view(a, (kh, kw), axis=(1, 2))  # N OH' OW' C KH KW
    windows = windows[:, :: strides[0], :: strides[1]]
    return np.einsum("nhwcij,poijc->pnhwo", windows, w, optimize=True)
