"""Blocked channel layout (NCHW16c) for float convolutions on AVX-512 CPUs.

With 16 channels innermost, a conv's inner loop is one 512-bit FMA per input channel and tap; ConvertLayout
propagates the layout through elementwise ops so transforms only appear at the model's boundaries, and
FoldConstant pre-blocks the weights at compile time. TVM has no legalization for conv2d in a blocked layout,
so this module provides the TE compute (regular, depthwise, and plain-NCHW input with blocked output for stems).
The binary kernels read and write the same layout (`to_blocked`, `from_blocked`); transform pairs that meet back to
back are cancelled (`cancel_layout_round_trips`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from bitc.codegen.cpu.layout_segments import apply_isolating_failures
from bitc.codegen.relax.rewrite import declared_out_dtype, rewrite_calls

if TYPE_CHECKING:
    import tvm
    from tvm import relax, te, tirx

BLOCK = 16
# the reduction blocks of `conv2d_nchwc`, by which `cpu.schedules` tells convs from matmuls in a fused function
CONV_BLOCK, DEPTHWISE_BLOCK = "conv2d_NCHWc", "dwconv2d_NCHWc"
GROUPED_SUFFIX = "_grouped"  # a grouped conv's block: CONV_BLOCK + this + its output blocks per group


def convert_conv_layout(mod: tvm.IRModule, block: int = BLOCK, refused: list[str] | None = None) -> tvm.IRModule:
    """conv2d NCHW/OIHW → blocked layouts chosen per conv (see `conv_layouts`); ConvertLayout carries them through
    the elementwise ops in between, so layout transforms only remain where a conv has no blocked form. Run
    `clip_to_relax_ops` first, so Clip keeps the blocked layout.

    Where TVM's layout inference fails on some op, only that op stays in the default layout (its neighbours are
    converted, with transforms around it): the ops left so are appended to `refused`."""
    from tvm import relax

    mod = rewrite_calls(mod, _stack_as_concat)
    mod = rewrite_calls(mod, _conv1d_as_conv2d)
    mod = rewrite_calls(mod, _upsampling_transpose_as_conv)
    mod = rewrite_calls(mod, _inference_batch_norm_as_scale_shift)
    mod = rewrite_calls(mod, _constants_as_layout_friendly_operands)
    mod = rewrite_calls(mod, lambda mutator, call: _grouped_conv_as_convs(mutator, call, block))
    mod = rewrite_calls(mod, lambda mutator, call: _output_channels_padded(mutator, call, block))
    convert = relax.transform.ConvertLayout({}, layout_cb=lambda call: conv_layouts(call, block))
    # pieces: ConvertLayout's cost grows with the square of a function's length, and a failure stays local
    mod, left = apply_isolating_failures(mod, convert)
    if refused is not None:
        refused += left
    return legalize_bool_layout_transforms(mod)


def legalize_bool_layout_transforms(mod: tvm.IRModule) -> tvm.IRModule:
    """Lower layout transforms of bool tensors (comparisons ConvertLayout carried into the blocked layout) right
    away: TVM's own lowering, which FoldConstant also uses, pads them with a float 0 and fails."""

    def lower(mutator: relax.PyExprMutator, call: relax.Call) -> relax.Expr | None:
        is_transform = getattr(call.op, "name", None) == "relax.layout_transform"
        if is_transform and str(call.args[0].ty.dtype) == "bool":
            return legalize_layout_transform(mutator.builder_, call)
        return None

    return rewrite_calls(mod, lower)


def _conv1d_as_conv2d(mutator: relax.PyExprMutator, call: relax.Call) -> relax.Expr | None:
    """conv1d over [N, C, L] as conv2d over [N, C, L, 1]: the same sums, and the 2-D conv has a blocked kernel
    (TVM's generic 1-D conv runs 10-50x slower)."""
    from tvm import relax

    if getattr(call.op, "name", None) != "relax.nn.conv1d":
        return None
    attrs = call.attrs
    if (str(attrs.data_layout), str(attrs.kernel_layout), str(attrs.out_layout)) != ("NCW", "OIW", "NCW"):
        return None
    (stride,), (dilation,) = (int(v) for v in attrs.strides), (int(v) for v in attrs.dilation)
    begin, end = (int(v) for v in attrs.padding)
    out_dtype = declared_out_dtype(attrs)
    conv = relax.op.nn.conv2d(
        relax.op.expand_dims(call.args[0], [3]),
        relax.op.expand_dims(call.args[1], [3]),
        strides=[stride, 1],
        padding=[begin, 0, end, 0],
        dilation=[dilation, 1],
        groups=int(attrs.groups),
        out_dtype=out_dtype,
    )
    return relax.op.squeeze(conv, [3])


