"""Fitting a float weight matrix to bitc's low-bit format: W ≈ Σₚ αₚ ⊙ Bₚ per output row and scale group.

Three levels of care, each a superset of the previous:
- `fit`: per group, alternate least squares (the αs for fixed signs: a P×P normal equation per row) with the
  best signs for fixed αs (the nearest of the 2^P values Σ ±αₚ) — alternating multi-bit quantization (Xu et al.
  2018); starts from greedy residual binarization. Ternary: {−α, 0, +α} with the threshold α/2, same alternation.
- activation-aware: the squares are weighted by E[x_k²] of the layer's input (calibration inputs), so inputs that
  carry large activations are fitted more closely.
- `gptq`: columns are quantized in order and each column's error is pushed onto the columns not yet quantized
  through the inverse Hessian H = E[x xᵀ] (Frantar et al. 2022, as BiLLM / PB-LLM use it for binarization); a group's
  αs are fitted when the sweep reaches it, on the weights as updated so far.
Partial binarization keeps `salient` input columns in float: their code is kept but the float residual
W − Σ αB of those columns is stored beside, so the layer is exact there (and GPTQ moves error into them).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from bitc.ops.lowbit_matmul import group_count


@dataclass(frozen=True)
class WeightFormat:
    """`planes` binary planes (1-4), or ternary (two planes of equal scale); scales per `group_size` inputs."""

    planes: int = 2
    ternary: bool = False
    group_size: int = 128

    @property
    def stored_planes(self) -> int:
        return 2 if self.ternary else self.planes

    def bits_per_weight(self, in_features: int) -> float:
        """Bits per weight in the artifact: the planes plus their float16 scales."""
        groups = group_count(in_features, self.group_size)
        return self.stored_planes * (1 + 16 * groups / in_features)

    def label(self) -> str:
        return ("ternary" if self.ternary else f"{self.planes}-plane") + (
            f" g{self.group_size}" if self.group_size > 0 else " per-channel"
        )


@dataclass
class LowBitWeights:
    negative: np.ndarray  # [P, N, K] bool: bit 1 = −1
    scales: np.ndarray  # [P, N, G] float16 (stored so; the kernels widen them to float32)
    salient: np.ndarray  # [S] int64: input columns kept in float
    residual: np.ndarray  # [N, S] float32: W − Σ αB on those columns

    def dequantize(self, group_size: int) -> np.ndarray:
        from bitc.ops.lowbit_matmul import group_scales

        signs = np.where(self.negative, -1.0, 1.0)
        scales = self.scales.astype(np.float32)
        dense = (signs * group_scales(scales, self.negative.shape[-1], group_size)).sum(axis=0)
        dense[:, self.salient] += self.residual
        return dense.astype(np.float32)


def fit_weights(
    weights: np.ndarray,
    fmt: WeightFormat,
    *,
    hessian: np.ndarray | None = None,
    salient: int = 0,
    salient_block: bool = False,
    gptq: bool = True,
) -> LowBitWeights:
    """weights [N, K] → LowBitWeights. `hessian` [K, K] = E[x xᵀ] of the layer input (None: unweighted fit)."""
    w = np.asarray(weights, dtype=np.float64)
    importance = None if hessian is None else np.maximum(np.diag(hessian), 0.0)
    columns = salient_columns(w, importance, salient, block=salient_block)
    if hessian is not None and gptq:
        return _gptq(w, fmt, hessian, columns)
    groups = _group_bounds(w.shape[1], fmt.group_size)
    codes = np.zeros((fmt.stored_planes, *w.shape), dtype=bool)
    scales = np.zeros((fmt.stored_planes, w.shape[0], len(groups)), dtype=np.float64)
    for g, (start, end) in enumerate(groups):
        d = None if importance is None else importance[start:end]
        scales[:, :, g], codes[:, :, start:end] = _fit_group(w[:, start:end], fmt, d)
    return _finish(w, codes, scales, columns, fmt)


def salient_columns(w: np.ndarray, importance: np.ndarray | None, count: int, *, block: bool = False) -> np.ndarray:
    """The `count` input columns whose error would cost most: E[x_k²]·‖W[:, k]‖² (or ‖W[:, k]‖² alone); with
    `block`, the contiguous run of `count` columns with the largest total (one Slice at run time — after
    `reorder` has sorted the channels by importance, that run is where the important ones are)."""
    if count <= 0:
        return np.zeros(0, dtype=np.int64)
    score = (w**2).sum(axis=0) * (importance if importance is not None else 1.0)
    if block:
        totals = np.convolve(score, np.ones(count), mode="valid")
        start = int(np.argmax(totals))
        return np.arange(start, start + count, dtype=np.int64)
    return np.sort(np.argsort(-score, kind="stable")[:count]).astype(np.int64)


def _group_bounds(in_features: int, group_size: int) -> list[tuple[int, int]]:
    size = in_features if group_size <= 0 else group_size
    return [(start, min(start + size, in_features)) for start in range(0, in_features, size)]


def _combos(planes: int) -> np.ndarray:
    """All ±1 sign vectors of `planes` planes: [2^P, P]."""
    return np.array(list(itertools.product((1.0, -1.0), repeat=planes)))


def _fit_group(
    w: np.ndarray, fmt: WeightFormat, d: np.ndarray | None, iterations: int = 6
) -> tuple[np.ndarray, np.ndarray]:
    """One scale group w [N, n] → scales [P, N], negative codes [P, N, n] (alternating least squares)."""
    d = np.ones(w.shape[1]) if d is None else d + 1e-12
    if fmt.ternary:
        alpha = _weighted_mean(np.abs(w), d, np.abs(w) > 0.7 * np.abs(w).mean(axis=1, keepdims=True))
        for _ in range(iterations):
            keep = np.abs(w) > alpha[:, None] / 2
            alpha = _weighted_mean(np.abs(w), d, keep)
        return _ternary_planes(w, alpha)
    rest, alphas = w.copy(), []
    for _ in range(fmt.planes):  # greedy residual start
        alphas.append(_weighted_mean(np.abs(rest), d, np.ones_like(rest, dtype=bool)))
        rest = rest - alphas[-1][:, None] * np.where(rest >= 0, 1.0, -1.0)
    alpha = np.stack(alphas, axis=1)  # N P
    for _ in range(iterations):
        signs = _nearest_signs(w, alpha)  # N n P
        gram = np.einsum("nkp,k,nkq->npq", signs, d, signs) + 1e-9 * np.eye(fmt.planes)
        alpha = np.linalg.solve(gram, np.einsum("nkp,k,nk->np", signs, d, w)[..., None])[..., 0]
    signs = _nearest_signs(w, alpha)
    return alpha.T.copy(), np.moveaxis(signs < 0, 2, 0)


def _weighted_mean(values: np.ndarray, d: np.ndarray, mask: np.ndarray) -> np.ndarray:
    weight = d[None, :] * mask
    return (values * weight).sum(axis=1) / np.maximum(weight.sum(axis=1), 1e-30)


def _ternary_planes(w: np.ndarray, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """{−α, 0, +α} as two planes of scale α/2: +α = (+,+), −α = (−,−), 0 = (+,−)."""
    _, negative = _ternary_codes(w, alpha[:, None])
    return np.stack([alpha / 2, alpha / 2]), negative


def _ternary_codes(w: np.ndarray, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each weight to −1, 0 or +1 (zero below α/2) → (the codes, their two negative planes)."""
    t = np.where(np.abs(w) > alpha / 2, np.sign(w), 0.0)
    return t, np.stack([t < 0, t <= 0])


