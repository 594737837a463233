"""A channel permutation between blocked convs (ShuffleNet's channel shuffle: Reshape → Transpose → Reshape) as one
gather in the blocked layout.

ConvertLayout cannot carry the blocked layout through the 5-D Reshape/Transpose, so each shuffle became: transform
to NCHW, reshape, transpose, reshape, transform back to blocked (four passes over the tensor). Any chain of
reshapes and transposes between two layout transforms is a fixed map from output to input elements; the map is
computed here on an index tensor, and where it only moves channels (every output pixel reads the same pixel of
the input), the chain is replaced by `out[n, cb, h, w, c] = x[n, block[cb, c], h, w, lane[cb, c]]`: the same values,
moved once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from bitc.codegen.relax.rewrite import bound_value, rewrite_calls, static_shape

if TYPE_CHECKING:
    import tvm
    from tvm import relax, te

MAX_ELEMENTS = 1 << 24  # the index tensor the map is computed on (int64) stays under 128 MiB
_MOVES = ("relax.reshape", "relax.permute_dims")


def gather_channel_permutations(mod: tvm.IRModule) -> tvm.IRModule:
    """Replace every blocked → NCHW → (reshape / permute_dims)* → blocked chain that only permutes channels."""
    from tvm import relax

    return relax.transform.DeadCodeElimination()(rewrite_calls(mod, _gather))


def _gather(mutator: relax.PyExprMutator, call: relax.Call) -> relax.Expr | None:
    from tvm import relax

    if not _is_op(call, "relax.layout_transform") or call.attrs.pad_value is not None:
        return None
    chain: list[relax.Call] = []
    value = bound_value(mutator, call.args[0])
    while isinstance(value, relax.Call) and _is_op(value, *_MOVES):
        chain.append(value)
        value = bound_value(mutator, value.args[0])
    if not chain or not isinstance(value, relax.Call) or not _is_op(value, "relax.layout_transform"):
        return None
    if value.attrs.pad_value is not None:
        return None
    source = value.args[0]
    shape = static_shape(source)
    out_shape = static_shape(call)
    if shape is None or out_shape is None or len(shape) != 5 or len(out_shape) != 5 or np.prod(shape) > MAX_ELEMENTS:
        return None
    try:
        indices = _element_map(shape, value, list(reversed(chain)), call)
    except Exception:  # a map this cannot evaluate (symbolic, unsupported attrs) keeps the chain as it is
        return None
    tables = _channel_tables(indices, shape, out_shape)
    if tables is None:
        return None
    blocks, lanes = tables
    return mutator.builder_.call_te(
        _blocked_gather,
        source,
        relax.const(blocks),
        relax.const(lanes),
        primfunc_name_hint="channel_gather",
    )


def _element_map(shape: list[int], first: relax.Call, moves: list[relax.Call], last: relax.Call) -> np.ndarray:
    """For each element of the chain's output, the flat index of the input element it holds."""
    import tvm

    index = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
    index = first.attrs.index_map.map_tensor(tvm.runtime.tensor(index)).numpy()
    for move in moves:
        if _is_op(move, "relax.reshape"):
            target = static_shape(move)
            if target is None:
                raise ValueError("symbolic reshape")
            index = index.reshape(target)
        else:
            axes = move.attrs.axes
            index = np.transpose(index, None if axes is None else [int(a) for a in axes])
    return last.attrs.index_map.map_tensor(tvm.runtime.tensor(np.ascontiguousarray(index))).numpy()


def _channel_tables(indices: np.ndarray, shape: list[int], out_shape: list[int]) -> tuple[np.ndarray, ...] | None:
    """(block, lane) tables [C/B', B'] when every output element reads the input at its own n, h, w; else None."""
    if indices.shape != tuple(out_shape) or out_shape[0] != shape[0] or out_shape[2:4] != shape[2:4]:
        return None
    n, block, h, w, lane = np.unravel_index(indices, shape)
    grid = np.indices(out_shape)
    if not (np.array_equal(n, grid[0]) and np.array_equal(h, grid[2]) and np.array_equal(w, grid[3])):
        return None
    blocks, lanes = block[0, :, 0, 0, :], lane[0, :, 0, 0, :]
    if not (np.all(block == blocks[None, :, None, None, :]) and np.all(lane == lanes[None, :, None, None, :])):
        return None
    return blocks.astype(np.int32), lanes.astype(np.int32)


def _blocked_gather(data: te.Tensor, blocks: te.Tensor, lanes: te.Tensor) -> te.Tensor:
    from tvm import te

    n, _, h, w, _ = data.shape
    out_blocks, out_lanes = blocks.shape
    return te.compute(
        (n, out_blocks, h, w, out_lanes),
        lambda i, b, y, x, c: data[i, blocks[b, c], y, x, lanes[b, c]],
        name="channel_gather",
    )


def _is_op(call: relax.Call, *names: str) -> bool:
    import tvm

    return isinstance(call.op, tvm.ir.Op) and call.op.name in names
