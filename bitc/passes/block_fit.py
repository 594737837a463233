"""Fitting float weights to BlockQuantMatMul's formats: per block of consecutive inputs, w ≈ scale · q + offset.

Two shapes of block, as GGUF names them: symmetric signed codes (Q4_0, Q8_0: w = d · q, q in [−2^(b−1),
2^(b−1) − 1]) and unsigned codes with a minimum (Q4_1: w = d · q + m, q in [0, 2^b − 1]). Rounding to the
nearest level with the block's extremes as the end points (llama.cpp's reference quantizers) wastes levels on
a lone outlier; here each block tries a small sweep of step sizes around that one, and for each rounding keeps
the least-squares scale (and offset) — the search llama.cpp's k-quants and imatrix quantizers run. The chosen
scale and offset are rounded to their stored float type and the codes are taken again for those values, so
the stored block is the best rounding of the block's own values for the scale actually stored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bitc.ops.block_matmul import check_format, dequantize, pack_codes

# step sizes tried around the one that maps the block's extremes to the end levels (llama.cpp's sweep: ±1 level)
_SWEEP = np.linspace(-1.0, 1.0, 21)
_CHUNK_BLOCKS = 1 << 16  # blocks fitted at once: bounds the float64 temporaries (~16 MB each)


@dataclass(frozen=True)
class BlockFormat:
    """`bits` 4 or 8 per code, `block_size` inputs per scale; `offset`: unsigned codes and a minimum per block
    (Q4_1-like) instead of symmetric signed codes (Q4_0 / Q8_0-like); scales stored as `scale_dtype`."""

    bits: int = 4
    offset: bool = False
    block_size: int = 32
    scale_dtype: str = "float16"

    @property
    def signed(self) -> bool:
        return not self.offset

    def label(self) -> str:
        return f"q{self.bits}_{int(self.offset)}" + ("" if self.block_size == 32 else f"_b{self.block_size}")

    def bits_per_weight(self) -> float:
        scale_bits = np.dtype(self.scale_dtype).itemsize * 8 * (2 if self.offset else 1)
        return self.bits + scale_bits / self.block_size


@dataclass(frozen=True)
class FittedBlocks:
    codes: np.ndarray  # [N, K·bits/8]: BlockQuantMatMul's canonical layout
    scales: np.ndarray  # [N, K/B]
    offsets: np.ndarray | None  # [N, K/B] or None

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.codes, self.scales, self.offsets) if a is not None)

    def dequantize(self, fmt: BlockFormat) -> np.ndarray:
        return dequantize(self.codes, self.scales, self.offsets, fmt.bits, fmt.block_size, fmt.signed)


def fit_blocks(rows: np.ndarray, fmt: BlockFormat) -> FittedBlocks:
    """Rows [N, K] (output features × inputs) in `fmt`, each block fitted for least squared error."""
    n, k = rows.shape
    check_format(k, fmt.block_size, fmt.bits)
    blocks = np.asarray(rows, np.float32).reshape(-1, fmt.block_size)
    q = np.empty(blocks.shape, np.int32)
    scales = np.empty(len(blocks), fmt.scale_dtype)
    offsets = np.empty(len(blocks), fmt.scale_dtype) if fmt.offset else None
    for start in range(0, len(blocks), _CHUNK_BLOCKS):
        part = slice(start, start + _CHUNK_BLOCKS)
        scale, offset, q[part] = _fit(blocks[part].astype(np.float64), fmt)
        scales[part] = scale
        if offsets is not None:
            offsets[part] = offset
    codes = pack_codes(q.reshape(n, k), fmt.bits, signed=fmt.signed)
    shape = (n, k // fmt.block_size)
    return FittedBlocks(codes, scales.reshape(shape), None if offsets is None else offsets.reshape(shape))


def _levels(bits: int, signed: bool) -> tuple[int, int]:
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def _fit(x: np.ndarray, fmt: BlockFormat) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Per block (a row of x): the stored scale, offset (or None) and codes of the best candidate. Each step of
    the sweep rounds the block, fits the least-squares scale (and offset) for that rounding, stores them in their
    float type and rounds the block again for the stored values; the candidate of least error wins."""
    low, high = _levels(fmt.bits, fmt.signed)
    if fmt.offset:
        start, spread = x.min(axis=1), np.ptp(x, axis=1)
        inverse = high / np.where(spread == 0, 1.0, spread)
    else:  # the value of largest magnitude maps to the wider end level (−2^(b−1)), as Q4_0 does
        start = np.zeros(len(x))
        extreme = np.take_along_axis(x, np.abs(x).argmax(axis=1, keepdims=True), axis=1)[:, 0]
        inverse = low / np.where(extreme == 0, 1.0, extreme)
    best_error = np.full(len(x), np.inf)
    best_scale, best_offset, best_q = np.zeros(len(x), fmt.scale_dtype), None, np.zeros(x.shape, np.int32)
    for step in _SWEEP:
        trial = inverse * (1 + step / abs(low if not fmt.offset else high))
        q = np.clip(np.rint((x - start[:, None]) * trial[:, None]), low, high)
        scale, offset = _least_squares(x, q, fmt.offset)
        scale = _stored(scale, fmt.scale_dtype)
        offset = _stored(offset, fmt.scale_dtype) if fmt.offset else None
        q = _codes(x, scale, offset, low, high)
        error = ((_dequantized(q, scale, offset) - x) ** 2).sum(axis=1)
        better = error < best_error
        best_error = np.where(better, error, best_error)
        best_scale = np.where(better, scale, best_scale)
        if offset is not None:
            best_offset = offset if best_offset is None else np.where(better, offset, best_offset)
        best_q = np.where(better[:, None], q, best_q)
    return best_scale, best_offset, best_q


