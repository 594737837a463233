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


def pack_activations(x: np.ndarray, thresholds: list[float] | tuple[float, ...] = (0.0,)) -> np.ndarray:
    """sign + pack: float [N, C, H, W] → [N, H, W, words(P·C)], or float [M, K] → [M, words(P·K)]; plane p
    (channels p·C …) has bit 1 where x < thresholds[p] (compared in float32)."""
    x = np.asarray(x)
    if x.ndim not in (2, 4):
        raise ValueError(f"bit packing needs a 2-D or 4-D tensor, got shape {x.shape}")
    negative = np.concatenate([x < np.float32(t) for t in thresholds], axis=1)
    return pack_signs(np.transpose(negative, (0, 2, 3, 1)) if x.ndim == 4 else negative)


def scaled_plane_sum(dots: np.ndarray, scale: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Float epilogue of a binary layer: Σₚ dots[p]·scale[p] + bias, in float32 and in this order (the kernels
    evaluate it the same way). dots [P, ..., O], scale [P, O], bias [O]."""
    out = np.zeros(dots.shape[1:], dtype=np.float32)
    for plane in range(dots.shape[0]):
        out = out + dots[plane].astype(np.float32) * scale[plane].astype(np.float32)
    return out + bias.astype(np.float32)


def threshold_bits(dots: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """Packed output of a thresholded layer: dots [..., O], threshold [P, O] (or [O]) → bit planes along the last
    axis, plane p in channels p·O …: bit 1 where dot < threshold[p]."""
    threshold = np.asarray(threshold, dtype=np.int64).reshape(-1, dots.shape[-1])
    return pack_signs(np.concatenate([dots < t for t in threshold], axis=-1))


def pack_conv_weights(signs: np.ndarray) -> np.ndarray:
    """±1 weights [planes, O, C, KH, KW] → packed [planes, O, KH, KW, words(C)]."""
    return pack_signs(np.transpose(np.asarray(signs) < 0, (0, 1, 3, 4, 2)))


def pack_dense_weights(signs: np.ndarray) -> np.ndarray:
    """±1 weights [planes, N, K] (K in the packed input's bit order) → packed [planes, N, words(K)]."""
    return pack_signs(np.asarray(signs) < 0)
