"""Float GEMV (one activation row × a constant weight matrix) over weights re-blocked to stream from memory.

A decode step multiplies one row by every weight matrix once: the weights come from DRAM and the step is as fast
as they stream. In the [K, N] layout a tile of output columns reads a short piece of every row (N·4 bytes apart),
which the hardware prefetchers follow poorly (SmolLM2's decode ran its MatMuls at ~11 GB/s). Re-blocked at
compile time to [N / 64, K, 64], each tile of 64 outputs reads one contiguous block, front to back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from bitc.codegen.registry import kernel_attrs

TILE = 64  # output columns per tile: four 16-lane accumulators
LANES = 16
MIN_WEIGHTS = 1 << 16  # smaller matrices stay in cache; the ordinary schedule is as fast there
PARALLEL_MIN_WEIGHTS = 1 << 20


def is_streamed_gemv(node: ir.Node) -> bool:
    """A standard MatMul of one activation row ([1, …, 1, K]) by a constant float32 [K, N] matrix."""
    if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
        return False
    x, weights = node.inputs
    if x is None or weights is None or weights.const_value is None or x.shape is None or x.dtype is None:
        return False
    if len(weights.shape) != 2 or weights.dtype != ir.DataType.FLOAT or x.dtype != ir.DataType.FLOAT:
        return False
    try:
        rows = int(np.prod([int(d) for d in x.shape[:-1]]))
    except (TypeError, ValueError):
        return False
    k, n = (int(d) for d in weights.shape)
    return rows == 1 and int(x.shape[-1]) == k and k * n >= MIN_WEIGHTS


def block_weights(weights: np.ndarray) -> np.ndarray:
    """[K, N] → [⌈N/64⌉, K, 64] (columns past N are zero)."""
    k, n = weights.shape
    tiles = -(-n // TILE)
    padded = np.zeros((k, tiles * TILE), np.float32)
    padded[:, :n] = weights
    return np.ascontiguousarray(padded.reshape(k, tiles, TILE).transpose(1, 0, 2))


def gemv(in_features: int, tiles: int, num_cores: int) -> tirx.PrimFunc:
    """x [1, K], weights [tiles, K, 64] → y [1, tiles·64]; tiles in parallel when the matrix is large."""
    from tvm.script import tirx as T

    K = in_features
    chunks = TILE // LANES
    loop = T.parallel if num_cores > 1 and tiles * TILE * K >= PARALLEL_MIN_WEIGHTS else T.serial

    @T.prim_func
    def kernel(
        x: T.Buffer((1, K), "float32"),
        weights: T.Buffer((tiles, K, TILE), "float32"),
        y: T.Buffer((1, tiles * TILE), "float32"),
    ):
        T.func_attr({"tir.noalias": True})
        for tile in loop(tiles):
            acc = T.alloc_buffer((TILE,), "float32")  # small "global" buffer: on the stack, kept in registers
            for c in T.unroll(chunks):
                acc[T.ramp(c * LANES, 1, LANES)] = T.Broadcast(T.float32(0), LANES)
            for k in T.serial(K):
                for c in T.unroll(chunks):
                    acc[T.ramp(c * LANES, 1, LANES)] = (
                        acc[T.ramp(c * LANES, 1, LANES)]
                        + T.Broadcast(x[0, k], LANES) * weights[tile, k, T.ramp(c * LANES, 1, LANES)]
                    )
            for c in T.unroll(chunks):
                y[0, T.ramp(tile * TILE + c * LANES, 1, LANES)] = acc[T.ramp(c * LANES, 1, LANES)]

    attrs = kernel_attrs("float_gemv", scheduled=True)
    return kernel.without_attr("global_symbol").with_attr(attrs)


# imported last, so that no line above moves: the kernel's source lines end up in the compiled artifacts
if TYPE_CHECKING:
    from tvm import tirx