def _least_squares(x: np.ndarray, q: np.ndarray, with_offset: bool) -> tuple[np.ndarray, np.ndarray]:
    """The scale d (and offset m) minimising Σ(d·q + m − x)² for fixed codes q; a block with one level: d = 0,
    m = its mean (symmetric: d = 0 when every code is 0)."""
    sxq, sqq = (x * q).sum(axis=1), (q * q).sum(axis=1)
    if not with_offset:
        return np.divide(sxq, sqq, out=np.zeros_like(sxq), where=sqq > 0), np.zeros(len(x))
    count, sq, sx = x.shape[1], q.sum(axis=1), x.sum(axis=1)
    det = count * sqq - sq * sq
    ok = det > 0
    scale = np.divide(count * sxq - sq * sx, det, out=np.zeros_like(det), where=ok)
    offset = np.where(ok, np.divide(sqq * sx - sq * sxq, det, out=np.zeros_like(det), where=ok), sx / count)
    return scale, offset


def _dequantized(q: np.ndarray, scale: np.ndarray, offset: np.ndarray | None) -> np.ndarray:
    """What the kernels compute from the stored block, in float32 as `dequantize` does."""
    dense = scale.astype(np.float32)[:, None] * q.astype(np.float32)
    return dense + offset.astype(np.float32)[:, None] if offset is not None else dense


def _stored(values: np.ndarray, dtype: str) -> np.ndarray:
    """Values as the stored float type; a value beyond float16's range is refused rather than made infinite."""
    with np.errstate(over="ignore"):
        stored = values.astype(dtype)
    if not np.isfinite(stored).all():
        raise OverflowError(f"a block scale or offset ({np.abs(values).max():.3g}) does not fit {dtype}")
    return stored


def _codes(x: np.ndarray, scales: np.ndarray, offsets: np.ndarray | None, low: int, high: int) -> np.ndarray:
    """The nearest level to each value for the stored scale and offset (a zero scale: every code 0)."""
    scale = scales.astype(np.float64)[:, None]
    shifted = x - (offsets.astype(np.float64)[:, None] if offsets is not None else 0.0)
    q = np.divide(shifted, scale, out=np.zeros_like(shifted), where=scale != 0)
    return np.clip(np.rint(q), low, high).astype(np.int32)
