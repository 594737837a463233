"""Weight-only quantized products on bitc's block kernels, their blocks kept: onnxruntime's MatMulNBits
(com.microsoft) and the standard form, MatMul by DequantizeLinear of constant integer weights.

LLM exports quantized with onnxruntime's tools (`MatMulNBitsQuantizer`, onnxruntime-genai's builder; QDQ
format: DequantizeLinear with `block_size`) carry 4- or 8-bit weights in blocks along K with a scale each and,
when asymmetric, a zero point each: w = (q − zp) · scale. That is BlockQuantMatMul's form: with a zero point of 0
(signed codes) or the default / all-midpoint one (unsigned codes, flipped to signed: q − 2^(b−1) in two's
complement) it is the same product, bit for bit; other zero points become an offset per block, −scale · zp in
float32 (one extra rounding per block offset). Forms it cannot run exactly are refused naming the node
(MatMulNBits) or left to the float path (DequantizeLinear, which is then folded into float weights).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from bitc.errors import BadInputError
from bitc.ir.graph_edit import constant
from bitc.ops.block_matmul import pack_codes, unpack_codes

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
    q = unpack_codes(codes.reshape(n, k * bits // 8), bits)  # the stored (unsigned) codes [N, K]
    points = _zero_points(node, zp, n, blocks, bits)
    inputs, signed = _block_tables(b, q, scales.reshape(n, blocks), points, bits, signed=False)
    out = b.bitc_op("BlockQuantMatMul", x, *inputs, in_features=k, block_size=block, bits=bits, signed=int(signed))
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


def _dequantized_weights(node: ir.Node) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int] | None:
    """For MatMul(x, DequantizeLinear(q, scale, zp)) with everything but x constant, float32 activations and
    scales, 4/8-bit integer codes and scales per block along K (`block_size`), per output column or per tensor:
    (q [K, N] as int32, scales [N, K/B], zero points [N, K/B] or None, B); else None."""
    if node.domain not in ("", "ai.onnx") or len(node.inputs) != 2 or node.inputs[0].dtype != ir.DataType.FLOAT:
        return None
    dq = node.inputs[1].producer() if node.inputs[1] is not None else None
    if dq is None or dq.op_type != "DequantizeLinear" or dq.domain not in ("", "ai.onnx"):
        return None
    tables = [constant(value) if value is not None else None for value in dq.inputs[:3]]
    q, scale = tables[0], tables[1]
    zp = tables[2] if len(tables) > 2 else None
    if q is None or scale is None or (len(dq.inputs) > 2 and dq.inputs[2] is not None and zp is None):
        return None
    if q.ndim != 2 or scale.dtype != np.float32 or str(q.dtype) not in _CODE_BITS:
        return None
    k, n = q.shape
    axis, block = dq.attributes.get_int("axis", 1), dq.attributes.get_int("block_size", 0)
    if block:  # blocks of `block` along axis 0 (K): scale [K/B, N]
        if axis not in (0, -2) or block % 8 or k % block or scale.shape != (k // block, n):
            return None
        per_block = scale.T
    elif k % 8 == 0 and (scale.size == 1 or (axis in (1, -1) and scale.shape == (n,))):
        # per tensor or per output column: the scale repeated over blocks of up to 128 inputs (a block the GEMM
        # dequantizes into L1), the same products as one block of all K
        block = next(size for size in (128, 64, 32, 16, 8) if k % size == 0)
        per_block = np.repeat(np.broadcast_to(scale.reshape(-1, 1), (n, 1)), k // block, axis=1)
    else:
        return None
    points = None
    if zp is not None:
        if zp.shape != scale.shape:
            return None
        if zp.ndim == 2:
            points = zp.T.astype(np.int32)
        else:  # per tensor or per column, over the same repeated blocks
            points = np.repeat(np.broadcast_to(zp.reshape(-1, 1), (n, 1)), k // block, axis=1).astype(np.int32)
    return q.astype(np.int32), np.ascontiguousarray(per_block), points, block


_CODE_BITS = {"int4": 4, "uint4": 4, "int8": 8, "uint8": 8}


def _has_dequantized_weights(node: ir.Node) -> bool:
    return _dequantized_weights(node) is not None


def _lower_dequantized_matmul(b: Builder, node: ir.Node) -> Lowered:
    q, scales, points, block = _dequantized_weights(node)
    kind = str(constant(node.inputs[1].producer().inputs[0]).dtype)
    bits = _CODE_BITS[kind]
    inputs, signed = _block_tables(b, q.T, scales, points, bits, signed=kind.startswith("int"))
    attributes = {"in_features": q.shape[0], "block_size": block, "bits": bits, "signed": int(signed)}
    return [b.bitc_op("BlockQuantMatMul", node.inputs[0], *inputs, **attributes)]


def _block_tables(
    b: Builder, q: np.ndarray, scales: np.ndarray, points: np.ndarray | None, bits: int, signed: bool
) -> tuple[list[ir.Value], bool]:
    """BlockQuantMatMul's codes, scales[, offsets] for w = (q − zp) · scale, q [N, K] the stored codes, and whether
    they are signed: unsigned codes around an all-midpoint zero point become signed codes q − 2^(b−1) (the same
    product, bit for bit); a zero point of 0 needs no offset; any other one becomes an offset −scale · zp per
    block, in float32."""
    midpoint = 1 << (bits - 1)
    zero = points if points is not None else np.zeros(scales.shape, np.int32)
    tables = [scales]
    if not signed and np.all(zero == midpoint):
        q, signed = q - midpoint, True
    elif np.any(zero != 0):
        scales = scales.astype(np.float32)
        tables = [scales, -(scales * zero.astype(np.float32))]
    return [b.const(pack_codes(q, bits, signed=signed)), *(b.const(t) for t in tables)], signed


CONTRIB_LOWERINGS: dict[tuple[str, str], Callable[[Builder, ir.Node], Lowered]] = {
    (MICROSOFT, "MatMulNBits"): _lower_matmul_nbits,
}

# MatMul by DequantizeLinear of constant integer weights (the QDQ form of the same blocks)
DEQUANTIZED_MATMUL = (_has_dequantized_weights, _lower_dequantized_matmul)
