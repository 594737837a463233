"""Vectorisable exp / erf / tanh / softmax for float32 on CPUs.

TVM lowers `exp`, `erf` and `tanh` to LLVM intrinsics that LLVM turns into one libm call per lane, so a
vectorised softmax or GELU runs at scalar libm speed (softmax was 13% of MiniLM, the GELU epilogue doubled its
matmul's time). TOPI's `fast_*` versions are Cephes / Eigen polynomials, like the ones onnxruntime's MLAS kernels
use: plain arithmetic, within a few float ulps, and they vectorise. Other dtypes keep TVM's own legalization.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_FAST_DTYPES = ("float32", "float16")


def legalize_map() -> dict[str, Callable[[Any, Any], Any]]:
    """LegalizeOps overrides: op name → hook (bb, call) → expr."""
    from tvm import topi

    return {
        "relax.exp": _unary(topi.fast_exp, "exp"),
        "relax.erf": _unary(topi.fast_erf, "erf"),
        "relax.tanh": _unary(topi.fast_tanh, "tanh"),
        "relax.nn.softmax": _legalize_softmax,
    }


def _unary(fast: Callable[[Any], Any], name: str) -> Callable[[Any, Any], Any]:
    def legalize(bb: Any, call: Any) -> Any:
        if not _is_fast_dtype(call):
            return _default(bb, call)
        return bb.call_te(fast, call.args[0], primfunc_name_hint=f"fast_{name}")

    return legalize


def _legalize_softmax(bb: Any, call: Any) -> Any:
    if not _is_fast_dtype(call):
        return _default(bb, call)
    return bb.call_te(softmax, call.args[0], int(call.attrs.axis), primfunc_name_hint="softmax")


def softmax(data: Any, axis: int) -> Any:
    """max-subtracted softmax along `axis` with the polynomial exp (the same stages as topi.nn.softmax)."""
    from tvm import topi

    axis %= len(data.shape)
    largest = _lanewise_max(data) if axis == len(data.shape) - 1 else topi.max(data, axis=axis, keepdims=True)
    exps = topi.fast_exp(topi.subtract(data, largest))
    # one division per row, then multiplies (a vector division per element costs more than the exp)
    return topi.multiply(exps, topi.divide(1.0, topi.sum(exps, axis=axis, keepdims=True)))


def _lanewise_max(data: Any, lanes: int = 16, max_chunks: int = 32) -> Any:
    """Row max over the last axis in two steps: an elementwise max across the row's vector-sized chunks (it
    vectorises), then a max across lanes. One long max chain does not vectorise (LLVM needs no-NaNs for that)
    and costs a compare's latency per element."""
    import functools

    from tvm import te, tirx, topi

    length = int(data.shape[-1])
    chunks = length // lanes
    if length % lanes or not 1 < chunks <= max_chunks:
        return topi.max(data, axis=-1, keepdims=True)
    partial = te.compute(
        (*data.shape[:-1], lanes),
        lambda *i: functools.reduce(tirx.Max, [data[(*i[:-1], c * lanes + i[-1])] for c in range(chunks)]),
        name="lane_max",
    )
    return topi.max(partial, axis=-1, keepdims=True)


def _is_fast_dtype(call: Any) -> bool:
    return str(call.args[0].ty.dtype) in _FAST_DTYPES


def _default(bb: Any, call: Any) -> Any:
    import tvm

    return tvm.ir.Op.get(call.op.name).get_attr("FLegalize")(bb, call)
