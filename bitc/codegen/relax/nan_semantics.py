"""Float max / min / relu / clip and max / min reductions that propagate NaN and keep infinities (IEEE, ONNX).

TVM lowers a float `max(a, b)` to a compare and select (LLVM) or `fmaxf` (CUDA), both of which return the other
operand when one is NaN, so `Relu(NaN)` gave 0 and `Max(NaN, 1)` gave 1; its max / min reductions and max-pooling
start from the lowest / highest *finite* float, so a row of -inf reduced to -FLT_MAX. onnxruntime and the ONNX
reference return NaN and -inf there. These legalizations express each op as selects whose false branch is the
operand itself, so a NaN falls through at the cost of one extra compare, and reductions start from ±inf.
Integer (and bool) tensors keep TVM's own legalizations: they have neither NaN nor infinities.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tvm import relax, te, tirx

Legalizer = Callable[["relax.BlockBuilder", "relax.Call"], "relax.Expr"]
LANE_PARTIAL, LANE_TAIL = "lane_partial", "lane_tail"  # block names cpu.schedules gives a lane-wise schedule


def legalize_map() -> dict[str, Legalizer]:
    """LegalizeOps overrides: op name → hook (bb, call) → expr; non-float calls go to TVM's legalization."""
    return {
        "relax.nn.relu": _for_floats(_legalize_relu),
        "relax.maximum": _for_floats(_binary(maximum)),
        "relax.minimum": _for_floats(_binary(minimum)),
        "relax.clip": _for_floats(_legalize_clip),
        "relax.max": _for_floats(_reduction(max_reducer)),
        "relax.min": _for_floats(_reduction(min_reducer)),
        "relax.nn.max_pool2d": _for_floats(_legalize_max_pool2d),
    }


def is_float(dtype: Any) -> bool:
    return str(dtype).startswith(("float", "bfloat"))


# ---- scalar expressions -------------------------------------------------------------------------------------


def maximum(a: tirx.Expr, b: tirx.Expr | float, dtype: str | None = None) -> tirx.Expr:
    """max(a, b), NaN if either is: `a < b ? b : a` keeps a NaN `a`; a NaN `b` needs its own test (skipped for
    a constant bound, so ReLU6 / Clip cost one compare and one select, as before)."""
    from tvm import tirx

    picked = tirx.Select(a < b, b, a)
    return picked if _is_number(b) else tirx.Select(not_nan(b, dtype), picked, b)


def minimum(a: tirx.Expr, b: tirx.Expr | float, dtype: str | None = None) -> tirx.Expr:
    """min(a, b), NaN if either is (see `maximum`)."""
    from tvm import tirx

    picked = tirx.Select(b < a, b, a)
    return picked if _is_number(b) else tirx.Select(not_nan(b, dtype), picked, b)


def not_nan(x: tirx.Expr | float, dtype: str | None = None) -> tirx.Expr:
    """True unless x is NaN, as `x >= -inf`: TVM's simplifier folds `x != x` to false, and `isnan` stops its
    vectorizer (the loop falls back to scalar gathers, 5x slower softmax); a compare vectorizes."""
    return x >= infinity(dtype or str(x.ty), -1)


def _is_number(expr: tirx.Expr | float) -> bool:
    """A constant that is not NaN: comparing with it needs no NaN test."""
    import math

    from tvm import tirx

    return isinstance(expr, tirx.FloatImm | tirx.IntImm) and not math.isnan(float(expr.value))


def infinity(dtype: str, sign: int = 1) -> tirx.Expr:
    from tvm import tirx

    return tirx.const(sign * float("inf"), dtype)


def max_reducer() -> Callable[..., tirx.Expr]:
    """A max comm_reducer starting at -inf that keeps a NaN once seen (in either operand: partial results from
    split reductions combine with it too)."""
    from tvm import te

    return te.comm_reducer(lambda acc, value: maximum(acc, value), lambda dtype: infinity(dtype, -1), name="nan_max")


def min_reducer() -> Callable[..., tirx.Expr]:
    """A min comm_reducer starting at +inf that keeps a NaN once seen."""
    from tvm import te

    return te.comm_reducer(lambda acc, value: minimum(acc, value), lambda dtype: infinity(dtype), name="nan_min")


# ---- TE computes ----------------------------------------------------------------------------------------------


