"""Vectorisable exp / erf / tanh / sigmoid / softmax for float32 on CPUs.

TVM lowers `exp`, `erf` and `tanh` to LLVM intrinsics that LLVM turns into one libm call per lane, so a
vectorised softmax or GELU runs at scalar libm speed (softmax was 13% of MiniLM, the GELU epilogue doubled its
matmul's time). TOPI's `fast_*` versions are Cephes / Eigen polynomials, like the ones onnxruntime's MLAS kernels
use: plain arithmetic, within a few float ulps, and they vectorise. Other dtypes keep TVM's own legalization.
The polynomials clamp their input, which would turn NaN into a number and exp(inf) into a finite float, so each
result goes through a select that restores what IEEE (and onnxruntime) give for NaN and the infinities.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from bitc.codegen.relax import nan_semantics

if TYPE_CHECKING:
    from tvm import relax, te, tirx

_FAST_DTYPES = ("float32", "float16")


def legalize_map() -> dict[str, nan_semantics.Legalizer]:
    """LegalizeOps overrides: op name → hook (bb, call) → expr."""
    from tvm import topi

    return {
        "relax.exp": _unary(exp, "exp"),
        "relax.erf": _unary(lambda x: _keep_nan(topi.fast_erf(x), x), "erf"),
        "relax.tanh": _unary(lambda x: _keep_nan(topi.fast_tanh(x), x), "tanh"),
        "relax.sigmoid": _unary(sigmoid, "sigmoid"),
        "relax.nn.softmax": _legalize_softmax,
    }


def _unary(fast: Callable[[te.Tensor], te.Tensor], name: str) -> nan_semantics.Legalizer:
    def legalize(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
        if not _is_fast_dtype(call):
            return _default(bb, call)
        return bb.call_te(fast, call.args[0], primfunc_name_hint=f"fast_{name}")

    return legalize


def exp(data: te.Tensor, can_overflow: bool = True) -> te.Tensor:
    """The polynomial exp with IEEE results outside its clamp: NaN stays NaN, exp(x) = inf past the largest
    float's log (exp(inf) = inf), exp(-inf) = 0. `can_overflow=False` (arguments known to be <= 0 or NaN, as in
    softmax) drops the overflow test: one compare and select less per element, same results."""
    from tvm import te, tirx, topi

    fast = topi.fast_exp(data)
    dtype = data.dtype
    overflow = tirx.const(math.log(_largest(dtype)), dtype)
    inf, zero = nan_semantics.infinity(dtype), tirx.const(0, dtype)

    def element(*i: tirx.Var) -> tirx.Expr:
        x = data(*i)
        finite = tirx.Select(x == -inf, zero, fast(*i))
        if can_overflow:
            finite = tirx.Select(overflow < x, inf, finite)
        return tirx.Select(nan_semantics.not_nan(x, dtype), finite, x)

    return te.compute(data.shape, element, name="exp_ieee", tag="elemwise")


def sigmoid(data: te.Tensor) -> te.Tensor:
    """1 / (1 + exp(-x)) over the polynomial exp (SiLU's gate, SE blocks): exp(-x) overflows to inf for very
    negative x, giving 0; +inf gives 1; NaN stays NaN."""
    from tvm import te, tirx

    negated = te.compute(data.shape, lambda *i: -data(*i), name="negated", tag="elemwise")
    powers = exp(negated)
    one = tirx.const(1, data.dtype)
    return te.compute(data.shape, lambda *i: one / (powers(*i) + one), name="sigmoid_fast", tag="elemwise")


def _keep_nan(result: te.Tensor, data: te.Tensor) -> te.Tensor:
    """`result`, except NaN where the input is NaN (the polynomials saturate at ±1 for ±inf already)."""
    from tvm import te, tirx

    return te.compute(
        data.shape,
        lambda *i: tirx.Select(nan_semantics.not_nan(data(*i), data.dtype), result(*i), data(*i)),
        name="nan_kept",
        tag="elemwise",
    )


def _largest(dtype: str) -> float:
    import numpy as np

    return float(np.finfo(str(dtype)).max)


def _legalize_softmax(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    if not _is_fast_dtype(call):
        return _default(bb, call)
    return bb.call_te(softmax, call.args[0], int(call.attrs.axis), primfunc_name_hint="softmax")


def softmax(data: te.Tensor, axis: int) -> te.Tensor:
    """max-subtracted softmax along `axis` with the polynomial exp (the same stages as topi.nn.softmax). float16
    is computed in float32 and rounded once, as onnxruntime does (its exp and sum in float16 were 1 ulp off)."""
    from tvm import tirx, topi

    if str(data.dtype) == "float16":
        return topi.cast(softmax(topi.cast(data, "float32"), axis), "float16")
    axis %= len(data.shape)
    if axis == len(data.shape) - 1:
        largest = _stabilizing_max(data)
    else:
        largest = nan_semantics.reduce(data, [axis], True, nan_semantics.max_reducer())
    # x - max <= 0 (a NaN or +inf in the row makes it all NaN, as in onnxruntime): exp cannot overflow
    exps = exp(topi.subtract(data, largest), can_overflow=False)
    # one division per row, then multiplies (a vector division per element costs more than the exp)
    one = tirx.const(1.0, data.dtype)
    return topi.multiply(exps, topi.divide(one, topi.sum(exps, axis=axis, keepdims=True)))


def _stabilizing_max(data: te.Tensor, lanes: int = 16, max_chunks: int = 32) -> te.Tensor:
    """Row max over the last axis, for softmax to subtract: an elementwise max across the row's vector-sized
    chunks (it vectorises), then a NaN-keeping max across lanes. One long max chain does not vectorise (LLVM
    needs no-NaNs for that) and costs a compare's latency per element.

    The chunk step is a plain `max`, which may drop a NaN: softmax needs the max only to keep exp in range, and a
    NaN anywhere in the row makes the row's sum NaN, so the whole row is NaN whatever is subtracted (as in
    onnxruntime). A NaN-keeping max reads its first operand twice; folded over the chunks, that expression
    doubled per chunk (2^8 leaves for a 128-wide row: lowering MiniLM's softmax took 60 s, a 256-wide one
    did not finish)."""
    import functools

    from tvm import te, tirx

    length = int(data.shape[-1])
    chunks = length // lanes
    row_max = nan_semantics.max_reducer()
    if length % lanes or not 1 < chunks <= max_chunks:
        return nan_semantics.reduce(data, [-1], True, row_max)
    partial = te.compute(
        (*data.shape[:-1], lanes),
        lambda *i: functools.reduce(tirx.max, [data[(*i[:-1], c * lanes + i[-1])] for c in range(chunks)]),
        name="lane_max",
    )
    return nan_semantics.reduce(partial, [-1], True, row_max)


def _is_fast_dtype(call: relax.Call) -> bool:
    return str(call.args[0].ty.dtype) in _FAST_DTYPES


def _default(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    import tvm

    return tvm.ir.Op.get(call.op.name).get_attr("FLegalize")(bb, call)
