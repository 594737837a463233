"""Small edits of an onnx-ir graph that the frontend, the passes and codegen share: read a constant, add one,
reroute a value (keeping graph-output names), give Constant nodes the tensor form."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir


def constant(value: ir.Value | None) -> np.ndarray | None:
    if value is None or value.const_value is None:
        return None
    return value.const_value.numpy()


# Constant's attribute forms other than a tensor, with the dtype each one's value has.
CONSTANT_ATTRIBUTES = {
    "value_float": np.float32, "value_floats": np.float32, "value_int": np.int64, "value_ints": np.int64,
}  # fmt: skip


def attribute_constant(node: ir.Node) -> np.ndarray | None:
    """The array a Constant node written as value_int(s) / value_float(s) holds (None: another form)."""
    name = next((name for name in CONSTANT_ATTRIBUTES if name in node.attributes), None)
    if name is None:
        return None
    return np.asarray(node.attributes[name].value, dtype=CONSTANT_ATTRIBUTES[name])


def lower_constant_attributes(model: ir.Model) -> int:
    """Rewrite the main graph's Constant(value_int(s)/value_float(s)) nodes as Constant(value=tensor), in place
    (TVM's importer reads only `value`; onnxscript's constant folder writes Shape and Size results the other way);
    returns how many."""
    count = 0
    for node in model.graph:
        array = attribute_constant(node) if node.op_type == "Constant" else None
        if array is None:
            continue
        for name in CONSTANT_ATTRIBUTES:
            node.attributes.pop(name, None)
        node.attributes["value"] = ir.AttrTensor("value", ir.tensor(array))
        count += 1
    return count


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


def restore_output_names(graph: ir.Graph, names: list[str]) -> bool:
    """Give the graph's outputs back the names they had (`names`, in order); returns whether any changed.

    The artifact's outputs are looked up by name, so a pass that renames a graph output (onnx-ir's or
    onnxscript's rewriters can, when they reroute a value) would make a model answer under another name. The value
    takes its name back (whatever took the name moves aside); a graph input, an initializer or a value that is two
    outputs gets an Identity under the old name instead."""
    if [value.name for value in graph.outputs] == list(names):
        return False
    taken = {value.name for value in graph.inputs} | set(graph.initializers)
    taken |= {out.name for node in graph for out in node.outputs}
    changed = False
    for index, (value, name) in enumerate(zip(graph.outputs, names, strict=True)):
        if value.name == name:
            continue
        changed = True
        if name in taken:
            _rename_holder(graph, name, value)
        shared = sum(out is value for out in graph.outputs) > 1
        if not shared and not value.is_graph_input() and not value.is_initializer():
            value.name = name
            continue
        node = ir.node("Identity", [value], num_outputs=1)
        node.outputs[0].name, node.outputs[0].shape, node.outputs[0].type = name, value.shape, value.type
        graph.append(node)
        graph.outputs[index] = node.outputs[0]
    return changed


def _rename_holder(graph: ir.Graph, name: str, keep: ir.Value) -> None:
    """Move the value now called `name` (a node output or an initializer, never `keep`) to a fresh name, so a
    graph output can take its name back."""
    values = [out for node in graph for out in node.outputs] + list(graph.initializers.values())
    taken = {value.name for value in values} | {value.name for value in graph.inputs}
    for holder in [value for value in values if value.name == name and value is not keep]:
        fresh, count = f"{name}__renamed", 1
        while fresh in taken:
            fresh, count = f"{name}__renamed_{count}", count + 1
        holder.name = fresh
        taken.add(fresh)
