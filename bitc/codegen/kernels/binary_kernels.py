"""TE compute definitions of the bitc ops: what each kernel computes, in the layouts the schedules want.

Weights arrive in the ops' canonical packed layout and are re-blocked here for the target: output channels in
blocks of `lanes` innermost, so one vector of xor + popcount serves `lanes` output channels at once. Zero padding
is computed as +1 padding minus a per-edge correction table (built once from the weights, tiny: rows × cols
classes × O), so the inner loop has no branches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from bitc.ops.binary_conv import conv_output_size
from bitc.ops.packing import WORD_BITS, to_pm1, unpack_signs, words

if TYPE_CHECKING:
    from tvm import te, tirx


@dataclass(frozen=True)
class ConvGeometry:
    n: int
    h: int
    w: int
    in_channels: int
    out_channels: int
    kh: int
    kw: int
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]
    planes: int

    @property
    def out_h(self) -> int:
        return conv_output_size(self.h, self.kh, self.strides[0], self.pads[0], self.pads[2])

    @property
    def out_w(self) -> int:
        return conv_output_size(self.w, self.kw, self.strides[1], self.pads[1], self.pads[3])

    @property
    def in_words(self) -> int:
        return words(self.in_channels)


def block_weights(packed: np.ndarray, lanes: int) -> np.ndarray:
    """[P, O, *K, CW] → [P·⌈O/lanes⌉, *K, CW, lanes]: output channels innermost (padded filters are all zero bits)."""
    planes, out_channels = packed.shape[:2]
    blocks = -(-out_channels // lanes)
    padded = np.zeros((planes, blocks * lanes, *packed.shape[2:]), dtype=packed.dtype)
    padded[:, :out_channels] = packed
    padded = padded.reshape(planes * blocks, lanes, *packed.shape[2:])
    return np.ascontiguousarray(np.moveaxis(padded, 1, -1))


def edge_classes(size: int, out_size: int, kernel: int, stride: int, pad_begin: int) -> tuple[int, int, np.ndarray]:
    """Output rows (or columns) grouped by which taps fall in the padding: (#top classes, #bottom classes, for
    each class the boolean tap mask). Rows between top and bottom all read only real input (one interior class)."""
    masks = []
    for o in range(out_size):
        taps = np.arange(kernel) + o * stride - pad_begin
        masks.append((taps < 0) | (taps >= size))
    top = next((i for i, m in enumerate(masks) if not m.any()), out_size)
    bottom = next((i for i, m in enumerate(reversed(masks)) if not m.any()), out_size)
    if top + bottom >= out_size:  # tiny input: every row is its own class
        return out_size, 0, np.array(masks)
    classes = [*masks[:top], masks[top], *masks[out_size - bottom :]]
    return top, bottom, np.array(classes)


def zero_pad_correction(packed: np.ndarray, geometry: ConvGeometry) -> tuple[np.ndarray, int, int, int, int]:
    """Per plane, row class, column class and output channel: Σ of the weights over the taps that fall in the
    padding. Subtracting it from the +1-padded dot gives the zero-padded dot exactly."""
    weight_sums = to_pm1(unpack_signs(packed, geometry.in_channels), np.int64).sum(axis=-1)  # P O KH KW
    top, bottom, rows = edge_classes(geometry.h, geometry.out_h, geometry.kh, geometry.strides[0], geometry.pads[0])
    left, right, cols = edge_classes(geometry.w, geometry.out_w, geometry.kw, geometry.strides[1], geometry.pads[1])
    outside = rows[:, None, :, None] | cols[None, :, None, :]  # RC CC KH KW
    table = np.einsum("rcij,poij->prco", outside.astype(np.int64), weight_sums)
    return table.astype(np.int32), top, bottom, left, right


def _class_index(index: tirx.Expr, size: int, top: int, bottom: int) -> tirx.Expr:
    from tvm import tirx

    if bottom == 0 and top == size:
        return index
    return tirx.Select(index < top, index, tirx.Select(index >= size - bottom, index - (size - bottom) + top + 1, top))


def binary_conv(
    x: te.Tensor,
    weights: te.Tensor,
    epilogue: list[te.Tensor],
    correction: te.Tensor | None,
    geometry: ConvGeometry,
    *,
    lanes: int,
    output: str,
    classes: tuple[int, int, int, int] = (0, 0, 0, 0),
    out_block: int | None = None,
    flat_pixels: bool = False,
) -> te.Tensor:
    """popc[n, oh, ow, block, lane] over the window on +1-padded words, then the epilogue in the output layout
    (NCHW, or NCHW{out_block}c, which lets the float parts around it stay in the blocked layout).

    `flat_pixels` makes popc [n·oh·ow, block, lane] instead: one pixel axis, which GPU schedules tile as the M
    axis of a GEMM (a fused split of n, oh, ow would give the tiles non-rectangular regions)."""
    from tvm import te, tirx

    g = geometry
    top, left, bottom, right = g.pads
    blocks = -(-g.out_channels // lanes)
    if any(g.pads):
        padded = te.compute(
            (g.n, g.h + top + bottom, g.w + left + right, g.in_words),
            lambda n, h, w, c: tirx.if_then_else(
                tirx.all(h >= top, h < g.h + top, w >= left, w < g.w + left),
                x[n, h - top, w - left, c],
                tirx.const(0, "uint32"),
            ),
            name="pad",
        )
    else:
        padded = x
    kh = te.reduce_axis((0, g.kh), "kh")
    kw = te.reduce_axis((0, g.kw), "kw")
    cw = te.reduce_axis((0, g.in_words), "cw")
    sh, sw = g.strides

    def window_popc(n: tirx.Expr, oh: tirx.Expr, ow: tirx.Expr, b: tirx.Expr, lane: tirx.Expr) -> tirx.Expr:
        return te.sum(
            tirx.popcount(padded[n, oh * sh + kh, ow * sw + kw, cw] ^ weights[b, kh, kw, cw, lane]).astype("int32"),
            axis=[kh, kw, cw],
        )

    if flat_pixels:
        pixels = g.out_h * g.out_w
        flat = te.compute(
            (g.n * pixels, g.planes * blocks, lanes),
            lambda p, b, lane: window_popc(p // pixels, p % pixels // g.out_w, p % g.out_w, b, lane),
            name="popc",
        )

        def popc_at(n: tirx.Expr, oh: tirx.Expr, ow: tirx.Expr, b: tirx.Expr, lane: tirx.Expr) -> tirx.Expr:
            return flat[(n * g.out_h + oh) * g.out_w + ow, b, lane]
    else:
        popc_at = te.compute((g.n, g.out_h, g.out_w, g.planes * blocks, lanes), window_popc, name="popc")
    return conv_epilogue(
        popc_at, epilogue, correction, g, lanes=lanes, output=output, classes=classes, out_block=out_block
    )


def conv_epilogue(
    popc_at: Callable[..., tirx.Expr],
    epilogue: list[te.Tensor],
    correction: te.Tensor | None,
    geometry: ConvGeometry,
    *,
    lanes: int,
    output: str,
    classes: tuple[int, int, int, int] = (0, 0, 0, 0),
    out_block: int | None = None,
) -> te.Tensor:
    """From popc(window xor w) — `popc_at(n, oh, ow, block, lane)` on +1-padded words — to the float (NCHW or
    NCHW{out_block}c) or packed-sign (NHWC words) output, subtracting the zero-padding correction."""
    from tvm import te

    g = geometry
    blocks = -(-g.out_channels // lanes)
    full = g.in_channels * g.kh * g.kw
    row_top, row_bottom, col_left, col_right = classes

    def dot(plane: int, n: tirx.Expr, oh: tirx.Expr, ow: tirx.Expr, o: tirx.Expr) -> tirx.Expr:
        value = full - 2 * popc_at(n, oh, ow, plane * blocks + o // lanes, o % lanes)
        if correction is not None:
            rc = _class_index(oh, g.out_h, row_top, row_bottom)
            cc = _class_index(ow, g.out_w, col_left, col_right)
            value = value - correction[plane, rc, cc, o]
        return value

    if output == "packed":
        (threshold,) = epilogue

        out_planes = int(threshold.shape[0])

        def packed_word(n: tirx.Var, oh: tirx.Var, ow: tirx.Var, word: tirx.Var) -> tirx.Expr:
            return _sign_bits(lambda o: _plane_sum(dot, g.planes, n, oh, ow, o), threshold, word, g.out_channels)

        shape = (g.n, g.out_h, g.out_w, words(out_planes * g.out_channels))
        return te.compute(shape, packed_word, name="threshold")
    scale, bias = epilogue

    def float_out(n: tirx.Expr, o: tirx.Expr, oh: tirx.Expr, ow: tirx.Expr) -> tirx.Expr:
        return _scaled_plane_sum(lambda plane: dot(plane, n, oh, ow, o), g.planes, scale, bias, o)

    if out_block:
        return te.compute(
            (g.n, g.out_channels // out_block, g.out_h, g.out_w, out_block),
            lambda n, ob, oh, ow, ol: float_out(n, ob * out_block + ol, oh, ow),
            name="epilogue",
        )
    return te.compute((g.n, g.out_channels, g.out_h, g.out_w), float_out, name="epilogue")


def binary_dense(
    x: te.Tensor,
    weights: te.Tensor,
    epilogue: list[te.Tensor],
    *,
    in_features: int,
    out_features: int,
    planes: int,
    lanes: int,
    output: str,
) -> te.Tensor:
    """popc[m, block, lane] over the packed K axis, then a float or packed epilogue."""
    from tvm import te, tirx

    m_rows, k_words = (int(d) for d in x.shape)
    blocks = -(-out_features // lanes)
    k = te.reduce_axis((0, k_words), "k")
    popc = te.compute(
        (m_rows, planes * blocks, lanes),
        lambda m, b, lane: te.sum(tirx.popcount(x[m, k] ^ weights[b, k, lane]).astype("int32"), axis=k),
        name="popc",
    )
    return dense_epilogue(popc, epilogue, in_features=in_features, out_features=out_features, output=output)


def dense_epilogue(
    popc: te.Tensor, epilogue: list[te.Tensor], *, in_features: int, out_features: int, output: str
) -> te.Tensor:
    """From popc(x xor w) [M, P·blocks, lanes] to the float ([M, O]) or packed-sign ([M, words]) output."""
    from tvm import te

    m_rows, blocks_all, lanes = (int(d) for d in popc.shape)
    blocks = -(-out_features // lanes)
    planes = blocks_all // blocks

    def dot(plane: int, m: tirx.Expr, o: tirx.Expr) -> tirx.Expr:
        return in_features - 2 * popc[m, plane * blocks + o // lanes, o % lanes]

    if output == "packed":
        (threshold,) = epilogue

        out_planes = int(threshold.shape[0])

        def packed_word(m: tirx.Var, word: tirx.Var) -> tirx.Expr:
            return _sign_bits(lambda o: _plane_sum(dot, planes, m, o), threshold, word, out_features)

        return te.compute((m_rows, words(out_planes * out_features)), packed_word, name="threshold")
    scale, bias = epilogue

    def float_out(m: tirx.Var, o: tirx.Var) -> tirx.Expr:
        return _scaled_plane_sum(lambda plane: dot(plane, m, o), planes, scale, bias, o)

    return te.compute((m_rows, out_features), float_out, name="epilogue")


def _scaled_plane_sum(
    dot: Callable[[int], tirx.Expr], planes: int, scale: te.Tensor, bias: te.Tensor, o: tirx.Expr
) -> tirx.Expr:
    """Σₚ float(dot(p))·scale[p, o] + bias[o], in the order `ops.packing.scaled_plane_sum` uses."""
    value = dot(0).astype("float32") * scale[0, o]
    for plane in range(1, planes):
        value = value + dot(plane).astype("float32") * scale[plane, o]
    return value + bias[o]


def _plane_sum(dot: Callable[..., tirx.Expr], planes: int, *index: tirx.Expr) -> tirx.Expr:
    total = dot(0, *index)
    for plane in range(1, planes):
        total = total + dot(plane, *index)
    return total


def _sign_bits(
    dot: Callable[[tirx.Expr], tirx.Expr], threshold: te.Tensor, word: tirx.Expr, channels: int
) -> tirx.Expr:
    """One packed output word: bit b set where packed channel c = word·32 + b exists (plane c // channels,
    channel c % channels) and that channel's dot is below the plane's threshold [P, O]. Written out as 32 terms
    (not a reduction) so the schedules can place it freely."""
    from tvm import tirx

    planes = int(threshold.shape[0])
    value = tirx.const(0, "uint32")
    for bit in range(WORD_BITS):
        packed = word * WORD_BITS + bit
        plane = tirx.min(packed // channels, planes - 1)
        o = packed % channels
        negative = tirx.all(packed < planes * channels, dot(o) < threshold[plane, o])
        value = value | tirx.Select(negative, tirx.const(1 << bit, "uint32"), tirx.const(0, "uint32"))
    return value


def bitpack(x: te.Tensor, thresholds: tuple[float, ...] = (0.0,)) -> te.Tensor:
    """sign + pack along channels: NCHW (or NCHW{b}c) float → NHWC words, or [M, K] → [M, words]; 32 terms per
    word, no reduction, so the schedule can vectorise across pixels."""
    from tvm import te, tirx

    shape = [int(d) for d in x.shape]
    block = shape[4] if len(shape) == 5 else None
    channels = shape[1] * block if block else shape[1]
    planes = len(thresholds)

    def element_at(index: tuple[tirx.Var, ...], channel: tirx.Expr) -> tirx.Expr:
        if block:
            return x[index[0], channel // block, index[1], index[2], channel % block]
        if len(shape) == 4:
            return x[index[0], channel, index[1], index[2]]
        return x[index[0], channel]

    def below(element: tirx.Expr, plane: tirx.Expr) -> tirx.Expr:
        """element < thresholds[plane] (a select chain: there are 1-3 planes)."""
        result = element < tirx.const(thresholds[-1], x.dtype)
        for p in range(planes - 2, -1, -1):
            result = tirx.Select(plane == p, element < tirx.const(thresholds[p], x.dtype), result)
        return result

    def word(*index: tirx.Var) -> tirx.Expr:
        value = tirx.const(0, "uint32")
        for bit in range(WORD_BITS):
            packed = index[-1] * WORD_BITS + bit
            element = element_at(index, tirx.min(packed % channels, channels - 1))
            negative = tirx.all(packed < planes * channels, below(element, packed // channels))
            value = value | tirx.Select(negative, tirx.const(1 << bit, "uint32"), tirx.const(0, "uint32"))
        return value

    total = words(planes * channels)
    out_shape = (shape[0], shape[2], shape[3], total) if len(shape) >= 4 else (shape[0], total)
    return te.compute(out_shape, word, name="bitpack")


def packed_max_pool(
    x: te.Tensor, kernel: tuple[int, int], strides: tuple[int, int], pads: tuple[int, ...]
) -> te.Tensor:
    """AND over the window of packed words; padding reads all-ones (the AND identity)."""
    from tvm import te, tirx

    n, h, w, cw = (int(d) for d in x.shape)
    top, left, bottom, right = pads
    out_h = conv_output_size(h, kernel[0], strides[0], top, bottom)
    out_w = conv_output_size(w, kernel[1], strides[1], left, right)
    ones = tirx.const(0xFFFFFFFF, "uint32")
    both = te.comm_reducer(lambda a, b: a & b, lambda dtype: tirx.const(0xFFFFFFFF, dtype), name="bitwise_and")
    rh = te.reduce_axis((0, kernel[0]), "rh")
    rw = te.reduce_axis((0, kernel[1]), "rw")

    def window(b: tirx.Var, oh: tirx.Var, ow: tirx.Var, c: tirx.Var) -> tirx.Expr:
        ih = oh * strides[0] + rh - top
        iw = ow * strides[1] + rw - left
        inside = tirx.all(ih >= 0, ih < h, iw >= 0, iw < w)
        return both(
            tirx.if_then_else(
                inside, x[b, tirx.max(tirx.min(ih, h - 1), 0), tirx.max(tirx.min(iw, w - 1), 0), c], ones
            ),
            axis=[rh, rw],
        )

    return te.compute((n, out_h, out_w, cw), window, name="packed_max_pool")