def _nearest_signs(w: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """For each weight, the ±1 signs whose Σ αₚ sₚ is nearest: w [N, n], alpha [N, P] → [N, n, P]."""
    combos = _combos(alpha.shape[1])
    values = alpha @ combos.T  # N C
    best = np.argmin(np.abs(w[:, :, None] - values[:, None, :]), axis=2)
    return combos[best]


def _quantize_column(column: np.ndarray, alpha: np.ndarray, fmt: WeightFormat) -> tuple[np.ndarray, np.ndarray]:
    """One column [N] on its group's scales alpha [P, N] → (value [N], negative codes [P, N])."""
    if fmt.ternary:
        scale = alpha[0] * 2
        t, negative = _ternary_codes(column, scale)
        return t * scale, negative
    signs = _nearest_signs(column[:, None], alpha.T)[:, 0, :]  # N P
    return (signs * alpha.T).sum(axis=1), (signs < 0).T


def _gptq(
    w: np.ndarray, fmt: WeightFormat, hessian: np.ndarray, salient: np.ndarray, block: int = 128
) -> LowBitWeights:
    """GPTQ in activation order (columns with the largest E[x²] first, so later columns absorb their error);
    the groups' scales are fitted up front on the original weights (static groups), since the kernel's groups are
    contiguous in the original order."""
    rows, cols = w.shape
    h = np.array(hessian, dtype=np.float64)
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    w = w.copy()
    w[:, dead] = 0.0
    importance = np.diag(hessian).clip(min=0)
    groups = _group_bounds(cols, fmt.group_size)
    scales = np.zeros((fmt.stored_planes, rows, len(groups)), dtype=np.float64)
    for g, (start, end) in enumerate(groups):
        scales[:, :, g], _ = _fit_group(w[:, start:end], fmt, importance[start:end])
    group_of = np.repeat(np.arange(len(groups)), [end - start for start, end in groups])
    order = np.argsort(-np.diag(h), kind="stable")
    w, h = w[:, order], h[np.ix_(order, order)]
    h += 0.01 * np.mean(np.diag(h)) * np.eye(cols)
    hinv = np.linalg.cholesky(np.linalg.inv(h)).T  # upper Cholesky factor of H⁻¹
    keep = np.isin(order, salient)
    codes = np.zeros((fmt.stored_planes, rows, cols), dtype=bool)
    for start in range(0, cols, block):
        end = min(start + block, cols)
        errors = np.zeros((rows, end - start))
        for k in range(start, end):
            value, codes[:, :, k] = _quantize_column(w[:, k], scales[:, :, group_of[order[k]]], fmt)
            if keep[k]:
                value = w[:, k]
            err = (w[:, k] - value) / hinv[k, k]
            w[:, k + 1 : end] -= np.outer(err, hinv[k, k + 1 : end])
            errors[:, k - start] = err
            w[:, k] = value
        w[:, end:] -= errors @ hinv[start:end, end:]
    inverse = np.argsort(order)
    return _finish(w[:, inverse], codes[:, :, inverse], scales, salient, fmt)


def _half(scales: np.ndarray) -> np.ndarray:
    """Scales as float16 (half the bytes; a relative rounding of 5e-4, far below the quantization error)."""
    finite = np.finfo(np.float16).max
    return np.clip(scales, -finite, finite).astype(np.float16)


def _finish(
    w: np.ndarray, codes: np.ndarray, scales: np.ndarray, salient: np.ndarray, fmt: WeightFormat
) -> LowBitWeights:
    result = LowBitWeights(codes, _half(scales), salient, np.zeros((w.shape[0], salient.size), np.float32))
    if salient.size:
        approx = result.dequantize(fmt.group_size)
        result.residual = (w[:, salient] - approx[:, salient]).astype(np.float32)
    return result
