"""GGUF block-quantized tensors (Q4_0, Q4_1, Q8_0) read as BlockQuantMatMul's format, value for value.

A GGUF row is a run of 32-weight blocks: Q4_0 = float16 d + 16 bytes of nibbles (w = d·(q − 8)), Q4_1 = d, a
float16 minimum m + nibbles (w = d·q + m), Q8_0 = d + 32 signed bytes (w = d·q). Within a 4-bit block, byte j
holds weight j in its low nibble and weight j + 16 in its high one. Q4_0's q − 8 becomes a signed 4-bit code,
so every format is scale · code + offset with the file's own float16 scales: dequantizing gives the same float32
weights as gguf's reference dequantizer, bit for bit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from bitc.errors import BadInputError
from bitc.ops.block_matmul import dequantize, pack_codes

BLOCK = 32
# bytes per block and their fields: (scale, offset) float16 counts before the codes
_LAYOUTS = {"Q4_0": (18, 1), "Q4_1": (20, 2), "Q8_0": (34, 1)}


@dataclass(frozen=True)
class BlockTensor:
    """One GGUF tensor as BlockQuantMatMul takes it: rows are output features, [N, K]."""

    name: str
    kind: str
    bits: int
    signed: bool
    codes: np.ndarray  # [N, K·bits/8]
    scales: np.ndarray  # [N, K/32] float16
    offsets: np.ndarray | None  # [N, K/32] float16 (Q4_1) or None

    @property
    def shape(self) -> tuple[int, int]:
        return self.codes.shape[0], self.codes.shape[1] * 8 // self.bits

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.codes, self.scales, self.offsets) if a is not None)

    def dequantize(self) -> np.ndarray:
        return dequantize(self.codes, self.scales, self.offsets, self.bits, BLOCK, self.signed)


def read_block_tensors(path: str | os.PathLike) -> dict[str, BlockTensor]:
    """Every 2-D Q4_0 / Q4_1 / Q8_0 tensor of the file, by name (other types are left out)."""
    try:
        from gguf import GGUFReader
    except ImportError:
        raise BadInputError("reading GGUF files needs the gguf package: pip install 'bitc[gguf]'") from None
    try:
        reader = GGUFReader(str(path))
    except (OSError, ValueError) as exc:
        raise BadInputError(f"{path}: not a readable GGUF file ({exc})") from None
    tensors = {}
    for tensor in reader.tensors:
        kind = tensor.tensor_type.name
        if kind in _LAYOUTS and len(tensor.shape) == 2:
            tensors[tensor.name] = decode_blocks(tensor.name, kind, np.asarray(tensor.data))
    return tensors


def decode_blocks(name: str, kind: str, data: np.ndarray) -> BlockTensor:
    """Raw GGUF rows [N, blocks·bytes] of type `kind` → a BlockTensor."""
    size, halves = _LAYOUTS[kind]
    rows = data.shape[0]
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] % size:
        raise BadInputError(f"GGUF tensor '{name}': {kind} rows of {data.shape[1:]} bytes are not whole blocks")
    blocks = data.reshape(rows, -1, size)
    scales = np.ascontiguousarray(blocks[..., :2]).view(np.float16)[..., 0]
    offsets = np.ascontiguousarray(blocks[..., 2:4]).view(np.float16)[..., 0] if halves == 2 else None
    payload = blocks[..., 2 * halves :]
    if kind == "Q8_0":
        q = payload.view(np.int8).reshape(rows, -1).astype(np.int32)
        return BlockTensor(name, kind, 8, True, pack_codes(q, 8, signed=True), scales, None)
    q = np.concatenate([payload & 0x0F, payload >> 4], axis=-1).astype(np.int32).reshape(rows, -1)
    signed = kind == "Q4_0"
    codes = pack_codes(q - 8 if signed else q, 4, signed=signed)
    return BlockTensor(name, kind, 4, signed, codes, scales, offsets)
