"""Apply a channel selection (a subset, for pruning, or a permutation, for reordering) to every coupled tensor."""

from __future__ import annotations

from collections import defaultdict

import networkx as nx
import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common

from bitc.ir.feeds import random_feeds
from bitc.ir.graph_edit import add_initializer
from bitc.ir.shapes import infer_shapes
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

    feeds = calibration if calibration is not None else random_feeds(model)
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


def selection(
    cg: ChannelGraph, groups: list[ChannelGroup], ranks: dict[int, np.ndarray]
) -> tuple[dict[Dim, np.ndarray], dict[int, str]]:
    """For each tensor axis touched by a group in `ranks`, the old indices in their new order; and the groups left
    as they are because no consistent layout keeps them (group number → why).

    `ranks[g][c]` is channel c's new position within group g, or −1 to remove it. An axis a layer creates (a conv's
    output) takes its groups' channels in rank order within the positions each group holds there. Every other axis
    follows from the axes it is made of: a Concat output is its inputs' new orders block by block (a channel that
    sits at several offsets, as in an SPP block, moves and goes the same way in every block), a flatten repeats
    each channel's features. Then every coupling is checked in the new layout; a group that would break one is
    left unchanged (refused, never half-applied)."""
    ranks = dict(ranks)
    refused: dict[int, str] = {}
    ids = component_ids(groups)
    while ranks:
        order = _orders(cg, ranks, ids)
        broken = _broken_links(cg, order) if order is not None else cg.links
        if not broken:
            touched = {dim for g in ranks for dim in groups[g].dims}
            return {dim: order[dim] for dim in touched}, refused
        culprits = set()
        for kind, a, b, _ in broken:
            for dim in (a, b):
                for g in {ids[(dim, i)][0] for i in range(cg.sizes[dim])} & ranks.keys():
                    culprits.add(g)
                    refused.setdefault(g, f"no consistent channel layout at '{b[0]}' ({kind} coupling)")
        for g in culprits or list(ranks):  # nothing to blame: refuse them all rather than loop
            refused.setdefault(g, "no consistent channel layout")
            del ranks[g]
    return {}, refused


def _orders(cg: ChannelGraph, ranks: dict[int, np.ndarray], ids: dict) -> dict[Dim, np.ndarray] | None:
    """Every axis's new order, in data-flow order: derived from its sources where a coupling says how, else
    ranked. None if the couplings form a cycle (no data-flow order)."""
    incoming: dict[Dim, list] = defaultdict(list)
    flow = nx.DiGraph()
    flow.add_nodes_from(cg.sizes)
    for link in cg.links:
        if link[0] != "tie":
            incoming[link[2]].append(link)
            flow.add_edge(link[1], link[2])
    try:
        dims = list(nx.topological_sort(flow))
    except nx.NetworkXUnfeasible:
        return None
    order: dict[Dim, np.ndarray] = {}
    for dim in dims:
        derived = _derive(cg, incoming[dim], order, cg.sizes[dim])
        order[dim] = derived if derived is not None else _ranked(cg, dim, ranks, ids)
    return order


def _derive(cg: ChannelGraph, links: list, order: dict[Dim, np.ndarray], size: int) -> np.ndarray | None:
    """An axis's new order from the axes that make it (None: nothing says how, rank it)."""
    if not links:
        return None
    kind, a, _, factor = links[0]
    if kind == "spread":
        return (order[a][:, None] * factor + np.arange(factor)).reshape(-1)
    if kind == "merge":
        return order[a].reshape(-1, factor)[:, 0] // factor
    if any(link[0] != "same" for link in links):
        return None
    for _, a, _, offset in links:
        if offset == 0 and cg.sizes[a] == size:  # an elementwise op: its output keeps its input's order
            return order[a]
    blocks = sorted((offset, a) for _, a, _, offset in links)
    at = 0
    for offset, a in blocks:  # a Concat: its inputs must tile the axis exactly once
        if offset != at:
            return None
        at += cg.sizes[a]
    if at != size:
        return None
    return np.concatenate([order[a] + offset for offset, a in blocks])


def _ranked(cg: ChannelGraph, dim: Dim, ranks: dict[int, np.ndarray], ids: dict) -> np.ndarray:
    """Positions a group holds in the axis stay that group's; within them, its kept channels go in rank order."""
    slots: dict[int, list[int]] = defaultdict(list)
    for index in range(cg.sizes[dim]):
        slots[ids[(dim, index)][0]].append(index)
    new = []
    for g, positions in slots.items():
        if g not in ranks:
            new.extend(zip(positions, positions, strict=True))
            continue
        kept = [i for i in positions if ranks[g][ids[(dim, i)][1]] >= 0]
        moved = sorted(kept, key=lambda i, g=g: (ranks[g][ids[(dim, i)][1]], i))
        new.extend(zip(positions[: len(moved)], moved, strict=True))  # fill the group's first slots in rank order
    new.sort()
    return np.array([old for _, old in new], dtype=np.int64)


def _broken_links(cg: ChannelGraph, order: dict[Dim, np.ndarray]) -> list:
    """The couplings that the new orders do not keep."""
    return [link for link in cg.links if not _kept(cg, link, order)]


def _kept(cg: ChannelGraph, link: tuple, order: dict[Dim, np.ndarray]) -> bool:
    kind, a, b, k = link
    new_a, new_b = order[a], order[b]
    if kind == "spread":
        return np.array_equal(new_b, (new_a[:, None] * k + np.arange(k)).reshape(-1))
    if kind == "merge":
        return np.array_equal(new_a, (new_b[:, None] * k + np.arange(k)).reshape(-1))
    # "same"/"tie": a's channels form one contiguous block of b, where the blocks before it end, in a's order
    inside = np.flatnonzero((new_b >= k) & (new_b < k + cg.sizes[a]))
    if not np.array_equal(new_b[inside] - k, new_a):
        return False
    start = int(np.count_nonzero(new_b < k))
    return np.array_equal(inside, np.arange(start, start + len(inside)))


def apply_ranks(
    model: ir.Model, cg: ChannelGraph, groups: list[ChannelGroup], ranks: dict[int, np.ndarray], fixed: dict[str, int]
) -> None:
    """Rewrite the model by `ranks` (see `selection`); groups no consistent layout keeps are dropped from `ranks`
    and counted in `fixed` by reason, so the caller's report says what was left as it was."""
    if not ranks:
        return
    order, refused = selection(cg, groups, ranks)
    for g, reason in refused.items():
        del ranks[g]
        fixed[reason] = fixed.get(reason, 0) + 1
    if ranks:
        apply(model, cg, order)


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
