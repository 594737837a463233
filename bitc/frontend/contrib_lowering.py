"""onnxruntime's weight-only quantized MatMul (com.microsoft MatMulNBits) on bitc's block kernels, its blocks kept.

LLM exports quantized with onnxruntime's tools (`MatMulNBitsQuantizer`, onnxruntime-genai's builder) carry
4- or 8-bit weights in blocks along K with a scale each and, when asymmetric, a zero point each: w = (q − zp) ·
scale. That is BlockQuantMatMul's form: with the default or an all-midpoint zero point the codes become signed
(q − 2^(b−1), two's complement: the same product, bit for bit); other zero points become an offset per block,
−scale · zp (one extra float rounding per block offset). Forms it cannot run exactly are refused naming the node.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from bitc.errors import BadInputError
from bitc.ir.graph_edit import constant

if TYPE_CHECKING:
    from bitc.frontend.onnx_lowering import Builder

Lowered = list[ir.Value | None] | None
MICROSOFT = "com.microsoft"


def _refuse(node: ir.Node, reason: str) -> BadInputError:
    return BadInputError(f"node '{node.name or '(unnamed)'}' ({MICROSOFT} {node.op_type}): {reason}")


def _input(node: ir.Node, index: int) -> ir.Value | None:
    return node.inputs[index] if len(node.inputs) > index else None


def _lower_matmul_nbits(b: Builder, node: ir.Node) -> Lowered:
    k, n = node.attributes.get_int("K"), node.attributes.get_int("N")
    bits, block = node.attributes.get_int("bits", 4), node.attributes.get_int("block_size")
    x = node.inputs[0]
    if bits not in (4, 8):
        raise _refuse(node, f"{bits}-bit weights (bitc's block kernels take 4 or 8)")
    if k is None or n is None or block is None or block < 16 or k % block:
        raise _refuse(node, f"K={k} is not whole blocks of block_size={block} (bitc needs K a multiple of it)")
    if x.dtype != ir.DataType.FLOAT:
        raise _refuse(node, f"input A is {x.dtype}; bitc runs MatMulNBits on float32 activations")
    if _input(node, 4) is not None:
        raise _refuse(node, "g_idx (act-order) inputs are not supported")
    codes, scales = constant(node.inputs[1]), constant(node.inputs[2])
    zero_points = _input(node, 3)
    zp = constant(zero_points) if zero_points is not None else None
    if codes is None or scales is None or (zero_points is not None and zp is None):
        raise _refuse(node, "B, scales and zero_points must be constants")
    blocks = k // block
    if codes.dtype != np.uint8 or codes.size != n * k * bits // 8 or scales.size != n * blocks:
        raise _refuse(node, f"B {list(codes.shape)} / scales {list(scales.shape)} do not hold N={n}, K={k} in blocks")
    if scales.dtype not in (np.float16, np.float32):
        raise _refuse(node, f"scales of {scales.dtype} (float16 or float32 expected)")
    codes, scales = codes.reshape(n, k * bits // 8), scales.reshape(n, blocks)
    points = _zero_points(node, zp, n, blocks, bits)
    midpoint = 1 << (bits - 1)
    inputs = [x]
    if not np.all(points == midpoint):
        # w = scale·q + offset, offset = −scale·zp in float32 (unsigned codes as stored)
        offsets = -(scales.astype(np.float32) * points.astype(np.float32))
        inputs += [b.const(codes), b.const(scales.astype(np.float32)), b.const(offsets)]
        signed = 0
    else:  # q − 2^(b−1) as two's complement codes: flipping the top bit of each code
        flip = 0x88 if bits == 4 else 0x80
        signed_codes = codes ^ np.uint8(flip)
        inputs += [b.const(signed_codes.view(np.int8) if bits == 8 else signed_codes), b.const(scales)]
        signed = 1
    out = b.bitc_op("BlockQuantMatMul", *inputs, in_features=k, block_size=block, bits=bits, signed=signed)
    bias = _input(node, 5)
    return [b.op("Add", out, bias) if bias is not None else out]


def _zero_points(node: ir.Node, zp: np.ndarray | None, n: int, blocks: int, bits: int) -> np.ndarray:
    """Zero points [N, blocks]: the default 2^(b−1), packed uint8 codes (4-bit: two blocks per byte, the first
    in the low nibble) or floats of the scales' type."""
    if zp is None:
        return np.full((n, blocks), 1 << (bits - 1), np.int32)
    if zp.dtype.kind == "f":
        if zp.size != n * blocks:
            raise _refuse(node, f"float zero_points {list(zp.shape)} do not hold N={n} x {blocks} blocks")
        return zp.reshape(n, blocks).astype(np.float32)
    per_byte = 8 // bits
    row_bytes = -(-blocks // per_byte)
    if zp.dtype != np.uint8 or zp.size != n * row_bytes:
        raise _refuse(node, f"zero_points {list(zp.shape)} {zp.dtype} do not hold N={n} x {blocks} packed blocks")
    packed = zp.reshape(n, row_bytes)
    if bits == 8:
        return packed.astype(np.int32)
    nibbles = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(n, -1)
    return nibbles[:, :blocks].astype(np.int32)


CONTRIB_LOWERINGS: dict[tuple[str, str], Callable[[Builder, ir.Node], Lowered]] = {
    (MICROSOFT, "MatMulNBits"): _lower_matmul_nbits,
}