def _inference_batch_norm_as_scale_shift(mutator: relax.PyExprMutator, call: relax.Call) -> relax.Expr | None:
    """An inference batch_norm with constant statistics (one the passes could not fold into a conv: after a
    Concat, as in DenseNet) as x · s + t per channel, s = γ / sqrt(var + ε) and t = β − mean · s computed in
    float64: the same function up to float rounding, and multiply/add keep the blocked layout, which batch_norm
    does not (every DenseNet block went to NCHW and back)."""
    import numpy as np
    import tvm
    from tvm import relax

    if getattr(call.op, "name", None) != "relax.nn.batch_norm" or bool(call.attrs.training):
        return None
    data, *stats = call.args
    ndim, dtype = getattr(data.ty, "ndim", -1), str(getattr(data.ty, "dtype", ""))
    if ndim < 2 or dtype != "float32" or not all(isinstance(v, tvm.ir.GenericConst) for v in stats):
        return None
    gamma, beta, mean, var = (v.value.numpy().astype(np.float64) for v in stats)
    gamma = gamma if bool(call.attrs.scale) else np.ones_like(gamma)
    beta = beta if bool(call.attrs.center) else np.zeros_like(beta)
    scale = gamma / np.sqrt(var + float(call.attrs.epsilon))
    shift = beta - mean * scale
    shape = [1] * ndim
    shape[int(call.attrs.axis) % ndim] = scale.size
    out = relax.op.add(
        relax.op.multiply(data, relax.const(scale.astype(np.float32).reshape(shape))),
        relax.const(shift.astype(np.float32).reshape(shape)),
    )
    return relax.Tuple([out, stats[2], stats[3]])


_BROADCAST_BINARY = {
    f"relax.{name}"
    for name in ("add", "subtract", "multiply", "divide", "maximum", "minimum", "power", "floor_divide", "mod")
}


def _constants_as_layout_friendly_operands(mutator: relax.PyExprMutator, call: relax.Call) -> relax.Expr | None:
    """x ⊙ c with a constant c of one element (shape [1], [1, 1, 1] ...) as x ⊙ scalar, and a per-channel c of
    lower rank ([C, 1, 1] against [N, C, H, W]) at x's rank: the same values, and TVM's layout inference keeps a
    blocked x blocked only against a scalar or an operand of its own rank (HardSwish's `+ 3`, `/ 6`, or a
    BatchNorm written as Mul/Add after a Concat, otherwise send every activation back to NCHW and forth)."""
    import numpy as np
    import tvm
    from tvm import relax

    if getattr(call.op, "name", None) not in _BROADCAST_BINARY or len(call.args) != 2:
        return None
    args = list(call.args)
    changed = False
    for index, (arg, other) in enumerate(((args[0], args[1]), (args[1], args[0]))):
        ndim, other_ndim = getattr(arg.ty, "ndim", -1), getattr(other.ty, "ndim", -1)
        if not isinstance(arg, tvm.ir.GenericConst) or not 0 < ndim <= other_ndim:
            continue
        values = arg.value.numpy()
        if values.size == 1:
            args[index] = relax.const(np.asarray(values).reshape(()), str(arg.ty.dtype))
            changed = True
        elif ndim < other_ndim:  # [C, 1, 1] against [N, C, H, W]: the same broadcast at the full rank
            args[index] = relax.const(values.reshape((1,) * (other_ndim - ndim) + values.shape), str(arg.ty.dtype))
            changed = True
    return relax.Call(call.op, args, call.attrs) if changed else None


def _upsampling_transpose_as_conv(mutator: relax.PyExprMutator, call: relax.Call) -> relax.Expr | None:
    """conv2d_transpose with kernel = stride and no padding (the upsampling of U-Nets, FPNs, DBNet heads) as a
    1x1 conv to O·KH·KW channels followed by a pixel shuffle: each output pixel takes exactly one input pixel, so
    the sums are the same, and the 1x1 conv has a blocked kernel (TVM's transposed conv is generic code)."""
    from tvm import relax

    if getattr(call.op, "name", None) != "relax.nn.conv2d_transpose":
        return None
    attrs, weight_shape, data_shape = call.attrs, call.args[1].ty.shape, call.args[0].ty.shape
    layouts = (str(attrs.data_layout), str(attrs.kernel_layout), str(attrs.out_layout))
    if weight_shape is None or data_shape is None or layouts != ("NCHW", "IOHW", "NCHW") or int(attrs.groups) != 1:
        return None
    if not all(hasattr(d, "value") for d in (*weight_shape, *data_shape)):
        return None
    in_channels, out_channels, kh, kw = (int(d) for d in weight_shape)
    n, _, h, w = (int(d) for d in data_shape)
    plain = all(int(v) == 0 for v in (*attrs.padding, *attrs.output_padding)) and all(
        int(v) == 1 for v in attrs.dilation
    )
    if not plain or [int(v) for v in attrs.strides] != [kh, kw]:
        return None
    # weight [C, O, KH, KW] → [O·KH·KW, C, 1, 1]: output channel (o, a, b) of the 1x1 conv is pixel (a, b) of o
    weight = relax.op.reshape(
        relax.op.permute_dims(call.args[1], [1, 2, 3, 0]), [out_channels * kh * kw, in_channels, 1, 1]
    )
    conv = relax.op.nn.conv2d(call.args[0], weight, out_dtype=declared_out_dtype(attrs))
    shuffled = relax.op.permute_dims(relax.op.reshape(conv, [n, out_channels, kh, kw, h, w]), [0, 1, 4, 2, 5, 3])
    return relax.op.reshape(shuffled, [n, out_channels, h * kh, w * kw])


MAX_MERGED_GROUPS = 8  # merged groups multiply the multiply-adds: worth it only for a few


