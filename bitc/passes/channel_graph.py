"""Which channels of which tensors must change together: a channel-dependency graph over the ONNX IR.

Every channel of every tensor's channel axis (axis 1 of a 4-D tensor, the last axis of a 2-D/3-D one) is a node of
a networkx graph; an edge joins two channels that are the same channel seen by two tensors (an elementwise op, a
residual Add, BatchNorm, a depthwise conv, a Concat at an offset, a Flatten that spreads a channel over H·W
features). A connected component is one channel everywhere it appears; the weights it owns (a conv's filter, the
next conv's input slice, BN parameters, biases) are recorded per tensor axis. Removing or permuting a component
everywhere at once keeps the model consistent (Torch-Pruning's DepGraph idea, over ONNX).

Channels that reach a graph input or output, or an op this module cannot see through (reshapes into attention
heads, MatMul of two activations, a grouped conv, a reduction over channels) are *fixed*, with the reason: they are
never pruned or moved.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import networkx as nx
import onnx_ir as ir

from bitc.errors import BadInputError

Dim = tuple[str, int]  # (value name, axis)
# How a tensor axis's channels follow another's — what a rewrite must keep true in the new layout:
#   ("same", a, b, offset): channel i of a is channel i + offset of b (offset > 0: a Concat block)
#   ("spread", a, b, f): channel i of a is features i·f … i·f + f − 1 of b (a C-major flatten)
#   ("merge", a, b, f): features i·f … i·f + f − 1 of a are channel i of b (a split into attention heads)
#   ("tie", a, b, 0): a and b index one shared weight, so they must keep one order
Link = tuple[str, Dim, Dim, int]

_UNARY = {
    "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Erf", "Gelu", "Clip", "HardSigmoid", "HardSwish", "Neg", "Abs", "Sqrt",
    "Exp", "Softplus", "Round", "Sign", "Cast", "Identity", "Dropout", "Elu", "Selu", "Mish", "Floor", "Ceil",
    "Reciprocal", "Log", "Not", "IsNaN", "PRelu",
}  # fmt: skip
_ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Where", "GreaterOrEqual", "Greater", "Less",
                "LessOrEqual", "Equal", "And", "Or", "Sum", "Mean"}  # fmt: skip
_POOLS = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "Resize", "Upsample", "Pad"}


def channel_axis(value: ir.Value) -> int | None:
    """The axis channels live on: 1 for 4-D (NCHW), the last for 2-D/3-D (tokens × features); None otherwise."""
    rank = len(value.shape) if value.shape is not None else 0
    return 1 if rank == 4 else rank - 1 if rank in (2, 3) else None


@dataclass
class ChannelGraph:
    """Channel components of a model: which tensor axes and which weight axes each channel spans."""

    sizes: dict[Dim, int] = field(default_factory=dict)  # every tracked tensor axis and its length
    params: dict[tuple[str, int], Dim] = field(default_factory=dict)  # weight axis → the tensor axis it indexes
    producers: set[Dim] = field(default_factory=set)  # axes whose channels a layer creates (conv outputs, ...)
    fixed: dict[Dim, str] = field(default_factory=dict)  # axes that may not change, with why
    order_free: dict[Dim, str] = field(default_factory=dict)  # axes that may be permuted but not cut (a reduction)
    depthwise: dict[str, Dim] = field(default_factory=dict)  # depthwise conv node name → its output axis
    reshapes: dict[str, Dim] = field(default_factory=dict)  # Reshape node → its output axis (shape to rewrite)
    gammas: set[str] = field(default_factory=set)  # normalisation scale parameters (the bn_gamma criterion)
    axis_of: dict[str, int] = field(default_factory=dict)  # tensors whose tracked axis is not the default one
    head_axes: set[Dim] = field(default_factory=set)  # attention-head axes (a group there moves whole heads)
    consumed: set[Dim] = field(default_factory=set)  # axes a weighted layer reads (where a channel's use is seen)
    links: list[Link] = field(default_factory=list)  # every coupling, typed: the layout a rewrite must keep
    graph: nx.Graph = field(default_factory=nx.Graph)

    def components(self) -> Iterator[set[tuple[Dim, int]]]:
        return nx.connected_components(self.graph)

    def groups(self) -> list[ChannelGroup]:
        """Components with the same set of tensor axes form one group (a layer's channels and what they feed)."""
        by_dims: dict[frozenset[Dim], list[list[tuple[Dim, int]]]] = defaultdict(list)
        for component in self.components():
            by_dims[frozenset(dim for dim, _ in component)].append(sorted(component))
        groups = []
        for dims, channels in by_dims.items():
            reasons = sorted({self.fixed[d] for d in dims if d in self.fixed})
            if not dims & self.producers:
                reasons.append("no layer produces these channels")
            cut = sorted({self.order_free[d] for d in dims if d in self.order_free})
            groups.append(ChannelGroup(sorted(dims), channels, reasons, cut))
        return sorted(groups, key=lambda g: g.dims)


@dataclass
class ChannelGroup:
    dims: list[Dim]
    channels: list[list[tuple[Dim, int]]]  # one entry per channel: the (axis, index) pairs it occupies
    fixed_because: list[str]  # why these channels may not change at all
    uncuttable_because: list[str] = field(default_factory=list)  # why they may move but not be removed

    @property
    def permutable(self) -> bool:
        return not self.fixed_because

    @property
    def prunable(self) -> bool:
        return not self.fixed_because and not self.uncuttable_because


def build_channel_graph(model: ir.Model) -> ChannelGraph:
    """Follow every node's channel couplings; anything not understood fixes the channels it touches."""
    cg = ChannelGraph()
    for value in model.graph.inputs:
        _fix(cg, value, "graph input")
    for value in model.graph.outputs:
        _fix(cg, value, "graph output")
    for node in model.graph:
        _couple(cg, node)
    for dim, size in cg.sizes.items():
        cg.graph.add_nodes_from((dim, i) for i in range(size))
    return cg


def _dim(cg: ChannelGraph, value: ir.Value | None) -> Dim | None:
    if value is None or value.const_value is not None or value.shape is None:
        return None
    axis = cg.axis_of.get(value.name, channel_axis(value))
    if axis is None or not isinstance(value.shape[axis], int):
        return None
    dim = (value.name, axis)
    cg.sizes.setdefault(dim, int(value.shape[axis]))
    return dim


def _fix(cg: ChannelGraph, value: ir.Value | None, reason: str) -> None:
    if (dim := _dim(cg, value)) is not None:
        cg.fixed.setdefault(dim, reason)


def _same(cg: ChannelGraph, a: Dim, b: Dim, offset: int = 0, kind: str = "same") -> None:
    """Channel i of `a` is channel i + offset of `b`."""
    cg.graph.add_edges_from(((a, i), (b, i + offset)) for i in range(cg.sizes[a]))
    cg.links.append((kind, a, b, offset))


def _spread(cg: ChannelGraph, a: Dim, b: Dim, factor: int) -> None:
    """Channel i of `a` is features i·factor … i·factor + factor − 1 of `b` (a C-major flatten)."""
    cg.graph.add_edges_from(((a, i), (b, i * factor + j)) for i in range(cg.sizes[a]) for j in range(factor))
    cg.links.append(("spread", a, b, factor))


def _attach(cg: ChannelGraph, param: ir.Value, axis: int, dim: Dim) -> None:
    """Weight axis `axis` of `param` is indexed like `dim`; a weight shared by two layers couples their axes."""
    if param.const_value is None or param.shape is None or int(param.shape[axis]) != cg.sizes[dim]:
        return
    if (other := cg.params.get((param.name, axis))) is not None and other != dim:
        _same(cg, other, dim, kind="tie")
    cg.params[(param.name, axis)] = dim


def _attach_broadcast(cg: ChannelGraph, const: ir.Value, dim: Dim, rank: int, axis: int) -> bool:
    """A constant operand of an elementwise op: per-channel (attach its axis) or constant along channels."""
    shape = [int(d) for d in const.shape]
    aligned = [1] * (rank - len(shape)) + shape
    if aligned[axis] == 1:
        return True
    if aligned[axis] == cg.sizes[dim] and len(shape) > rank - axis - 1:
        _attach(cg, const, axis - (rank - len(shape)), dim)
        return True
    return False


def _fix_node(cg: ChannelGraph, node: ir.Node, why: str) -> None:
    reason = f"{why} ({node.op_type} '{node.name}')"
    for value in [*node.inputs, *node.outputs]:
        _fix(cg, value, reason)


CouplingRule = Callable[["ChannelGraph", ir.Node, "Dim | None"], None]
# op type (domain::op for custom domains) → how the op couples its inputs' and outputs' channels; an op without a
# rule fixes the channels it touches ("not followed"). Torch-Pruning's per-op dependency handlers, as a table.
_RULES: dict[str, CouplingRule] = {}


def coupling(*op_types: str) -> Callable[[CouplingRule], CouplingRule]:
    """Decorator: `rule(cg, node, out)` couples the channels of nodes of these op types (`out` is the output's
    tracked axis, or None)."""

    def register(rule: CouplingRule) -> CouplingRule:
        for op_type in op_types:
            if op_type in _RULES:
                raise ValueError(f"two coupling rules for {op_type}")
            _RULES[op_type] = rule
        return rule

    return register


def _couple(cg: ChannelGraph, node: ir.Node) -> None:
    op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
    # a Transpose or Reshape may track another axis of its output than the default: it finds its own
    out = _dim(cg, node.outputs[0]) if node.outputs and op not in ("Transpose", "Reshape") else None
    rule = _RULES.get(op)
    if rule is None:
        _fix_node(cg, node, "not followed")
    else:
        rule(cg, node, out)


@coupling("BatchNormalization", "LayerNormalization", "InstanceNormalization")
def _couple_normalization(cg: ChannelGraph, node: ir.Node, out: Dim | None) -> None:
    x = _dim(cg, node.inputs[0])
    if x is None or out is None:
        return _fix_node(cg, node, "normalisation over an untracked axis")
    if node.op_type == "LayerNormalization" and node.attributes.get_int("axis", -1) not in (
        -1,
        len(node.inputs[0].shape) - 1,
    ):
        return _fix_node(cg, node, "layer norm over more than the channel axis")
    _same(cg, x, out)
    for index, param in enumerate(node.inputs[1:], start=1):
        if param is not None and param.const_value is not None and param.shape is not None and len(param.shape) == 1:
            _attach(cg, param, 0, out)
            if index == 1:
                cg.gammas.add(param.name)
    return None


@coupling(*_UNARY, *_POOLS)
def _couple_channelwise(cg: ChannelGraph, node: ir.Node, out: Dim | None) -> None:
    x = _dim(cg, node.inputs[0])
    if x is None or out is None or cg.sizes[x] != cg.sizes[out]:
        return _fix_node(cg, node, "channel count changes")
    _same(cg, x, out)
    return None


@coupling("Gather")
def _couple_gather(cg: ChannelGraph, node: ir.Node, out: Dim | None) -> None:
    table = node.inputs[0]
    if table.const_value is None or out is None:
        return _fix_node(cg, node, "not followed")
    if node.attributes.get_int("axis", 0) == 0 and len(table.shape) == 2:  # an embedding lookup
        cg.producers.add(out)
        _attach(cg, table, 1, out)
    else:
        _fix_node(cg, node, "gather not along rows")
    return None


@coupling("Softmax", "LogSoftmax")
def _couple_softmax(cg: ChannelGraph, node: ir.Node, out: Dim | None) -> None:
    x = _dim(cg, node.inputs[0])
    if x is None or out is None:
        return _fix_node(cg, node, "not followed")
    rank = len(node.inputs[0].shape)
    _same(cg, x, out)
    if node.attributes.get_int("axis", -1) % rank == x[1]:  # normalises over channels: order-free, not cuttable
        cg.order_free[x] = f"softmax over channels ({node.op_type} '{node.name}')"
    return None


@coupling("Expand")
def _couple_expand(cg: ChannelGraph, node: ir.Node, out: Dim | None) -> None:
    if out is None:
        return _fix_node(cg, node, "not followed")
    x = _dim(cg, node.inputs[0])
    if x is not None and cg.sizes[x] == cg.sizes[out]:
        _same(cg, x, out)
    elif x is not None and cg.sizes[x] != 1:
        _fix_node(cg, node, "expand of the channel axis")
    return None


@coupling("Shape", "Size")
def _couple_nothing(cg: ChannelGraph, node: ir.Node, out: Dim | None) -> None:
    """Reads shapes only: no channel flows through."""


@coupling("Conv")
def _couple_conv(cg: ChannelGraph, node: ir.Node, out: Dim | None) -> None:
    x, weights = _dim(cg, node.inputs[0]), node.inputs[1]
    if x is None or out is None or weights.const_value is None:
        return _fix_node(cg, node, "conv with computed weights")
    groups = node.attributes.get_int("group", 1)
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    cg.producers.add(out)
    _attach(cg, weights, 0, out)
    if bias is not None:
        _attach(cg, bias, 0, out)
    cg.consumed.add(x)
    if groups == 1:
        _attach(cg, weights, 1, x)
    elif groups == cg.sizes[x] == cg.sizes[out] and int(weights.shape[1]) == 1:  # depthwise: in channel = out
        _same(cg, x, out)
        cg.depthwise[node.name] = out
    else:
        _fix_node(cg, node, f"grouped conv with {groups} groups")


@coupling("Gemm", "MatMul")
def _couple_dense(cg: ChannelGraph, node: ir.Node, out: Dim | None) -> None:
    x, weights = _dim(cg, node.inputs[0]), node.inputs[1]
    if node.op_type == "MatMul" and weights.const_value is None:
        return _couple_batched_matmul(cg, node, x, out)
    if x is None or out is None or weights.const_value is None or len(weights.shape) != 2:
        return _fix_node(cg, node, "matmul of two activations")
    if node.op_type == "Gemm" and node.attributes.get_int("transA", 0):
        return _fix_node(cg, node, "Gemm with transA")
    out_axis = 0 if node.op_type == "Gemm" and node.attributes.get_int("transB", 0) else 1
    cg.producers.add(out)
    cg.consumed.add(x)
    _attach(cg, weights, out_axis, out)
    _attach(cg, weights, 1 - out_axis, x)
    if node.op_type == "Gemm" and len(node.inputs) > 2 and node.inputs[2] is not None:
        bias = node.inputs[2]
        if bias.const_value is not None and bias.shape is not None and len(bias.shape) >= 1:
            _attach(cg, bias, len(bias.shape) - 1, out)


@coupling(*_ELEMENTWISE)
def _couple_elementwise(cg: ChannelGraph, node: ir.Node, out: Dim | None) -> None:
    if out is None:
        return _fix_node(cg, node, "elementwise op on untracked tensors")
    rank = len(node.outputs[0].shape)
    axis = channel_axis(node.outputs[0])
    for value in node.inputs:
        if value is None:
            continue
        if value.const_value is not None:
            if not _attach_broadcast(cg, value, out, rank, axis):
                return _fix_node(cg, node, "constant operand does not broadcast per channel")
            continue
        shape = [int(d) if isinstance(d, int) else -1 for d in value.shape] if value.shape is not None else None
        aligned = [1] * (rank - len(shape)) + shape if shape is not None and len(shape) <= rank else None
        if aligned is not None and aligned[axis] == 1:  # the same value for every channel: no coupling
            continue
        dim = _dim(cg, value)
        if dim is None or len(value.shape) != rank or cg.sizes[dim] != cg.sizes[out]:
            return _fix_node(cg, node, "operand broadcasts across channels")
        _same(cg, dim, out)


@coupling("Concat")
def _couple_concat(cg: ChannelGraph, node: ir.Node, out: Dim | None) -> None:
    if out is None:
        return _fix_node(cg, node, "concat of untracked tensors")
    rank = len(node.outputs[0].shape)
    axis = node.attributes.get_int("axis", 0) % rank
    inputs = [_dim(cg, v) for v in node.inputs]
    if any(d is None for d in inputs):
        return _fix_node(cg, node, "concat with a constant operand")
    if axis == out[1]:
        offset = 0
        for dim in inputs:
            _same(cg, dim, out, offset)
            offset += cg.sizes[dim]
    else:
        for dim in inputs:
            _same(cg, dim, out)


@coupling("ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL2", "ReduceL1", "ReduceLogSumExp")
def _couple_reduce(cg: ChannelGraph, node: ir.Node, out: Dim | None) -> None:
    """A reduction over spatial (or token) axes keeps channels; over the channel axis it mixes them."""
    x = _dim(cg, node.inputs[0])
    axes = node.attributes.get_ints("axes", None)
    if axes is None and len(node.inputs) > 1 and node.inputs[1] is not None and node.inputs[1].const_value is not None:
        axes = [int(a) for a in node.inputs[1].const_value.numpy().reshape(-1)]
    if x is None or not axes:
        return _fix_node(cg, node, "reduction over unknown axes")
    rank = len(node.inputs[0].shape)
    if x[1] in {a % rank for a in axes}:  # the channels end here: any order is fine, removing one is not
        cg.order_free[x] = f"reduction over channels ({node.op_type} '{node.name}')"
        _fix(cg, node.outputs[0], f"reduction output ({node.op_type} '{node.name}')")
        return None
    if out is None or cg.sizes[x] != cg.sizes[out]:
        return _fix_node(cg, node, "reduction changes the channel count")
    _same(cg, x, out)


def _couple_batched_matmul(cg: ChannelGraph, node: ir.Node, x: Dim | None, out: Dim | None) -> None:
    """Attention's Q·Kᵀ and P·V: [B, H, ·, ·] @ [B, H, ·, ·] — the head axis (1) is a batch axis, shared by both
    operands and the result; the channels inside a head are contracted, so only whole heads can change."""
    other = _dim(cg, node.inputs[1])
    ranks = {len(v.shape) for v in (*node.inputs, *node.outputs)}
    if ranks != {4} or None in (x, other, out) or {x[1], other[1], out[1]} != {1}:
        return _fix_node(cg, node, "matmul of two activations")
    _same(cg, x, out)
    _same(cg, other, out)


@coupling("Transpose")
def _couple_transpose(cg: ChannelGraph, node: ir.Node, out: Dim | None = None) -> None:
    """The tracked axis moves to where the permutation puts it."""
    x = _dim(cg, node.inputs[0])
    if x is None:
        return _fix_node(cg, node, "transpose of an untracked tensor")
    rank = len(node.inputs[0].shape)
    perm = list(node.attributes.get_ints("perm", list(range(rank))[::-1]))
    cg.axis_of[node.outputs[0].name] = perm.index(x[1])
    out = _dim(cg, node.outputs[0])
    _same(cg, x, out)


def _split_heads(cg: ChannelGraph, node: ir.Node, x: Dim, src: list[int], dst: list[int]) -> bool:
    """[B, S, H·d] → [B, S, H, d]: the new head axis (2) is tracked; channel c belongs to head c // d. The reverse
    merge spreads each head over its d channels. Either way a head moves or goes as a whole."""
    if len(src) == 3 and len(dst) == 4 and x[1] == 2 and src[:2] == dst[:2] and dst[2] * dst[3] == src[2]:
        cg.axis_of[node.outputs[0].name] = 2
        heads = _dim(cg, node.outputs[0])
        cg.graph.add_edges_from(((x, c), (heads, c // dst[3])) for c in range(src[2]))
        cg.links.append(("merge", x, heads, dst[3]))
        cg.reshapes[node.name] = heads
        cg.head_axes.add(heads)
        return True
    if len(src) == 4 and len(dst) == 3 and x[1] == 2 and src[:2] == dst[:2] and src[2] * src[3] == dst[2]:
        out = _dim(cg, node.outputs[0])
        if out is None or out[1] != 2:
            return False
        _spread(cg, x, out, src[3])
        cg.reshapes[node.name] = out
        return True
    return False


@coupling("Flatten", "Reshape", "Squeeze", "Unsqueeze")
def _couple_reshape(cg: ChannelGraph, node: ir.Node, out: Dim | None) -> None:
    """A reshape keeps channels as a flatten of NCHW to [N, C·H·W], by dropping / adding unit axes, or by splitting
    the feature axis into attention heads (and merging them back)."""
    x = _dim(cg, node.inputs[0])
    src, dst = [int(d) for d in node.inputs[0].shape], [int(d) for d in node.outputs[0].shape]
    if x is not None and node.op_type == "Reshape" and _split_heads(cg, node, x, src, dst):
        return None
    out = out if out is not None else _dim(cg, node.outputs[0])
    if x is None or out is None:
        return _fix_node(cg, node, "reshape of untracked tensors")
    if cg.sizes[x] == cg.sizes[out] and [d for d in src if d != 1] == [d for d in dst if d != 1]:
        _same(cg, x, out)
        if node.op_type == "Reshape":
            cg.reshapes[node.name] = out
    elif len(src) == 4 and len(dst) == 2 and dst == [src[0], src[1] * src[2] * src[3]]:
        _spread(cg, x, out, src[2] * src[3])
        if node.op_type == "Reshape":
            cg.reshapes[node.name] = out
    else:
        _fix_node(cg, node, "reshape that splits or merges the channel axis")


def output_axes(model: ir.Model, layers: list[str] | None) -> set | None:
    """The output axes of the named nodes (None = every group)."""
    if layers is None:
        return None
    nodes = {node.name: node for node in model.graph}
    unknown = [name for name in layers if name not in nodes]
    if unknown:
        raise BadInputError(f"no node named {', '.join(unknown)}")
    dims = set()
    for name in layers:
        value = nodes[name].outputs[0]
        if (axis := channel_axis(value)) is not None:
            dims.add((value.name, axis))
    return dims
