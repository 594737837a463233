"""The valid range of each graph input that indexes a tensor (token ids into an embedding table, ...).

The compiled kernels check every data-dependent index themselves (`bitc.codegen.relax.index_checks`), but on a GPU a
failed check can only trap, which leaves the CUDA context unusable. An input that reaches a Gather's indices
unchanged can be checked on the host before it is copied anywhere: the manifest records its range and the runtime
refuses a value outside it in one line, on every target.
"""

from __future__ import annotations

from typing import Any

import onnx_ir as ir

# Ops that pass every value of their input through unchanged (only its shape or layout changes)
_VALUE_PRESERVING = {"Identity", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Expand", "Transpose"}
# Indexing ops: which input holds the indices, and the data input's axis they index (from the `axis` attribute)
_INDEXING = {"Gather": 1, "GatherElements": 1}


def input_index_ranges(model: ir.Model) -> dict[str, dict[str, Any]]:
    """{input name: {"low", "high", "node"}} for each integer graph input whose values all reach the indices of a
    Gather/GatherElements over a static axis: low <= value < high must hold (the tightest of all its uses);
    "node" names the op, the node and the axis, for messages."""
    ranges: dict[str, dict[str, Any]] = {}
    for value in model.graph.inputs:
        if value.dtype is None or not value.dtype.is_integer():
            continue
        for node, extent in _indexed_extents(value):
            found = {
                "low": -extent,
                "high": extent,
                "node": f"{node.op_type} '{node.name}' on axis {node.attributes.get_int('axis', 0)}",
            }
            current = ranges.get(value.name)
            if current is None or found["high"] - found["low"] < current["high"] - current["low"]:
                ranges[value.name] = found
    return ranges


def _indexed_extents(value: ir.Value, depth: int = 0) -> list[tuple[ir.Node, int]]:
    """(node, extent of the axis it indexes) for every indexing use reached through value-preserving ops."""
    found = []
    for use in value.uses():
        node, index = use.node, use.idx
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type in _VALUE_PRESERVING and index == 0 and depth < 16:
            found += _indexed_extents(node.outputs[0], depth + 1)
        elif _INDEXING.get(node.op_type) == index and (extent := _axis_extent(node)) is not None:
            found.append((node, extent))
    return found


def _axis_extent(node: ir.Node) -> int | None:
    data = node.inputs[0]
    if data is None or data.shape is None:
        return None
    rank = len(data.shape)
    axis = node.attributes.get_int("axis", 0)
    if not -rank <= axis < rank:
        return None
    extent = data.shape[axis % rank]
    return int(extent) if isinstance(extent, int) else None
