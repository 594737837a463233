"""Small edits of an onnx-ir graph that the frontend and the passes share: read a constant, add one, reroute a
value (keeping graph-output names)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir


def constant(value: ir.Value | None) -> np.ndarray | None:
    if value is None or value.const_value is None:
        return None
    return value.const_value.numpy()


def add_initializer(graph: ir.Graph, array: np.ndarray, name: str) -> ir.Value:
    """Register a constant under `name` (suffixed with a number if that name is taken)."""
    base, count = name, 1
    while name in graph.initializers:
        name, count = f"{base}_{count}", count + 1
    array = np.ascontiguousarray(array).reshape(np.shape(array))  # ascontiguousarray makes a 0-d array 1-d
    tensor = ir.tensor(array, name=name)
    value = ir.Value(name=name, const_value=tensor, shape=ir.Shape(array.shape), type=ir.TensorType(tensor.dtype))
    graph.register_initializer(value)
    return value


def replace_output(graph: ir.Graph, old: ir.Value, new: ir.Value) -> None:
    """Route every use of `old` to `new`; a graph output keeps its name."""
    if any(value is old for value in graph.outputs):
        name = old.name
        old.name = f"{name}__replaced"
        new.name = name
    ir.convenience.replace_all_uses_with(old, new, replace_graph_outputs=True)
