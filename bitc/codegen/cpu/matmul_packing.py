"""MatMul by a constant weight W [K, N] as a matmul by W packed into column panels [N / P, K, P], P the width of
the register tile (`schedules.matmul_tile_vectors` vectors).

The tile reads P columns of W for each k. Row-major W puts consecutive k a whole row (N floats) apart, so each k
touches a new cache line and the K × P panel outgrows L1 for wide layers; packed, the panel is one contiguous
stream, as MLAS packs B. MiniLM's [128, 384] × [384, 1536] matmul ran at 33 GFLOP/s unpacked and 62 packed on a
Zen 3 (onnxruntime 59). The packing moves values only, so every sum is the same sum: exact.

Only matmuls with at least two rows are packed (a one-row GEMV streams W's rows, which row-major already does), only
in single-size builds (sizes merged into one library share their weights, and a GEMV size would keep W unpacked
next to the packed copy), and only weights up to `MAX_PACKED_BYTES`: an LM head tied to its embedding table would
be stored twice (the Gather reads it row-major).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bitc.codegen.cpu.schedules import matmul_tile_vectors
from bitc.codegen.relax.rewrite import constant_matmul_weight, declared_out_dtype, rewrite_calls, static_shape

if TYPE_CHECKING:
    import tvm
    from tvm import relax, te

PACKED_MATMUL = "matmul_packed"
MAX_PACKED_BYTES = 64 << 20


def pack_matmul_weights(mod: tvm.IRModule, lanes: int) -> tvm.IRModule:
    """Every float32 matmul(x, W) with a constant 2-D W whose columns are whole vectors and x with a static row
    count of at least 2: x times W's packed panels."""
    from tvm import relax

    return relax.transform.DeadCodeElimination()(rewrite_calls(mod, lambda m, call: _packed(m, call, lanes)))


def _packed(mutator: relax.PyExprMutator, call: relax.Call, lanes: int) -> relax.Expr | None:
    import numpy as np
    from tvm import relax

    weight = constant_matmul_weight(mutator, call)
    if weight is None:
        return None
    data = call.args[0]
    shape = static_shape(data)
    if shape is None or len(shape) < 2 or shape[-2] < 2 or str(data.ty.dtype) != "float32":
        return None
    if declared_out_dtype(call.attrs) not in (None, "float32") or str(weight.ty.dtype) != "float32":
        return None
    inner, columns = (int(d) for d in weight.ty.shape)
    if shape[-1] != inner or columns % lanes or inner * columns * 4 > MAX_PACKED_BYTES:
        return None
    values = weight.value.numpy()
    panel = matmul_tile_vectors(columns // lanes, lanes >= 16) * lanes
    packed = np.ascontiguousarray(values.reshape(inner, columns // panel, panel).transpose(1, 0, 2))
    return mutator.builder_.call_te(_packed_matmul, data, relax.const(packed), primfunc_name_hint=PACKED_MATMUL)


def _packed_matmul(data: te.Tensor, panels: te.Tensor) -> te.Tensor:
    from tvm import te

    count, inner, panel = (int(d) for d in panels.shape)
    k = te.reduce_axis((0, inner), "k")
    return te.compute(
        (*data.shape[:-1], count * panel),
        lambda *i: te.sum(data[(*i[:-1], k)] * panels[i[-1] // panel, k, i[-1] % panel], axis=k),
        name="matmul",
    )
