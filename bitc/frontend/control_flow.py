"""Scan and Loop unrolled into the main graph: TVM's importer has neither, and with a static length the loop is
the body's nodes repeated once per step, in order.

Each step slices the scan inputs (Gather of one index removes the scan axis), copies the body's nodes with its
inputs bound to the current state and slices (values the body reads from the enclosing graph stay shared), and
the per-step scan outputs are stacked along their axes at the end. The result computes exactly what the Scan
computes, one op at a time in the same order. Opset 8's batched form (no sequence_lens) is unrolled per batch
entry too. A Loop with a constant trip count unrolls the same way: where its condition can turn false, each
step's states are kept only while every condition so far held (Where), which is what stopping does; such a Loop
with scan outputs (their length would depend on data) is left alone. Bodies with subgraphs of their own and
unrolls beyond MAX_UNROLLED_NODES are left alone too (refused later by name).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from bitc.frontend.onnx_lowering import Builder, _replace, taken_names
from bitc.frontend.tensor_lowering import constant_int

# Nodes one Scan may unroll to: beyond this the graph (and its compile time) grows without bound.
MAX_UNROLLED_NODES = 50_000


def unroll_scans(model: ir.Model) -> int:
    """Unroll every Scan and Loop of the main graph whose lengths are static (nested ones too, outermost first)."""
    opset = model.opset_imports.get("", 1)
    unrolled = 0
    for _ in range(8):  # nesting depth
        loops = [n for n in model.graph if n.op_type in ("Scan", "Loop") and n.domain in ("", "ai.onnx")]
        taken = taken_names(model.graph)
        count = 0
        for node in loops:
            lower = _lower_scan if node.op_type == "Scan" else _lower_loop
            replacements = lower(Builder(model.graph, node, opset, taken), node, opset)
            if replacements is not None:
                _replace(model.graph, node, replacements)
                count += 1
        if not count:
            break
        unrolled += count
    return unrolled


def _ints(node: ir.Node, name: str, default: list[int]) -> list[int]:
    attr = node.attributes.get(name)
    return list(attr.as_ints()) if attr is not None else default


def _lower_scan(b: Builder, node: ir.Node, opset: int) -> list[ir.Value | None] | None:
    """The unrolled Scan's outputs, or None (nothing emitted) for a form this does not unroll."""
    body_attr = node.attributes.get("body")
    if body_attr is None:
        return None
    body = body_attr.as_graph()
    if any(isinstance(a.value, ir.Graph) for n in body for a in n.attributes.values()):
        return None
    scan_count = node.attributes.get_int("num_scan_inputs", 0)
    inputs = list(node.inputs)
    batched = opset < 9  # Scan-8: [sequence_lens], then states and scan inputs with a leading batch axis
    if batched:
        if inputs and inputs[0] is not None:
            return None
        inputs = inputs[1:]
    state_count = len(inputs) - scan_count
    if scan_count < 1 or state_count < 0 or len(body.inputs) != len(inputs):
        return None
    states, scans = inputs[:state_count], inputs[state_count:]
    if any(v is None for v in states) or any(v is None or v.shape is None for v in scans):
        return None
    output_count = len(body.outputs) - state_count
    ranks = [len(v.shape) - batched for v in scans]
    in_axes = [0] * scan_count if batched else _ints(node, "scan_input_axes", [0] * scan_count)
    in_dirs = _ints(node, "directions" if batched else "scan_input_directions", [0] * scan_count)
    out_axes = [0] * output_count if batched else _ints(node, "scan_output_axes", [0] * output_count)
    out_dirs = [0] * output_count if batched else _ints(node, "scan_output_directions", [0] * output_count)
    if not all(-r <= a < r for a, r in zip(in_axes, ranks, strict=True)):
        return None
    in_axes = [a % r for a, r in zip(in_axes, ranks, strict=True)]
    out_ranks = [len(v.shape) + 1 if v.shape is not None else None for v in body.outputs[state_count:]]
    if any(a < 0 and r is None for a, r in zip(out_axes, out_ranks, strict=True)):
        return None
    out_axes = [a % r if r is not None else a for a, r in zip(out_axes, out_ranks, strict=True)]
    lengths = {v.shape[a + batched] for v, a in zip(scans, in_axes, strict=True)}
    batches = scans[0].shape[0] if batched else 1
    if not all(isinstance(d, int) for d in [*lengths, batches]):
        return None
    if len(lengths) != 1 or 0 in lengths:
        return None
    steps = int(lengths.pop())
    if batches * steps * len(body) > MAX_UNROLLED_NODES:
        return None
    loop = _Loop(body, state_count, in_axes, in_dirs, out_axes, out_dirs)
    if not batched:
        return loop.unroll(b, states, scans, steps)
    per_batch = []
    for entry in range(batches):
        index = b.const(np.array(entry, np.int64))
        picked = [b.op("Gather", v, index, axis=0) for v in inputs]
        per_batch.append(loop.unroll(b, picked[:state_count], picked[state_count:], steps))
    return [_stack(b, [outs[i] for outs in per_batch], 0) for i in range(len(body.outputs))]


