"""Bit packing in numpy: the one definition of bitc's packed layouts, shared by passes, references and tests.

A packed tensor holds one bit per value in uint32 words along the channel (last) axis, least significant bit
first; bit 1 means -1 and bit 0 means +1 (x >= 0 → +1, as in QONNX BipolarQuant and Larq). Unused bits of the
last word are 0 in activations and weights alike, so they never count as a disagreement.
"""

from __future__ import annotations

import numpy as np

WORD_BITS = 32
WORD_DTYPE = np.uint32


def words(channels: int) -> int:
    """Words needed for `channels` bits."""
    return (channels + WORD_BITS - 1) // WORD_BITS


def pack_signs(negative: np.ndarray) -> np.ndarray:
    """Boolean array (True = -1) → uint32 words along the last axis."""
    negative = np.asarray(negative, dtype=bool)
    channels = negative.shape[-1]
    padded = np.zeros((*negative.shape[:-1], words(channels) * WORD_BITS), dtype=bool)
    padded[..., :channels] = negative
    as_bytes = np.packbits(padded, axis=-1, bitorder="little")
    return np.ascontiguousarray(as_bytes).view("<u4").astype(WORD_DTYPE, copy=False)


def unpack_signs(packed: np.ndarray, channels: int) -> np.ndarray:
    """uint32 words → boolean array (True = -1) with `channels` entries on the last axis."""
    as_bytes = np.ascontiguousarray(packed.astype("<u4", copy=False)).view(np.uint8)
    return np.unpackbits(as_bytes, axis=-1, bitorder="little")[..., :channels].astype(bool)


def to_pm1(negative: np.ndarray, dtype: type = np.int32) -> np.ndarray:
    """Boolean (True = -1) → ±1 values."""
    return np.where(negative, -1, 1).astype(dtype)


def pack_activations(x: np.ndarray) -> np.ndarray:
    """sign + pack: float [N, C, H, W] → [N, H, W, words(C)], or float [M, K] → [M, words(K)]."""
    x = np.asarray(x)
    if x.ndim == 4:
        return pack_signs(np.transpose(x < 0, (0, 2, 3, 1)))
    if x.ndim == 2:
        return pack_signs(x < 0)
    raise ValueError(f"bit packing needs a 2-D or 4-D tensor, got shape {x.shape}")


def pack_conv_weights(signs: np.ndarray) -> np.ndarray:
    """±1 weights [planes, O, C, KH, KW] → packed [planes, O, KH, KW, words(C)]."""
    return pack_signs(np.transpose(np.asarray(signs) < 0, (0, 1, 3, 4, 2)))


def pack_dense_weights(signs: np.ndarray) -> np.ndarray:
    """±1 weights [planes, N, K] (K in the packed input's bit order) → packed [planes, N, words(K)]."""
    return pack_signs(np.asarray(signs) < 0)