def relu(data: te.Tensor) -> te.Tensor:
    """`x < 0 ? 0 : x`: a NaN compares false and passes through; still one compare and a select (or a max
    instruction) per lane, so it fuses into a conv's write-back as before."""
    from tvm import te, tirx

    zero = tirx.const(0, data.dtype)
    return te.compute(
        data.shape, lambda *i: tirx.Select(data(*i) < zero, zero, data(*i)), name="compute", tag="elemwise"
    )


def broadcast_binary(fn: Callable[..., tirx.Expr], a: te.Tensor, b: te.Tensor | float, name: str) -> te.Tensor:
    """`fn` elementwise over numpy-broadcast tensors (either may be a scalar PrimExpr)."""
    from tvm import te

    shapes = [list(x.shape) if isinstance(x, te.Tensor) else [] for x in (a, b)]
    shape = _broadcast_shape(*shapes)
    dtype = str(a.dtype)
    return te.compute(
        shape, lambda *i: fn(_element(a, i, shape), _element(b, i, shape), dtype), name=name, tag="broadcast"
    )


def _broadcast_shape(a: Sequence[Any], b: Sequence[Any]) -> list[Any]:
    rank = max(len(a), len(b))
    a = [1] * (rank - len(a)) + list(a)
    b = [1] * (rank - len(b)) + list(b)
    return [y if _is_one(x) else x for x, y in zip(a, b, strict=True)]


def _element(x: te.Tensor | tirx.Expr | float, index: Sequence[tirx.Var], shape: Sequence[Any]) -> tirx.Expr | float:
    """x at the broadcast output index: trailing axes aligned, axes broadcast from size 1 read at 0. An axis of
    size 1 in the output too keeps its index variable: fused with a producer that reads it by that variable, one
    index form per element keeps the region analysis of the fused epilogue exact."""
    from tvm import te

    if not isinstance(x, te.Tensor):
        return x
    tail = index[len(index) - len(x.shape) :]
    out = shape[len(shape) - len(x.shape) :]
    return x(*[0 if _is_one(dim) and not _is_one(o) else i for dim, i, o in zip(x.shape, tail, out, strict=True)])


def _is_one(dim: int | tirx.Expr) -> bool:
    from tvm import tirx

    return isinstance(dim, int | tirx.IntImm) and int(dim) == 1


def _as_dtype(bound: tirx.Expr | float, dtype: str) -> tirx.Expr:
    """A clip bound in the data's dtype; the FFI hands constant bounds over as Python numbers."""
    from tvm import tirx

    if isinstance(bound, int | float):
        return tirx.const(bound, dtype)
    return bound if bound.dtype == dtype else tirx.Cast(dtype, bound)


def clip(data: te.Tensor, low: tirx.Expr | float, high: tirx.Expr | float) -> te.Tensor:
    """`x < lo ? lo : (x > hi ? hi : x)`: NaN passes through, as in ONNX Clip."""
    from tvm import te, tirx

    low, high = (_as_dtype(bound, data.dtype) for bound in (low, high))

    def element(*i: tirx.Var) -> tirx.Expr:
        x = data(*i)
        return tirx.Select(x < low, low, tirx.Select(high < x, high, x))

    return te.compute(data.shape, element, name="compute", tag="elemwise")


def reduce(data: te.Tensor, axis: Sequence[int] | None, keepdims: bool, reducer: Callable[..., tirx.Expr]) -> te.Tensor:
    """`reducer` over `axis` (None: all axes), keeping reduced axes as size 1 if asked (topi.max's contract)."""
    from tvm import te

    rank = len(data.shape)
    axes = _reduced_axes(rank, axis)
    reduce_axes = {a: te.reduce_axis((0, data.shape[a]), f"k{a}") for a in axes}

    def element(*i: tirx.Var) -> tirx.Expr:
        kept = _kept_index(i, axes, keepdims)
        return reducer(data(*_data_index(kept, reduce_axes, rank)), axis=list(reduce_axes.values()))

    return te.compute(_out_shape(data.shape, axes, keepdims), element, name=f"{data.op.name}_red", tag="comm_reduce")


