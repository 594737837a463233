"""MatMul by a constant weight whose column count no vector width divides (a text recognizer's 6,625 classes) as a
matmul by the weight padded with zero columns to whole vectors, then a slice of the real columns.

The register-tiled schedule needs whole vectors of columns; without it such a matmul ran as plain loops (PP-OCRv4's
recognizer head: 15.9 of its 29 ms at 16 GFLOP/s). The zero columns only produce outputs that the slice drops, and
every kept column is the same sum as before, so the result is exact.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bitc.codegen.relax.rewrite import constant_matmul_weight, declared_out_dtype, rewrite_calls

if TYPE_CHECKING:
    import tvm
    from tvm import relax

MIN_COLUMNS = 64  # below this the padding is a large share of the work and plain loops are cheap anyway
MAX_PAD_SHARE = 0.25  # at most this share of extra columns


def pad_matmul_columns(mod: tvm.IRModule, lanes: int) -> tvm.IRModule:
    """Every matmul(x, W) with a constant 2-D W whose columns `lanes` and 8 do not divide: padded, then sliced."""
    return rewrite_calls(mod, lambda mutator, call: _padded(mutator, call, lanes))


def _padded(mutator: relax.PyExprMutator, call: relax.Call, lanes: int) -> relax.Expr | None:
    import numpy as np
    from tvm import relax

    weight = constant_matmul_weight(mutator, call)
    if weight is None:
        return None
    data_ndim = getattr(call.args[0].ty, "ndim", -1)
    values = weight.value.numpy()
    columns = values.shape[1]
    if data_ndim < 2 or columns < MIN_COLUMNS or columns % 8 == 0:
        return None
    padded_columns = -(-columns // lanes) * lanes
    if (padded_columns - columns) / columns > MAX_PAD_SHARE:
        return None
    padded = np.zeros((values.shape[0], padded_columns), dtype=values.dtype)
    padded[:, :columns] = values
    out_dtype = declared_out_dtype(call.attrs)
    product = mutator.builder_.emit(relax.op.matmul(call.args[0], relax.const(padded), out_dtype=out_dtype))
    return relax.op.strided_slice(product, axes=[data_ndim - 1], begin=[0], end=[columns])