def _grouped_conv_as_convs(mutator: relax.PyExprMutator, call: relax.Call, block: int) -> relax.Expr | None:
    """A grouped (not depthwise) conv2d in a form with a blocked kernel (ResNeXt, RegNet, ShuffleNet); TVM's
    generic grouped conv runs 10-50x slower than onnxruntime.

    Group widths that take a vector block stay one grouped conv (`conv_layouts` blocks it; `conv2d_nchwc` reads
    each group's input blocks). Narrower or odd widths (ResNeXt's 4 channels per group) merge `m` neighbouring
    groups into one whose weight is block-diagonal (zeros between the merged groups): `m` times the multiply-adds
    but whole vectors. Failing that, blocks of all channels with a band of input blocks per output block
    (`GroupedBand`), else one dense block-diagonal conv over all groups (`_grouped_conv_as_dense`)."""

    if getattr(call.op, "name", None) != "relax.nn.conv2d":
        return None
    attrs = call.attrs
    groups, shape = int(attrs.groups), call.args[1].ty.shape
    if groups == 1 or shape is None or attrs.data_layout != "NCHW" or attrs.kernel_layout != "OIHW":
        return None
    out_channels, group_inputs = int(shape[0]), int(shape[1])
    if (group_inputs == 1 and groups == out_channels) or str(attrs.out_layout) != "NCHW":
        return None  # depthwise: its own blocked kernel
    merged = merged_groups(groups, group_inputs, out_channels // groups, block)
    if merged == 1:
        return None
    if merged is not None:
        weight = _block_diagonal_weight(call.args[1], groups, merged)
        return None if weight is None else _conv_like(call, call.args[0], weight, groups // merged)
    if grouped_band(groups, group_inputs * groups, out_channels, block) is not None:
        return None  # `conv_layouts` gives it the banded kernel
    return _grouped_conv_as_dense(call, block)


@dataclass(frozen=True)
class GroupedBand:
    """A grouped conv whose group widths take no vector block (ShuffleNet's 4 groups of 34 channels), run on
    blocks of all its channels: each output block's groups read a band of `band_blocks` consecutive input blocks
    from `start(oc)`, with zero weights where an input channel is not in the output channel's group. Work:
    `band_blocks · in_block / group inputs` times the grouped conv's (about 2, where one dense conv over 4 groups
    is 4)."""

    groups: int
    in_channels: int
    out_channels: int
    in_block: int
    out_block: int
    band_blocks: int

    def first_group(self, out_block_index: Any) -> Any:
        return out_block_index * self.out_block // (self.out_channels // self.groups)

    def start(self, out_block_index: Any) -> Any:
        """The first input block of output block `out_block_index`'s band (a TIR expression for a TIR index)."""
        from tvm import tirx

        first = self.first_group(out_block_index) * (self.in_channels // self.groups) // self.in_block
        last_start = self.in_channels // self.in_block - self.band_blocks
        return min(first, last_start) if isinstance(first, int) else tirx.min(first, last_start)


MAX_BAND_SHARE = 0.75  # a band over more than this share of the input blocks: one dense conv is as good


def grouped_band(groups: int, in_channels: int, out_channels: int, block: int) -> GroupedBand | None:
    """The band form of a grouped conv with these channel counts (both totals must take a vector block)."""
    in_block, out_block = _channel_block(in_channels, block), _channel_block(out_channels, block)
    if groups == 1 or in_block is None or out_block is None:
        return None
    return band_of(groups, in_channels, out_channels, in_block, out_block)


def band_of(groups: int, in_channels: int, out_channels: int, in_block: int, out_block: int) -> GroupedBand | None:
    """The band for these channel blocks; None where it would span most of the input blocks."""
    group_inputs, group_outputs = in_channels // groups, out_channels // groups
    spans = []
    for index in range(out_channels // out_block):
        first = index * out_block // group_outputs
        last = (index * out_block + out_block - 1) // group_outputs
        spans.append(-(-(last + 1) * group_inputs // in_block) - first * group_inputs // in_block)
    band = max(spans)
    if band > MAX_BAND_SHARE * (in_channels // in_block):
        return None
    return GroupedBand(groups, in_channels, out_channels, in_block, out_block, band)


def merged_groups(groups: int, group_inputs: int, group_outputs: int, block: int) -> int | None:
    """The fewest neighbouring groups `m` (a divisor of `groups`, at most `MAX_MERGED_GROUPS`, fewer than all)
    whose merged input and output widths both take a vector block; None if there is none."""
    for merged in range(1, min(groups - 1, MAX_MERGED_GROUPS) + 1):
        if groups % merged == 0 and all(
            _channel_block(merged * width, block) is not None for width in (group_inputs, group_outputs)
        ):
            return merged
    return None


def _block_diagonal_weight(weight: relax.Expr, groups: int, merged: int) -> relax.Expr | None:
    """A `groups`-grouped conv's constant OIHW weight [O, I/groups, ...] for groups/merged groups: each merged
    group's weight is block-diagonal, zeros between the groups it merges (an input of one group meets zeros in
    the others' filters, so every sum of finite values is the same; an inf or NaN input would reach the merged
    groups' outputs too, as 0 · inf)."""
    import numpy as np
    import tvm
    from tvm import relax

    if not isinstance(weight, tvm.ir.GenericConst):
        return None
    values = weight.value.numpy()
    out_channels, group_inputs = values.shape[:2]
    group_outputs = out_channels // groups
    result = np.zeros((out_channels, group_inputs * merged, *values.shape[2:]), values.dtype)
    for group in range(groups):
        rows = slice(group * group_outputs, (group + 1) * group_outputs)
        column = (group % merged) * group_inputs  # its place among the inputs of its merged group
        result[rows, column : column + group_inputs] = values[rows]
    return relax.const(result)


def _grouped_conv_as_dense(call: relax.Call, block: int) -> relax.Expr | None:
    """A grouped conv whose merged widths take no vector block (ShuffleNet's 4 groups of 17 outputs) but whose
    input total does: one dense conv with a block-diagonal weight (`_output_channels_padded` then pads its
    outputs), still several times faster than TVM's generic grouped conv at up to `MAX_MERGED_GROUPS` times the
    multiply-adds."""
    import tvm

    weight, groups = call.args[1], int(call.attrs.groups)
    if groups > MAX_MERGED_GROUPS or not isinstance(weight, tvm.ir.GenericConst):
        return None
    out_channels, group_inputs, *taps = (int(d) for d in weight.ty.shape)
    depth = group_inputs * groups * math.prod(taps)
    outputs_blocked = _channel_block(out_channels, block) or _padded_output_channels(out_channels, depth, block)
    if outputs_blocked is None or _channel_block(group_inputs * groups, block) is None:
        return None
    return _conv_like(call, call.args[0], _block_diagonal_weight(weight, groups, groups))


def _conv_like(call: relax.Call, data: relax.Expr, weight: relax.Expr, groups: int = 1) -> relax.Expr:
    """An NCHW conv2d over `data` and `weight` with `call`'s strides, padding, dilation and out_dtype."""
    from tvm import relax

    attrs = call.attrs
    return relax.op.nn.conv2d(
        data,
        weight,
        strides=attrs.strides,
        padding=attrs.padding,
        dilation=attrs.dilation,
        groups=groups,
        out_dtype=declared_out_dtype(attrs),
    )


MIN_PADDED_DEPTH = 256  # multiply-adds per output value below which the slice's layout round trip costs more
MAX_PADDED_SHARE = 0.125  # extra output channels, at most this share


def _output_channels_padded(mutator: relax.PyExprMutator, call: relax.Call, block: int) -> relax.Expr | None:
    """A deep conv whose output channels the vector block does not divide (a classifier's 1,000, a detector
    head's 255) as a conv with zero filters up to whole blocks, then a slice of the real channels: the kept
    channels are the same sums, and the full-width kernel with its multi-block register tile runs about twice as
    fast as 8-wide or odd blocks (SqueezeNet's last conv: 1.7 ms). The slice costs one layout transform of the
    output, so only convs with at least `MIN_PADDED_DEPTH` multiply-adds per output value are padded."""
    import numpy as np
    import tvm
    from tvm import relax

    if getattr(call.op, "name", None) != "relax.nn.conv2d" or not isinstance(call.args[1], tvm.ir.GenericConst):
        return None
    attrs = call.attrs
    if int(attrs.groups) != 1 or attrs.data_layout != "NCHW" or attrs.kernel_layout != "OIHW":
        return None
    if str(attrs.out_layout) != "NCHW":
        return None
    values = call.args[1].value.numpy()
    out_channels = values.shape[0]
    padded_channels = _padded_output_channels(out_channels, int(np.prod(values.shape[1:])), block)
    if padded_channels is None:
        return None
    padded = np.zeros((padded_channels, *values.shape[1:]), values.dtype)
    padded[:out_channels] = values
    conv = mutator.builder_.emit(_conv_like(call, call.args[0], relax.const(padded)))
    return relax.op.strided_slice(conv, axes=[1], begin=[0], end=[out_channels])


MIN_EVEN_BLOCKS = 15  # an odd block count from which one more zero block costs at most 1/15 more work


def _padded_output_channels(out_channels: int, depth: int, block: int) -> int | None:
    """Output channels with zero filters up to whole blocks, for a conv `_output_channels_padded` pads (one
    with `depth` multiply-adds per output value); None for the ones it leaves. With 8-wide blocks (AVX2) an odd
    block count of at least `MIN_EVEN_BLOCKS` also gets one more block: the 2-block register tile needs an even
    count, and 1 block × 13 rows ran SqueezeNet's 1,000-channel conv at ~40 GF/s on a Zen 3."""
    padded_channels = -(-out_channels // block) * block
    if depth < MIN_PADDED_DEPTH:
        return None
    if out_channels % block == 0:
        blocks = out_channels // block
        odd = block == 8 and blocks % 2 == 1 and blocks >= MIN_EVEN_BLOCKS
        return out_channels + block if odd else None
    return padded_channels if (padded_channels - out_channels) / out_channels <= MAX_PADDED_SHARE else None


def _stack_as_concat(mutator: relax.PyExprMutator, call: relax.Call) -> relax.Expr | None:
    """stack(xs, axis) as concat(expand_dims(x, axis) for x in xs, axis): the same tensor, and TVM's layout
    inference for `stack` fails where concat's works (a 0-d stack even kills the process with SIGFPE)."""
    from tvm import relax

    if getattr(call.op, "name", None) != "relax.stack":
        return None
    fields = getattr(call.args[0], "fields", None)
    if not fields or any(getattr(field.ty, "ndim", -1) < 0 for field in fields):
        return None
    axis = int(call.attrs.axis) if call.attrs.axis is not None else 0
    axis = axis if axis >= 0 else axis + fields[0].ty.ndim + 1
    return relax.op.concat([relax.op.expand_dims(field, [axis]) for field in fields], axis=axis)


def clip_to_relax_ops(mod: tvm.IRModule) -> tvm.IRModule:
    """Turn the ONNX importer's Clip (`call_tir` of a TE max/min against a scalar) into relax maximum/minimum.

    ConvertLayout cannot see into `call_tir`, so every ReLU6 would otherwise go back to NCHW and forth again
    (two layout transforms per activation in MobileNet); relax ops keep the blocked layout and fuse into the conv.
    Their legalization (`nan_semantics`) also lets a NaN through, as ONNX Clip does; TE's max / min drop it.
    """
    from tvm import relax

    mod = rewrite_calls(mod, lambda mutator, call: _clip_as_relax_op(mutator.builder_.get(), call))
    mod = rewrite_calls(mod, _relax_clip_as_max_min)
    return relax.transform.DeadCodeElimination()(mod)


def _relax_clip_as_max_min(mutator: relax.PyExprMutator, call: relax.Call) -> relax.Expr | None:
    """relax.clip(x, lo, hi) on floats (the importer's HardSigmoid / HardSwish) as minimum(maximum(x, lo), hi):
    clip has no layout inference, so each one would send a blocked activation back to NCHW and forth again."""
    from tvm import relax

    if getattr(call.op, "name", None) != "relax.clip" or len(call.args) != 3:
        return None
    dtype = str(getattr(call.args[0].ty, "dtype", ""))
    if not dtype.startswith(("float", "bfloat")):
        return None
    bounds = []
    for arg in call.args[1:]:
        value = getattr(arg, "value", None)
        value = getattr(value, "value", value)
        if not isinstance(value, int | float):
            return None
        bounds.append(relax.const(float(value), dtype))
    return relax.op.minimum(relax.op.maximum(call.args[0], bounds[0]), bounds[1])


def _clip_as_relax_op(mod: tvm.IRModule, call: relax.Call) -> relax.Expr | None:
    """relax.maximum/minimum(x, bound) for a call_tir of an elementwise max/min with a 0-d or constant bound."""
    import tvm
    from tvm import relax, tirx

    if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.call_tir") or len(call.args) < 2:
        return None
    callee, args = call.args[0], list(call.args[1].fields) if isinstance(call.args[1], relax.Tuple) else []
    func = mod.functions.get(callee) if isinstance(callee, relax.GlobalVar) else None
    store = _single_store(func) if isinstance(func, tirx.PrimFunc) and len(func.params) == len(args) + 1 else None
    if store is None or not isinstance(store.value, tirx.Max | tirx.Min) or not args:
        return None
    load, bound = store.value.a, store.value.b
    elementwise = len(load.indices) == len(store.indices) and all(
        i.same_as(j) for i, j in zip(load.indices, store.indices, strict=True)
    )
    if not (elementwise and load.source.same_as(func.params[0]) and store.buffer.same_as(func.params[-1])):
        return None
    dtype = str(args[0].ty.dtype)
    if isinstance(bound, tirx.FloatImm | tirx.IntImm) and len(args) == 1:
        bound_expr = relax.const(bound.value, dtype)
    elif len(args) == 2 and not bound.indices and bound.source.same_as(func.params[1]):
        bound_expr = args[1]
    else:
        return None
    op = relax.op.maximum if isinstance(store.value, tirx.Max) else relax.op.minimum
    return op(args[0], bound_expr)


def _single_store(func: tirx.PrimFunc) -> tirx.BufferStore | None:
    """The store of a PrimFunc made of exactly one block (a TE elementwise op), else None."""
    import tvm
    from tvm import tirx
    from tvm.s_tir import Schedule

    try:
        sch = Schedule(tvm.IRModule({"main": func}))
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
    except Exception:
        return None
    body = sch.get(blocks[0]).body if len(blocks) == 1 else None
    return body if isinstance(body, tirx.BufferStore) else None


def conv_layouts(call: relax.Call, block: int = BLOCK) -> dict[str, list[str]]:
    """Desired [data, kernel, output] layouts for one call (ConvertLayout's per-call hook; non-convs get none).

    TVM's single desired layout (OIHW16i16o) cannot block depthwise kernels (I = 1) or channel counts that 16 does
    not divide, so each conv gets its own: the widest block in {block, 8} that divides each channel count (24
    channels become NCHW8c, so tensors shared by several convs get one layout and no transforms between them),
    OIHW1i{b}o for depthwise, blocks of the group widths for grouped convs, and plain NCHW data with a blocked
    output for inputs with few channels (the stem)."""
    import tvm

    if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.nn.conv2d"):
        return {}
    attrs = call.attrs
    unchanged = {"relax.nn.conv2d": [str(attrs.data_layout), str(attrs.kernel_layout), str(attrs.out_layout)]}
    shape = call.args[1].ty.shape
    if attrs.data_layout != "NCHW" or attrs.kernel_layout != "OIHW" or shape is None:
        return unchanged
    out_channels, group_channels = int(shape[0]), int(shape[1])
    groups = int(attrs.groups)
    depthwise = groups == out_channels and group_channels == 1
    # a grouped conv's blocks lie within one group: the block divides the group's outputs
    out_block = _channel_block(out_channels // groups if groups > 1 and not depthwise else out_channels, block)
    in_block = _channel_block(group_channels, block)
    if groups > 1 and not depthwise and (in_block is None or out_block is None):
        band = grouped_band(groups, group_channels * groups, out_channels, block)
        if band is None:  # `_grouped_conv_as_convs` found no blocked form
            return {"relax.nn.conv2d": ["NCHW", "OIHW", "NCHW"]}
        return {"relax.nn.conv2d": [f"NCHW{band.in_block}c", "OIHW", f"NCHW{band.out_block}c"]}
    if out_block is None:
        return {"relax.nn.conv2d": ["NCHW", "OIHW", "NCHW"]}
    if depthwise:
        return {"relax.nn.conv2d": [f"NCHW{out_block}c", f"OIHW1i{out_block}o", f"NCHW{out_block}c"]}
    if in_block is None:
        return {"relax.nn.conv2d": ["NCHW", f"OIHW{out_block}o", f"NCHW{out_block}c"]}
    return {"relax.nn.conv2d": [f"NCHW{in_block}c", f"OIHW{in_block}i{out_block}o", f"NCHW{out_block}c"]}


_GENERIC_CONVS = {
    "relax.nn.conv1d": "1-D convolution",
    "relax.nn.conv1d_transpose": "1-D transposed convolution",
    "relax.nn.conv2d_transpose": "transposed convolution",
    "relax.nn.conv3d": "3-D convolution",
}


GENERIC_CONV_MIN_MACS = 100_000  # below this a generic conv costs microseconds: not worth a warning


def generic_convs(mod: tvm.IRModule) -> list[str]:
    """One line per convolution of at least `GENERIC_CONV_MIN_MACS` left to TVM's generic (plain NCHW, untuned)
    code, with why and its size: these are typically 10-50x slower than a blocked kernel, and the compile summary
    says so."""
    from tvm import relax

    found: list[str] = []

    def visit(expr: relax.Expr) -> None:
        if not isinstance(expr, relax.Call) or not hasattr(expr.op, "name"):
            return
        name = expr.op.name
        plain_conv2d = name == "relax.nn.conv2d" and expr.attrs.data_layout == "NCHW"
        if not (plain_conv2d and expr.attrs.kernel_layout == "OIHW") and name not in _GENERIC_CONVS:
            return
        macs = _macs(expr)
        if macs is not None and macs < GENERIC_CONV_MIN_MACS:
            return
        size = f" ({macs / 1e6:.1f} M MACs)" if macs is not None else ""
        if name == "relax.nn.conv2d":
            found.append(f"conv2d {_shapes(expr)}{size}: {_why_unblocked(expr)}")
        else:
            kind = _GENERIC_CONVS[name]
            found.append(f"{name.removeprefix('relax.nn.')} {_shapes(expr)}{size}: {kind}, no blocked kernel")

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func.body, visit)
    return found


def _macs(call: relax.Call) -> int | None:
    """Multiply-adds of a conv: output elements × weight elements per output channel (None if not static)."""
    import math

    out, weight = getattr(call.ty, "shape", None), getattr(call.args[1].ty, "shape", None)
    if "transpose" in call.op.name:  # each input element meets O/groups · KH · KW weights
        out = getattr(call.args[0].ty, "shape", None)
    if out is None or weight is None or not all(hasattr(d, "value") for d in (*out, *weight)):
        return None
    return math.prod(int(d) for d in out) * math.prod(int(d) for d in list(weight)[1:])


def _shapes(call: relax.Call) -> str:
    data, weight = (getattr(arg.ty, "shape", None) for arg in call.args[:2])
    dims = [
        [int(d) if hasattr(d, "value") else str(d) for d in shape] if shape is not None else "?"
        for shape in (data, weight)
    ]
    groups = int(getattr(call.attrs, "groups", 1))
    return f"data {dims[0]} weight {dims[1]}" + (f" groups {groups}" if groups > 1 else "")


def _why_unblocked(call: relax.Call) -> str:
    shape = call.args[1].ty.shape
    if shape is None:
        return "unknown weight shape"
    out_channels, group_channels, groups = int(shape[0]), int(shape[1]), int(call.attrs.groups)
    if _channel_block(out_channels, BLOCK) is None:
        return f"no vector block divides its {out_channels} output channels"
    if groups > 1 and (group_channels != 1 or groups != out_channels):
        return f"grouped ({groups} groups of {group_channels} inputs, {out_channels // groups} outputs): no block fits"
    return "the layout conversion left it in NCHW"


def _channel_block(channels: int, block: int) -> int | None:
    """The vector block for a channel count: a full register if it divides, else half of one (AVX2 width), else
    the largest divisor from 5 up to a register (45 pruned channels → 15): a partly used vector is still far
    faster than TVM's plain NCHW conv (17× on a pruned ResNet-18)."""
    for candidate in (block, 8, *range(block - 1, 4, -1)):
        if candidate <= block and channels % candidate == 0:
            return candidate
    return None


def legalize_conv2d(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    """LegalizeOps hook for relax.nn.conv2d: blocked layouts get our TE compute, plain NCHW TVM's own."""
    import tvm

    attrs = call.attrs
    if attrs.data_layout == "NCHW" and attrs.kernel_layout == "OIHW":
        return tvm.ir.Op.get("relax.nn.conv2d").get_attr("FLegalize")(bb, call)
    out_dtype = str(attrs.out_dtype) if attrs.out_dtype else str(call.args[0].ty.dtype)
    compute, kernel = conv2d_nchwc, call.args[1]
    if attrs.kernel_layout == "OIHW" and int(attrs.groups) > 1:  # a grouped band (`grouped_band`)
        data_shape, kernel_shape, out_shape = ([int(d) for d in arg.ty.shape] for arg in (*call.args[:2], call))
        in_channels = data_shape[1] * data_shape[4]
        band = band_of(int(attrs.groups), in_channels, kernel_shape[0], data_shape[4], out_shape[4])
        if band is None:
            raise ValueError(f"no banded kernel for grouped conv2d {data_shape} x {kernel_shape}")
        # packed by its own call, which folds to a constant at compile time where the weight is one
        pack = functools.partial(band_weight, band=band)
        kernel = bb.emit(bb.call_te(pack, kernel, primfunc_name_hint="band_weight"))
        compute = functools.partial(conv2d_nchwc, band=band)
    return bb.call_te(
        compute,
        call.args[0],
        kernel,
        attrs.strides,
        attrs.padding,
        attrs.dilation,
        int(attrs.groups),
        out_dtype or "float32",
        primfunc_name_hint="conv2d_nchwc",
    )


def conv2d_nchwc(
    data: te.Tensor,
    kernel: te.Tensor,
    strides: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    out_dtype: str,
    band: GroupedBand | None = None,
) -> te.Tensor:
    """data (N, C/b, H, W, b) ⊛ kernel (O/b', I/b, KH, KW, b, b') → (N, O/b', OH, OW, b'); with groups > 1, I is a
    group's inputs and each output block (within one group) reads its group's I/b input blocks; depthwise
    (groups = O) with kernel (O/b, 1, KH, KW, 1, b); plain NCHW data (a stem with 3 channels) with kernel
    (O/b', I, KH, KW, b'); a grouped `band` with kernel (O/b', band blocks, KH, KW, b, b') from `band_weight`."""
    from tvm import te, topi

    plain = len(data.shape) == 4
    height, width = (int(x) for x in data.shape[2:4])
    out_blocks, kh_size, kw_size, out_lanes = (int(kernel.shape[i]) for i in (0, 2, 3, -1))
    pad_top, pad_left, pad_bottom, pad_right = (int(p) for p in padding)
    stride_h, stride_w = (int(s) for s in strides)
    dil_h, dil_w = (int(d) for d in dilation)
    out_h = (height + pad_top + pad_bottom - (kh_size - 1) * dil_h - 1) // stride_h + 1
    out_w = (width + pad_left + pad_right - (kw_size - 1) * dil_w - 1) // stride_w + 1
    if pad_top or pad_left or pad_bottom or pad_right:
        tail = [] if plain else [0]
        data = topi.nn.pad(
            data, [0, 0, pad_top, pad_left, *tail], [0, 0, pad_bottom, pad_right, *tail], name="data_pad"
        )
    kh = te.reduce_axis((0, kh_size), "kh")
    kw = te.reduce_axis((0, kw_size), "kw")
    shape = (int(data.shape[0]), out_blocks, out_h, out_w, out_lanes)
    if plain:
        ic = te.reduce_axis((0, int(data.shape[1])), "ic")
        return te.compute(
            shape,
            lambda n, oc, oh, ow, oci: te.sum(
                data[n, ic, oh * stride_h + kh * dil_h, ow * stride_w + kw * dil_w].astype(out_dtype)
                * kernel[oc, ic, kh, kw, oci].astype(out_dtype),
                axis=[ic, kh, kw],
            ),
            name=CONV_BLOCK,
        )
    if groups == 1 or groups != out_blocks * out_lanes:  # dense, or grouped: each group's own input blocks
        group_blocks = int(kernel.shape[1])  # input blocks per group (per band)
        blocks_per_group = 1 if band is not None else out_blocks // groups  # output blocks per group

        def first_block(oc: tirx.Var) -> tirx.Expr:
            if band is not None:
                return band.start(oc)
            return oc // blocks_per_group * group_blocks if groups > 1 else 0

        ico = te.reduce_axis((0, group_blocks), "ico")
        ici = te.reduce_axis((0, int(data.shape[4])), "ici")
        return te.compute(
            shape,
            lambda n, oc, oh, ow, oci: te.sum(
                data[
                    n,
                    first_block(oc) + ico,
                    oh * stride_h + kh * dil_h,
                    ow * stride_w + kw * dil_w,
                    ici,
                ].astype(out_dtype)
                * kernel[oc, ico, kh, kw, ici, oci].astype(out_dtype),
                axis=[ico, kh, kw, ici],
            ),
            name=CONV_BLOCK if groups == 1 else f"{CONV_BLOCK}{GROUPED_SUFFIX}{blocks_per_group}",
        )
    return te.compute(
        shape,
        lambda n, oc, oh, ow, oci: te.sum(
            data[n, oc, oh * stride_h + kh * dil_h, ow * stride_w + kw * dil_w, oci].astype(out_dtype)
            * kernel[oc, 0, kh, kw, 0, oci].astype(out_dtype),
            axis=[kh, kw],
        ),
        name=DEPTHWISE_BLOCK,
    )


def band_weight(weight: te.Tensor, band: GroupedBand) -> te.Tensor:
    """A grouped conv's OIHW weight [O, I/groups, KH, KW] as `band`'s blocked kernel [O/b', band blocks, KH, KW,
    b, b']: output channel o meets input channel c of its band with its weight where c is in o's group, else 0."""
    from tvm import te, tirx

    out_channels, group_inputs, kh_size, kw_size = (int(d) for d in weight.shape)
    group_outputs = out_channels // band.groups
    shape = (out_channels // band.out_block, band.band_blocks, kh_size, kw_size, band.in_block, band.out_block)

    def element(oc: tirx.Var, j: tirx.Var, kh: tirx.Var, kw: tirx.Var, ici: tirx.Var, oci: tirx.Var) -> tirx.Expr:
        out_channel = oc * band.out_block + oci
        offset = (band.start(oc) + j) * band.in_block + ici - out_channel // group_outputs * group_inputs
        inside = tirx.all(offset >= 0, offset < group_inputs)
        value = weight[out_channel, tirx.max(tirx.min(offset, group_inputs - 1), 0), kh, kw]
        return tirx.Select(inside, value, tirx.const(0, weight.dtype))

    return te.compute(shape, element, name="band_weight")


def legalize_layout_transform(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    """TVM's layout_transform legalization, except for bool tensors (a comparison ConvertLayout carried into the
    blocked layout): TVM pads those with a float 0 and fails; a bijective map needs no padding at all."""
    import tvm
    from tvm import relax, te

    default = tvm.ir.Op.get("relax.layout_transform").get_attr("FLegalize")
    if str(call.args[0].ty.dtype) != "bool":
        return default(bb, call)
    index_map = call.attrs.index_map
    _, padding = index_map.non_surjective_inverse(call.args[0].ty.shape)
    pad_value = None if isinstance(padding, tvm.tirx.IntImm) and not padding.value else tvm.tirx.const(False, "bool")
    tir_func, args, _ = relax.utils.gen_call_tir_inputs(
        lambda data: te.compute(data.shape, data, name="bool_layout_transform"), call.args[0]
    )
    sch = tvm.s_tir.Schedule(tir_func)
    sch.transform_layout("bool_layout_transform", ("write", 0), index_map, pad_value)
    gvar = bb.add_func(sch.mod["main"], "bool_layout_transform")
    shape = index_map.map_shape(list(args[0].ty.shape))
    return relax.call_tir(gvar, args, [relax.TensorType(shape, "bool")])


def legalize_bijective_layout_transform(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    """A blocking layout transform without padding (NCHW → NCHW16c) as a compute over the *output* index space:
    each output element reads the input element the inverse map names. TVM's own iterates over the input and
    writes through the map, so its vectors scatter their stores (stride 16) with per-lane div/mod: a
    [1, 256, 100, 76] transform took 3.9 ms, 0.9 ms over the output. Unblocking keeps TVM's (it reads whole
    vectors of the input; over the output it would gather with stride 16: 2.4x slower)."""
    import tvm
    from tvm import te

    default = tvm.ir.Op.get("relax.layout_transform").get_attr("FLegalize")
    data = call.args[0]
    try:
        shape = [int(d) for d in data.ty.shape]
        inverse, padding = call.attrs.index_map.non_surjective_inverse(shape)
        exact = call.attrs.pad_value is None and isinstance(padding, tvm.tirx.IntImm) and not padding.value
    except Exception:  # symbolic shapes, maps without an inverse: TVM's own
        exact = False
    out_shape = [int(d) for d in call.attrs.index_map.map_shape(shape)] if exact else []
    if not exact or len(out_shape) <= len(shape):  # unblocking reads whole input vectors already: TVM's own
        return default(bb, call)

    def compute(x: te.Tensor) -> te.Tensor:
        return te.compute(out_shape, lambda *i: x(*inverse.map_indices(list(i))), name="te_layout_transform")

    return bb.call_te(compute, data, primfunc_name_hint="te_layout_transform")


def to_blocked(x: relax.Expr, block: int) -> relax.Expr:
    """NCHW → NCHW{block}c. `cancel_layout_round_trips` removes it where the producer is blocked already."""
    from tvm import relax

    return relax.op.layout_transform(x, index_map=lambda n, c, h, w: (n, c // block, h, w, c % block))


def from_blocked(x: relax.Expr, block: int) -> relax.Expr:
    from tvm import relax

    return relax.op.layout_transform(x, index_map=lambda n, cb, h, w, cl: (n, cb * block + cl, h, w))


def cancel_layout_round_trips(mod: tvm.IRModule) -> tvm.IRModule:
    """layout_transform(layout_transform(x)) that maps every index back to itself → x.

    The binary kernels read and write the blocked layout; after ConvertLayout has blocked the float ops around
    them, the transform pairs between the two meet back to back and cancel."""
    from tvm import relax

    def cancel(mutator: relax.PyExprMutator, call: relax.Call) -> relax.Expr | None:
        inner = _bound_layout_transform(mutator, call.args[0]) if _is_layout_transform(call) else None
        return inner.args[0] if inner is not None and _round_trip_is_identity(inner, call) else None

    return relax.transform.DeadCodeElimination()(rewrite_calls(mod, cancel))


def _is_layout_transform(call: relax.Call) -> bool:
    import tvm

    return isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.layout_transform"


def _bound_layout_transform(mutator: relax.PyExprMutator, value: relax.Expr) -> relax.Call | None:
    from tvm import relax

    if isinstance(value, relax.Var):
        value = mutator.lookup_binding(value)
    if isinstance(value, relax.Call) and _is_layout_transform(value) and value.attrs.pad_value is None:
        return value
    return None


def _round_trip_is_identity(inner: relax.Call, outer: relax.Call) -> bool:
    """Both maps are affine div/mod maps: checking corners and a spread of points of the input decides it."""
    if outer.attrs.pad_value is not None:
        return False
    try:
        shape = [int(d) for d in inner.args[0].ty.shape]
        if [int(d) for d in outer.ty.shape] != shape:
            return False
    except (AttributeError, TypeError, ValueError):
        return False
    rng = np.random.default_rng(0)
    points = [[0] * len(shape), [d - 1 for d in shape]] + [[int(rng.integers(d)) for d in shape] for _ in range(32)]
    for point in points:
        middle = [int(v) for v in inner.attrs.index_map.map_indices(point)]
        if [int(v) for v in outer.attrs.index_map.map_indices(middle)] != point:
            return False
    return True