def lanewise_reduce(
    data: te.Tensor,
    axis: Sequence[int] | None,
    keepdims: bool,
    reducer: Callable[[], Callable[..., tirx.Expr]],
    lanes: int = 16,
) -> te.Tensor:
    """`reduce` for a reduction that includes the last (contiguous) axis, in vector-sized steps: a vector of
    partial results combined chunk by chunk along the row (one vector compare-and-select per chunk), then across
    its lanes and the row's tail. One chain of scalar selects does not vectorise (LLVM would need no-NaNs) and
    costs a compare's latency per element: 20x slower. Any order gives the same max / min, NaN and ±inf included.
    `cpu.schedules.schedule_lanewise_reduction` finds the stages by their names."""
    from tvm import te, tirx

    rank = len(data.shape)
    axes = _reduced_axes(rank, axis)
    length = data.shape[-1]
    if rank - 1 not in axes or not _is_static(length) or int(length) < 2 * lanes:
        return reduce(data, axis, keepdims, reducer())
    outer = {a: te.reduce_axis((0, data.shape[a]), f"k{a}") for a in axes[:-1]}
    partial = _lane_partial(data, outer, lanes, reducer())
    tail = _row_tail(data, outer, int(length) // lanes * lanes, reducer()) if int(length) % lanes else None
    lane = te.reduce_axis((0, lanes + (tail is not None)), "lane")
    combine = reducer()

    def element(*i: tirx.Var) -> tirx.Expr:
        kept = _kept_index(i, axes, keepdims)
        if tail is None:
            return combine(partial(*kept, lane), axis=[lane])
        # if_then_else, not Select: a Select reads both operands, and partial has no lane `lanes`
        return combine(tirx.if_then_else(lane < lanes, partial(*kept, lane), tail(*kept)), axis=[lane])

    return te.compute(_out_shape(data.shape, axes, keepdims), element, name="lane_red", tag="comm_reduce")


def _lane_partial(
    data: te.Tensor, outer: dict[int, tirx.IterVar], lanes: int, reducer: Callable[..., tirx.Expr]
) -> te.Tensor:
    """[kept axes..., lanes]: lane l reduces elements l, l + lanes, l + 2·lanes, … of the rows (all of `outer`)."""
    from tvm import te

    rank = len(data.shape)
    chunk = te.reduce_axis((0, int(data.shape[-1]) // lanes), "chunk")
    kept_shape = [dim for a, dim in enumerate(data.shape[:-1]) if a not in outer]

    def element(*i: tirx.Var) -> tirx.Expr:
        index = _data_index(i[:-1], outer, rank - 1)
        return reducer(data(*index, chunk * lanes + i[-1]), axis=[*outer.values(), chunk])

    return te.compute([*kept_shape, lanes], element, name=LANE_PARTIAL)


def _row_tail(
    data: te.Tensor, outer: dict[int, tirx.IterVar], start: int, reducer: Callable[..., tirx.Expr]
) -> te.Tensor:
    """[kept axes...]: the reduction of the rows' elements from `start` on (fewer than a vector's lanes)."""
    from tvm import te

    rank = len(data.shape)
    step = te.reduce_axis((0, int(data.shape[-1]) - start), "t")
    kept_shape = [dim for a, dim in enumerate(data.shape[:-1]) if a not in outer]

    def element(*i: tirx.Var) -> tirx.Expr:
        return reducer(data(*_data_index(i, outer, rank - 1), start + step), axis=[*outer.values(), step])

    return te.compute(kept_shape, element, name=LANE_TAIL)


def _reduced_axes(rank: int, axis: Sequence[int] | None) -> list[int]:
    return sorted({int(a) % rank for a in axis} if axis is not None else range(rank))


def _out_shape(shape: Sequence[Any], axes: Sequence[int], keepdims: bool) -> list[Any]:
    return [1 if a in axes else dim for a, dim in enumerate(shape) if keepdims or a not in axes]


def _kept_index(index: Sequence[Any], axes: Sequence[int], keepdims: bool) -> list[Any]:
    """The output index without its reduced axes (those are size 1 with keepdims)."""
    return [i for a, i in enumerate(index) if a not in axes] if keepdims else list(index)


def _data_index(kept: Sequence[Any], reduce_axes: dict[int, tirx.IterVar], rank: int) -> list[Any]:
    """The data index of the first `rank` axes: reduce variables on reduced axes, `kept` (in order) elsewhere."""
    rest = iter(kept)
    return [reduce_axes[a] if a in reduce_axes else next(rest) for a in range(rank)]


def max_pool2d(
    data: te.Tensor,
    out_shape: Sequence[Any],
    pool_size: Sequence[int],
    strides: Sequence[int],
    dilation: Sequence[int],
    padding: Sequence[int],
    layout: str,
) -> te.Tensor:
    """Max over each window, padding with -inf (ONNX ignores padding) and a NaN-keeping reducer; `layout` is any
    of TVM's (NCHW, NHWC, NCHW16c: the blocked layout ConvertLayout carries through pooling)."""
    from tvm import te, topi

    axes = [c for c in layout if c.isalpha()]
    h_axis, w_axis = axes.index("H"), axes.index("W")
    kernel = [int(k) for k in pool_size]
    stride = [int(s) for s in strides]
    dil = [int(d) for d in dilation]
    before = [int(padding[0]), int(padding[1])]
    after = [int(padding[2]), int(padding[3])]
    for n, axis in enumerate((h_axis, w_axis)):  # ceil_mode windows may end past the bottom / right padding
        needed = (int(out_shape[axis]) - 1) * stride[n] + (kernel[n] - 1) * dil[n] + 1
        after[n] = max(after[n], needed - before[n] - int(data.shape[axis]))
    if any(before) or any(after):
        pad_before = [0] * len(data.shape)
        pad_after = [0] * len(data.shape)
        pad_before[h_axis], pad_before[w_axis] = before
        pad_after[h_axis], pad_after[w_axis] = after
        data = topi.nn.pad(data, pad_before, pad_after, pad_value=infinity(data.dtype, -1), name="pad_temp")
    rh = te.reduce_axis((0, kernel[0]), "rv0")
    rw = te.reduce_axis((0, kernel[1]), "rv1")
    reducer = max_reducer()

    def element(*i: tirx.Var) -> tirx.Expr:
        index = list(i)
        index[h_axis] = i[h_axis] * stride[0] + rh * dil[0]
        index[w_axis] = i[w_axis] * stride[1] + rw * dil[1]
        return reducer(data(*index), axis=[rh, rw])

    return te.compute(list(out_shape), element, name="pool_max", tag="pool_max")


# ---- LegalizeOps hooks ----------------------------------------------------------------------------------------


def _for_floats(legalize: Legalizer) -> Legalizer:
    """`legalize` for float tensors; TVM's own legalization for the rest."""

    def hook(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
        if not is_float(call.args[0].ty.dtype):
            return _default(bb, call)
        return legalize(bb, call)

    return hook


def _legalize_relu(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    return bb.call_te(relu, call.args[0], primfunc_name_hint="relu")


def _binary(fn: Callable[..., tirx.Expr]) -> Legalizer:
    def legalize(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
        from tvm.relax.transform.legalize_ops.common import _try_convert_to_scalar_const

        a, b = call.args[0], _try_convert_to_scalar_const(call.args[1])
        name = call.op.name.rsplit(".", 1)[-1]
        return bb.call_te(lambda x, y: broadcast_binary(fn, x, y, name), a, b, primfunc_name_hint=name)

    return legalize


def _legalize_clip(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    return bb.call_te(clip, call.args[0], call.args[1].value, call.args[2].value, primfunc_name_hint="clip")


def _reduction(reducer: Callable[[], Callable[..., tirx.Expr]]) -> Legalizer:
    def legalize(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
        if any(int(dim) == 0 for dim in call.args[0].ty.shape or [] if _is_static(dim)):
            return _default(bb, call)  # an empty reduction: TVM's legalization fills in the identity
        axis = call.attrs.axis
        name = call.op.name.rsplit(".", 1)[-1]
        keepdims = bool(call.attrs.keepdims)
        return bb.call_te(lambda x: lanewise_reduce(x, axis, keepdims, reducer), call.args[0], primfunc_name_hint=name)

    return legalize


def _is_static(dim: int | tirx.Expr) -> bool:
    from tvm import tirx

    return isinstance(dim, int | tirx.IntImm)


def _legalize_max_pool2d(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    attrs = call.attrs
    if attrs.out_layout != attrs.layout or call.ty.shape is None:
        return _default(bb, call)
    return bb.call_te(
        max_pool2d,
        call.args[0],
        list(call.ty.shape),
        attrs.pool_size,
        attrs.strides,
        attrs.dilation,
        attrs.padding,
        str(attrs.layout),
        primfunc_name_hint="max_pool2d",
    )


def _default(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    import tvm

    return tvm.ir.Op.get(call.op.name).get_attr("FLegalize")(bb, call)
