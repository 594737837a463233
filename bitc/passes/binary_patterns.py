"""Recognising ±1 tensors in a graph and building their bit-packed twins: shared by the binary passes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from bitc import ops
from bitc.ir.graph_edit import add_initializer, constant
from bitc.ops.packing import words

# Relative tolerance for "all weights of a channel have the same magnitude" (folded BN rescales them in float32).
MAGNITUDE_RTOL = 1e-5


def scalar(value: ir.Value | None) -> float | None:
    array = constant(value)
    if array is None or array.size != 1:
        return None
    return float(array.reshape(-1)[0])


@dataclass
class SignSource:
    """`value` = scale · Σₚ Sₚ with Sₚ = +1 where source ≥ thresholds[p] else −1 (one plane: scale·sign(source),
    sign(0) = +1; several: a thermometer code of a symmetric multi-level quantizer, scale = step / 2)."""

    source: ir.Value
    scale: float
    onnx_sign: bool = False  # from ONNX Sign, whose sign(0) is 0: treated as +1
    thresholds: tuple[float, ...] = (0.0,)


def sign_source(value: ir.Value) -> SignSource | None:
    """Where(x >= 0, s, −s), Sign(x), a symmetric multi-level quantizer Round(Clip(x / s, −L, L)), or any of
    those times a positive scalar."""
    node = value.producer()
    if node is None or node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "Mul":
        for this, other in ((0, 1), (1, 0)):
            factor = scalar(node.inputs[other])
            if factor is not None and factor > 0 and (inner := sign_source(node.inputs[this])) is not None:
                return SignSource(inner.source, inner.scale * factor, inner.onnx_sign, inner.thresholds)
        return None
    if node.op_type == "Round":
        return _quantizer_levels(node)
    if node.op_type == "Sign":
        return SignSource(node.inputs[0], 1.0, onnx_sign=True)
    if node.op_type == "Where":
        condition = node.inputs[0].producer()
        plus, minus = scalar(node.inputs[1]), scalar(node.inputs[2])
        if condition is None or plus is None or minus is None or plus <= 0 or minus != -plus:
            return None
        if condition.op_type == "GreaterOrEqual" and scalar(condition.inputs[1]) == 0.0:
            return SignSource(condition.inputs[0], plus)
    return None


MAX_ACTIVATION_PLANES = 7


def _quantizer_levels(round_node: ir.Node) -> SignSource | None:
    """Round(Clip(x / s, −L, L)) with round-half-even (ONNX Round), integer L and a power-of-two s: levels
    q = −L … L, i.e. q = ½·Σₜ Sₜ over the 2L steps t = −L+1 … L with Sₜ = +1 where q ≥ t. q ≥ t holds where
    x/s ≥ t − ½ for even t (the tie rounds up to it) and x/s > t − ½ for odd t; with s a power of two, x/s is
    exact, so comparing x with (t − ½)·s in float32 gives the same bits as the quantizer."""
    clip = round_node.inputs[0].producer()
    if clip is None or clip.op_type != "Clip" or len(clip.inputs) < 3:
        return None
    low, high = scalar(clip.inputs[1]), scalar(clip.inputs[2])
    if low is None or high is None or low != -high or high != int(high) or not 1 <= 2 * high <= MAX_ACTIVATION_PLANES:
        return None
    x, step = clip.inputs[0], 1.0
    divider = x.producer()
    if divider is not None and divider.op_type == "Div" and (s := scalar(divider.inputs[1])) is not None:
        x, step = divider.inputs[0], s
    if step <= 0 or np.frexp(step)[0] != 0.5:  # not a power of two
        return None
    thresholds = []
    for t in range(int(-high) + 1, int(high) + 1):
        edge = np.float32((t - 0.5) * step)
        thresholds.append(float(edge if t % 2 == 0 else np.nextafter(edge, np.float32(np.inf))))
    return SignSource(x, 0.5, thresholds=tuple(thresholds))


def weight_planes(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """±1 planes and scales per output channel (axis 0) with W = Σₚ scale[p, o]·Bₚ exactly: one plane for ±α
    weights, two (α/2 each) for ternary {−α, 0, α} weights; None otherwise."""
    alpha = channel_magnitudes(weights)
    if alpha is not None:
        return np.where(weights < 0, -1, 1)[None], alpha[None]
    flat = np.abs(weights.reshape(weights.shape[0], -1).astype(np.float64))
    alpha = flat.max(axis=1)
    nonzero = flat > 0
    if not np.all(
        np.abs(flat - alpha[:, None])[nonzero] <= MAGNITUDE_RTOL * np.broadcast_to(alpha[:, None], flat.shape)[nonzero]
    ):
        return None
    planes = np.stack([np.where(weights >= 0, 1, -1), np.where(weights > 0, 1, -1)])
    return planes, np.stack([alpha / 2, alpha / 2])


def channel_magnitudes(weights: np.ndarray) -> np.ndarray | None:
    """α per output channel (axis 0) if every weight of that channel is ±α, else None."""
    flat = np.abs(weights.reshape(weights.shape[0], -1).astype(np.float64))
    alpha = flat.max(axis=1)
    if np.all(np.abs(flat - alpha[:, None]) <= MAGNITUDE_RTOL * np.maximum(alpha[:, None], 1e-30)):
        return alpha
    return None


@dataclass
class PackedValue:
    """The packed twin of a ±1 (or multi-level) tensor: `shape` is the float tensor's, `planes` its bit planes
    (channels p·C + c in the packed words), `scale` the value of one ±1 step in a plane."""

    value: ir.Value
    scale: float
    shape: list[int]
    planes: int = 1


@dataclass
class Packer:
    """Creates (once per value) the packed twin of a ±1 tensor, inserting the nodes before `anchor`."""

    graph: ir.Graph
    made: dict[object, ir.Value] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def packed(self, value: ir.Value, anchor: ir.Node, create: bool = True) -> PackedValue | None:
        """The packed twin of `value` (nodes inserted before `anchor`, once per value), or None if `value` is not
        a ±s (or multi-level) tensor. With `create=False` it only answers whether it is (`.value` is None)."""
        if (sign := sign_source(value)) is not None:
            shape = [int(d) for d in sign.source.shape]
            if len(shape) not in (2, 4):
                return None
            if sign.onnx_sign and create:
                self.notes.append(f"{value.producer().name}: ONNX Sign read as sign(0) = +1")
            attrs = {"thresholds": list(sign.thresholds)} if sign.thresholds != (0.0,) else {}
            key = (id(sign.source), sign.thresholds)
            packed = self._memo(key, create, lambda: self._node("BitPack", [sign.source], attrs, anchor))
            return PackedValue(packed, sign.scale, shape, len(sign.thresholds))
        node = value.producer()
        if node is None:
            return None
        if node.op_type == "MaxPool" and _plain_max_pool(node):
            # max commutes with every plane's threshold (monotone), so pooling the bits is exact
            inner = self.packed(node.inputs[0], anchor, create)
            if inner is None or len(inner.shape) != 4:
                return None
            attrs = {
                "kernel_shape": list(node.attributes.get_ints("kernel_shape")),
                "strides": list(node.attributes.get_ints("strides", [1, 1])),
                "pads": list(node.attributes.get_ints("pads", [0, 0, 0, 0])),
            }
            pooled = self._memo(
                id(node.outputs[0]), create, lambda: self._node("PackedMaxPool", [inner.value], attrs, anchor)
            )
            return PackedValue(pooled, inner.scale, [int(d) for d in value.shape], inner.planes)
        if node.op_type in ("Reshape", "Flatten") and value.shape is not None and len(value.shape) == 2:
            inner = self.packed(node.inputs[0], anchor, create)
            if inner is None or len(inner.shape) != 4:
                return None
            n, c, h, w = inner.shape
            if int(value.shape[0]) != n or int(value.shape[1]) != c * h * w:
                return None

            def flatten() -> ir.Value:
                shape = np.array([n, h * w * words(inner.planes * c)], dtype=np.int64)
                target = add_initializer(self.graph, shape, f"{node.name}__packed_shape")
                return self._node("Reshape", [inner.value, target], {}, anchor, domain="")

            flat = self._memo(id(node.outputs[0]), create, flatten)
            return PackedValue(flat, inner.scale, [n, c, h, w], inner.planes)
        return None

    def _memo(self, key: object, create: bool, make) -> ir.Value | None:
        if key not in self.made:
            if not create:
                return None
            self.made[key] = make()
        return self.made[key]

    def _node(self, op_type: str, inputs: list[ir.Value], attrs: dict, anchor: ir.Node, domain: str = ops.DOMAIN):
        base = inputs[0].name or "x"
        node = ir.node(op_type, inputs, attributes=attrs, domain=domain, name=f"{base}__{op_type.lower()}")
        node.outputs[0].name = f"{base}__{op_type.lower()}"
        self.graph.insert_before(anchor, node)
        if domain == ops.DOMAIN:
            ops.infer_shapes(node)
        else:
            node.outputs[0].dtype = ir.DataType.UINT32
            node.outputs[0].shape = ir.Shape([int(d) for d in constant(inputs[1])])
        return node.outputs[0]


def _plain_max_pool(node: ir.Node) -> bool:
    return (
        len(node.outputs) == 1
        and node.attributes.get_int("ceil_mode", 0) == 0
        and set(node.attributes.get_ints("dilations", [1, 1])) == {1}
        and node.attributes.get_string("auto_pad", "NOTSET") == "NOTSET"
        and len(node.attributes.get_ints("kernel_shape", [])) == 2
    )
