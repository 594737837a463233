"""BlockQuantMatMul: float activations times block-quantized integer weights, w = scale · q + offset per block.

The weight formats LLM files ship: GGUF's Q4_0 (signed 4-bit codes q − 8), Q4_1 (unsigned codes and a float
minimum per block) and Q8_0 (signed bytes); zero-point formats (onnxruntime's MatMulNBits, DequantizeLinear of
int4/int8 weights) are the same form with offset −scale·zero_point. Importers: `passes.gguf_weights` (a GGUF
file's blocks), `passes.block_quantize` (fitted from float weights), `frontend.weight_only_lowering` (ONNX
weight-only quantized products). Each row of the
weight holds `in_features / block_size` blocks of `block_size` consecutive inputs, each with its own scale and
offset. Imported as they are, the weights keep the file's exact values at the file's size.

Canonical layout (the kernels re-block it at compile time): codes [N, K·bits/8] uint8 (4-bit: input 2i in the
low nibble of byte i, 2i+1 in the high one; two's complement nibbles when `signed`) or, for signed 8-bit codes,
int8; scales and offsets [N, K / block_size] float16 or float32 (widened to float32 before use).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import onnx_ir as ir

from bitc.ops.base import BitcOp

BITS = (4, 8)


class BlockQuantMatMul(BitcOp):
    """x [..., K] float32, codes [N, K·bits/8], scales [N, K/B], offsets [N, K/B] (optional: zero) → [..., N]."""

    name = "BlockQuantMatMul"
    inputs = ("x", "codes", "scales", "offsets?")
    required = ("in_features", "block_size", "bits")
    attributes: ClassVar[dict[str, Any]] = {"signed": 0}
    targets = ("llvm",)

    @classmethod
    def output_types(cls, input_shapes: Sequence[tuple[int, ...]], **attrs: Any) -> list[tuple[ir.DataType, tuple]]:
        if len(input_shapes) not in (3, 4):
            raise ValueError(f"needs 3 or 4 inputs (x, codes, scales, offsets?), got {len(input_shapes)}")
        k, block, bits = int(attrs["in_features"]), int(attrs["block_size"]), int(attrs["bits"])
        check_format(k, block, bits)
        x, *tables = input_shapes
        rows = table_rows(tables, k, block, bits)
        if rows is None or not x or x[-1] != k:
            codes, scales = tables[:2]
            raise ValueError(
                f"shapes x {list(x)}, codes {list(codes)}, scales {list(scales)} do not fit in_features={k}, "
                f"block_size={block}, bits={bits} (want x [..., {k}], codes [N, {k * bits // 8}], scales and "
                f"offsets [N, {k // block}])"
            )
        return [(ir.DataType.FLOAT, (*x[:-1], rows))]

    @staticmethod
    def reference(
        x: np.ndarray, codes: np.ndarray, scales: np.ndarray, offsets: np.ndarray | None = None, **attrs: Any
    ) -> tuple[np.ndarray, ...]:
        bits, block, signed = int(attrs["bits"]), int(attrs["block_size"]), bool(attrs.get("signed", 0))
        dense = dequantize(codes, scales, offsets, bits, block, signed)
        return (np.matmul(x.astype(np.float32), dense.T).astype(np.float32),)


def check_format(in_features: int, block_size: int, bits: int) -> None:
    """Refuse what the op does not define: other widths, or blocks that do not tile the rows."""
    if bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}, got {bits}")
    if block_size <= 0 or block_size % 8 or in_features % block_size:
        raise ValueError(f"block_size must be a multiple of 8 dividing in_features={in_features}, got {block_size}")


def check_dtypes(codes: np.ndarray, scales: np.ndarray, offsets: np.ndarray | None, bits: int, signed: bool) -> None:
    """Refuse arrays the format does not define (the kernels read these exact types)."""
    want = np.int8 if bits == 8 and signed else np.uint8
    if codes.dtype != want:
        raise ValueError(
            f"{bits}-bit {'signed' if signed else 'unsigned'} codes must be {np.dtype(want)}, got {codes.dtype}"
        )
    for array in (scales, offsets):
        if array is not None and array.dtype not in (np.float16, np.float32):
            raise ValueError(f"scales and offsets must be float16 or float32, got {array.dtype}")


def table_rows(tables: Sequence[tuple[int, ...]], in_features: int, block_size: int, bits: int) -> int | None:
    """The row count N of codes [N, K·bits/8] and scales (and offsets) [N, K/B] that fit the format, else None."""
    codes, scales, *offsets = (tuple(shape) for shape in tables)
    if len(codes) != 2:
        return None
    rows = codes[0]
    want_scales = (rows, in_features // block_size)
    if codes[1] != in_features * bits // 8 or scales != want_scales or any(o != want_scales for o in offsets):
        return None
    return rows


def unpack_codes(codes: np.ndarray, bits: int, signed: bool = False) -> np.ndarray:
    """codes [N, K·bits/8] → q [N, K] as int32 (4-bit: 0..15, or −8..7 when `signed`; 8-bit: the bytes' own
    signedness)."""
    if bits == 8:
        return codes.astype(np.int32)
    q = np.empty((codes.shape[0], codes.shape[1] * 2), np.int32)
    q[:, 0::2] = codes & 0x0F
    q[:, 1::2] = codes >> 4
    return np.where(q >= 8, q - 16, q) if signed else q


def pack_codes(q: np.ndarray, bits: int, signed: bool = False) -> np.ndarray:
    """q [N, K] → the canonical codes (the inverse of `unpack_codes`); `signed` 8-bit codes are int8."""
    if bits == 8:
        return np.ascontiguousarray(q.astype(np.int8 if signed else np.uint8))
    q = (q & 0x0F).astype(np.uint8)
    return np.ascontiguousarray(q[:, 0::2] | (q[:, 1::2] << 4))


def dequantize(
    codes: np.ndarray,
    scales: np.ndarray,
    offsets: np.ndarray | None,
    bits: int,
    block_size: int,
    signed: bool = False,
) -> np.ndarray:
    """The float32 weight [N, K]: scale · q + offset, each in float32 (the order every kernel and file uses)."""
    q = unpack_codes(codes, bits, signed).astype(np.float32)
    wide = np.repeat(scales.astype(np.float32), block_size, axis=1)
    dense = wide * q
    if offsets is not None:
        dense = dense + np.repeat(offsets.astype(np.float32), block_size, axis=1)
    return dense.astype(np.float32)


class BlockQuantGather(BitcOp):
    """Rows of a block-quantized table (an LLM's token embedding kept in its file's blocks): indices [...] int32 or
    int64 in [−N, N) (negatives count from the end, as ONNX Gather), codes [N, K·bits/8], scales [N, K/B],
    offsets [N, K/B] (optional) → [..., K] float32, each row dequantized exactly as `dequantize` does."""

    name = "BlockQuantGather"
    inputs = ("indices", "codes", "scales", "offsets?")
    required = ("in_features", "block_size", "bits")
    attributes: ClassVar[dict[str, Any]] = {"signed": 0}
    targets = ("llvm",)

    @classmethod
    def output_types(cls, input_shapes: Sequence[tuple[int, ...]], **attrs: Any) -> list[tuple[ir.DataType, tuple]]:
        if len(input_shapes) not in (3, 4):
            raise ValueError(f"needs 3 or 4 inputs (indices, codes, scales, offsets?), got {len(input_shapes)}")
        k, block, bits = int(attrs["in_features"]), int(attrs["block_size"]), int(attrs["bits"])
        check_format(k, block, bits)
        indices, *tables = input_shapes
        rows = table_rows(tables, k, block, bits)
        if rows is None:
            codes, scales = tables[:2]
            raise ValueError(
                f"shapes codes {list(codes)}, scales {list(scales)} do not fit in_features={k}, block_size={block}, "
                f"bits={bits}"
            )
        return [(ir.DataType.FLOAT, (*indices, k))]

    @staticmethod
    def reference(
        indices: np.ndarray, codes: np.ndarray, scales: np.ndarray, offsets: np.ndarray | None = None, **attrs: Any
    ) -> tuple[np.ndarray, ...]:
        rows = codes.shape[0]
        flat = indices.astype(np.int64).reshape(-1)
        if ((flat < -rows) | (flat >= rows)).any():
            raise IndexError(f"BlockQuantGather: index out of range [-{rows}, {rows})")
        flat = np.where(flat < 0, flat + rows, flat)
        bits, block, signed = int(attrs["bits"]), int(attrs["block_size"]), bool(attrs.get("signed", 0))
        picked = dequantize(codes[flat], scales[flat], None if offsets is None else offsets[flat], bits, block, signed)
        return (picked.reshape(*indices.shape, -1),)
