"""Apply a channel selection (a subset, for pruning, or a permutation, for reordering) to every coupled tensor."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common

from bitc.frontend.normalize import infer_shapes
from bitc.graph_edit import add_initializer
from bitc.passes.channel_graph import ChannelGraph, ChannelGroup, Dim


def component_ids(groups: list[ChannelGroup]) -> dict[tuple[Dim, int], tuple[int, int]]:
    """(axis, index) → (group number, channel number within the group)."""
    ids = {}
    for g, group in enumerate(groups):
        for c, channel in enumerate(group.channels):
            for node in channel:
                ids[node] = (g, c)
    return ids


def importance(
    model: ir.Model,
    cg: ChannelGraph,
    groups: list[ChannelGroup],
    criterion: str,
    calibration: dict[str, np.ndarray] | None = None,
) -> list[np.ndarray]:
    """Per group, one score per channel: the L1 / L2 norm over every weight slice the channel owns (the coupled
    group's norm, as Torch-Pruning's group criterion), |γ| of its normalisation layers (`bn_gamma`), or
    `activation`: the channel's mean |output| on calibration inputs (seeded random ones if none are given) times its
    weights' L2 norm — how much the channel actually carries on that data."""
    ids = component_ids(groups)
    if criterion == "activation":
        weights = importance(model, cg, groups, "l2")
        activity = _activations(model, cg, groups, ids, calibration)
        return [w * a for w, a in zip(weights, activity, strict=True)]
    scores = [np.zeros(len(g.channels)) for g in groups]
    initializers = model.graph.initializers
    for (name, axis), dim in cg.params.items():
        if criterion == "bn_gamma" and name not in cg.gammas:
            continue
        tensor = initializers[name].const_value.numpy().astype(np.float64)
        others = tuple(a for a in range(tensor.ndim) if a != axis)
        if criterion == "l2":
            per_index = np.square(tensor).sum(axis=others) if others else np.square(tensor)
        else:
            per_index = np.abs(tensor).sum(axis=others) if others else np.abs(tensor)
        for index, value in enumerate(per_index):
            g, c = ids[(dim, index)]
            scores[g][c] += value
    return [np.sqrt(s) if criterion == "l2" else s for s in scores]


def _activations(
    model: ir.Model,
    cg: ChannelGraph,
    groups: list[ChannelGroup],
    ids: dict,
    calibration: dict[str, np.ndarray] | None,
) -> list[np.ndarray]:
    """Mean |activation| per channel where the next weighted layers read it (after any activation function: a
    filter that never fires scores 0), else where it is produced; onnxruntime on the calibration feeds."""
    from bitc.passes import verify

    feeds = calibration if calibration is not None else verify.random_feeds(model)
    dims = set()
    for group in groups:
        read = [d for d in group.dims if d in cg.consumed]
        dims.update(read or [d for d in group.dims if d in cg.producers])
    dims = sorted(dims)
    values = verify.run_with_outputs(ir.to_proto(model), [name for name, _ in dims], feeds) if dims else []
    scores = [np.zeros(len(g.channels)) for g in groups]
    counts = [np.zeros(len(g.channels)) for g in groups]
    for (name, axis), value in zip(dims, values, strict=True):
        per_channel = np.abs(np.asarray(value, dtype=np.float64))
        per_channel = per_channel.mean(axis=tuple(a for a in range(per_channel.ndim) if a != axis))
        for index, magnitude in enumerate(per_channel):
            g, c = ids[((name, axis), index)]
            scores[g][c] += magnitude
            counts[g][c] += 1
    return [s / np.maximum(n, 1) for s, n in zip(scores, counts, strict=True)]


def selection(cg: ChannelGraph, groups: list[ChannelGroup], ranks: dict[int, np.ndarray]) -> dict[Dim, np.ndarray]:
    """For each tensor axis touched by a group in `ranks`, the old indices in their new order.

    `ranks[g][c]` is channel c's new position within group g, or −1 to remove it. Positions a group holds in an
    axis stay that group's (a Concat keeps its blocks); within them, channels move by rank."""
    ids = component_ids(groups)
    order: dict[Dim, np.ndarray] = {}
    dims = {dim for g in ranks for dim in groups[g].dims}
    for dim in dims:
        slots: dict[int, list[int]] = defaultdict(list)
        for index in range(cg.sizes[dim]):
            slots[ids[(dim, index)][0]].append(index)
        new = []
        for index in range(cg.sizes[dim]):
            g, _ = ids[(dim, index)]
            if g not in ranks:
                new.append((index, index))
        for g, positions in slots.items():
            if g not in ranks:
                continue
            kept = [i for i in positions if ranks[g][ids[(dim, i)][1]] >= 0]
            moved = sorted(kept, key=lambda i, g=g: (ranks[g][ids[(dim, i)][1]], i))
            new.extend(zip(positions[: len(moved)], moved, strict=True))  # fill the group's first slots in rank order
        new.sort()
        order[dim] = np.array([old for _, old in new], dtype=np.int64)
    return order


def apply(model: ir.Model, cg: ChannelGraph, order: dict[Dim, np.ndarray], source: str = "model") -> None:
    """Take `order[dim]` along every weight axis indexed by `dim`, fix depthwise `group` and flatten shapes, and
    infer every tensor's shape again."""
    by_param: dict[str, list[tuple[int, np.ndarray]]] = defaultdict(list)
    for (name, axis), dim in cg.params.items():
        if dim in order:
            by_param[name].append((axis, order[dim]))
    for name, takes in by_param.items():
        value = model.graph.initializers[name]
        tensor = value.const_value.numpy()
        for axis, indices in takes:
            tensor = np.take(tensor, indices, axis=axis)
        value.const_value = ir.tensor(np.ascontiguousarray(tensor), name=name)
        value.shape = ir.Shape(tensor.shape)
    nodes = {node.name: node for node in model.graph}
    for name, dim in cg.depthwise.items():
        if dim in order:
            nodes[name].attributes["group"] = ir.AttrInt64("group", len(order[dim]))
    for name, dim in cg.reshapes.items():
        if dim in order:  # the target shape, written out in full with the new channel count
            node = nodes[name]
            new = [int(d) for d in node.outputs[0].shape]
            new[dim[1]] = len(order[dim])
            name = f"{node.inputs[1].name}__{'x'.join(map(str, new))}"
            if name not in model.graph.initializers:
                add_initializer(model.graph, np.array(new, dtype=np.int64), name)
            node.replace_input_with(1, model.graph.initializers[name])
    common.RemoveUnusedNodesPass()(model)  # replaced shape constants
    for node in model.graph:
        for output in node.outputs:
            output.shape = None
    infer_shapes(model, source=source)