@dataclass(frozen=True)
class _Loop:
    body: ir.Graph
    state_count: int
    in_axes: Sequence[int]
    in_dirs: Sequence[int]
    out_axes: Sequence[int]
    out_dirs: Sequence[int]

    def unroll(self, b: Builder, states: list[ir.Value], scans: list[ir.Value], steps: int) -> list[ir.Value]:
        produced: list[list[ir.Value]] = [[] for _ in range(len(self.body.outputs) - self.state_count)]
        for step in range(steps):
            slices = []
            for value, axis, direction in zip(scans, self.in_axes, self.in_dirs, strict=True):
                index = b.const(np.array(steps - 1 - step if direction else step, np.int64))
                slices.append(b.op("Gather", value, index, axis=axis))
            outputs = _inline_body(b, self.body, [*states, *slices])
            states = outputs[: self.state_count]
            for k, value in enumerate(outputs[self.state_count :]):
                produced[k].append(value)
        stacked = [
            _stack(b, values[::-1] if self.out_dirs[k] else values, self.out_axes[k])
            for k, values in enumerate(produced)
        ]
        return [*states, *stacked]


def _lower_loop(b: Builder, node: ir.Node, opset: int) -> list[ir.Value | None] | None:
    """Loop(M, cond, v...) with a constant M (and cond absent or a constant), unrolled M times."""
    body_attr = node.attributes.get("body")
    if body_attr is None or len(node.inputs) < 2:
        return None
    body = body_attr.as_graph()
    if any(isinstance(a.value, ir.Graph) for n in body for a in n.attributes.values()):
        return None
    trips, condition = constant_int(node.inputs[0]), constant_int(node.inputs[1])
    states = list(node.inputs[2:])
    if trips is None or (node.inputs[1] is not None and condition is None) or any(v is None for v in states):
        return None
    steps = trips if condition is None or condition else 0
    scan_count = len(body.outputs) - 1 - len(states)
    if len(body.inputs) != 2 + len(states) or scan_count < 0 or steps * len(body) > MAX_UNROLLED_NODES:
        return None
    always = _passes_condition_through(body)
    if steps == 0:
        return None if scan_count else [*states]  # nothing runs: the states come out as they went in
    if not always and scan_count:
        return None
    running = b.const(np.array(True))
    produced: list[list[ir.Value]] = [[] for _ in range(scan_count)]
    for step in range(steps):
        outputs = _inline_body(b, body, [b.const(np.array(step, np.int64)), running, *states])
        updated = outputs[1 : 1 + len(states)]
        if always:
            states = updated
        else:
            states = [b.op("Where", running, new, old) for new, old in zip(updated, states, strict=True)]
            running = b.op("And", running, outputs[0])
        for k, value in enumerate(outputs[1 + len(states) :]):
            produced[k].append(value)
    return [*states, *(_stack(b, values, 0) for values in produced)]


def _passes_condition_through(body: ir.Graph) -> bool:
    """The body's condition output is its condition input (through Identity nodes) or a constant true."""
    value = body.outputs[0]
    while value is not body.inputs[1]:
        producer = value.producer()
        if producer is None:
            return value.const_value is not None and bool(value.const_value.numpy().reshape(-1)[0])
        if producer.op_type == "Constant":
            tensor = producer.attributes.get("value")
            return tensor is not None and bool(tensor.as_tensor().numpy().reshape(-1)[0])
        if producer.op_type != "Identity":
            return False
        value = producer.inputs[0]
    return True


def _stack(b: Builder, values: list[ir.Value], axis: int) -> ir.Value:
    if b.opset < 13:  # Unsqueeze took its axes as an attribute then
        parts = [b.op("Unsqueeze", v, axes=[axis]) for v in values]
    else:
        axes = b.const(np.array([axis], np.int64))
        parts = [b.op("Unsqueeze", v, axes) for v in values]
    return parts[0] if len(parts) == 1 else b.op("Concat", *parts, axis=axis)


def _inline_body(b: Builder, body: ir.Graph, arguments: list[ir.Value]) -> list[ir.Value]:
    """The body's nodes copied before the Scan with its inputs bound to `arguments`; returns its outputs."""
    bound: dict[ir.Value, ir.Value] = dict(zip(body.inputs, arguments, strict=True))
    for initializer in body.initializers.values():
        bound[initializer] = b.const(initializer.const_value.numpy())
    for node in body:
        copy = ir.Node(
            node.domain,
            node.op_type,
            [bound.get(v, v) if v is not None else None for v in node.inputs],
            attributes=[ir.Attr(a.name, a.type, a.value) for a in node.attributes.values()],
            num_outputs=len(node.outputs),
            name=b.fresh_name(),
            overload=node.overload,
        )
        for old, new in zip(node.outputs, copy.outputs, strict=True):
            new.name = f"{copy.name}_{old.name}" if old.name else f"{copy.name}_out"
            new.dtype = old.dtype  # shapes are inferred again once every Scan is unrolled
            bound[old] = new
        b.graph.insert_before(b.anchor, copy)
    return [bound.get(v, v) for v in body.outputs]
