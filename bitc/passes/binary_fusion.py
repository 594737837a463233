"""Keep activations bit-packed between binary layers: fold the float epilogue + sign into integer thresholds."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common

from bitc import ops
from bitc.ir.graph_edit import add_initializer, constant, replace_output
from bitc.ops.packing import WORD_BITS, words
from bitc.passes.registry import register

INT32 = np.iinfo(np.int32)


@dataclass
class ThresholdReport:
    fused: list[str] = field(default_factory=list)
    flipped_channels: int = 0
    constant_channels: int = 0
    merged_planes: int = 0
    folded_epilogues: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "merged_planes": self.merged_planes,
            "folded_epilogues": self.folded_epilogues,
            "fused": len(self.fused),
            "layers": self.fused,
            "flipped_channels": self.flipped_channels,
            "constant_channels": self.constant_channels,
        }


@register("fuse_binary", phase="binary", order=1, exact=True)
class FuseBinaryThreshold(ir.passes.InPlacePass):
    """Fuse binary layers: summed weight planes → one multi-plane op; scale/bias + next sign → integer thresholds.

    A sum of binary layers over the same packed input (residual binarization's planes) becomes one op with
    `planes` > 1, so the input words are read once for all planes.

    Where a BinaryConv/BinaryDense feeds only BitPack nodes, it emits packed bits directly: bit = dot < T[p, o],
    one plane p per threshold of the BitPack (k-bit activations: a thermometer code, like FINN's MultiThreshold).
    T is found by evaluating the float epilogue exactly as the reference does over every possible dot, so the
    result is bit-identical. A negative scale flips that channel's filter; a zero scale gives a channel that never
    changes, with T = ±INT32_MAX.
    """

    def __init__(self) -> None:
        super().__init__()
        self.report = ThresholdReport()

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.report = ThresholdReport()
        graph = model.graph
        while _merge_planes(graph):
            self.report.merged_planes += 1
        while _fold_epilogue(graph):
            self.report.folded_epilogues += 1
        outputs = set(map(id, graph.outputs))
        for node in list(graph):
            if node.domain != ops.DOMAIN or node.op_type not in ("BinaryConv", "BinaryDense"):
                continue
            attrs = ops.get(node.op_type).attrs(node)
            result = node.outputs[0]
            users = [user for user, _ in result.uses()]
            if attrs["output_format"] != "float" or not users or id(result) in outputs:
                continue
            if not all(u.domain == ops.DOMAIN and u.op_type == "BitPack" for u in users):
                continue
            levels = {tuple(ops.get("BitPack").attrs(u)["thresholds"]) for u in users}
            if len(levels) != 1:  # consumers quantise differently: keep the float output
                continue
            weights, scale, bias = (constant(v) for v in node.inputs[1:4])
            if weights is None or scale is None or bias is None or np.any(scale != scale[:1]):
                continue  # planes of different scale (residual binarization) have no single integer threshold
            self._fuse(graph, node, attrs, users, weights, scale[0], bias, levels.pop())
        modified = bool(self.report.fused or self.report.merged_planes or self.report.folded_epilogues)
        if modified:
            common.RemoveUnusedNodesPass()(model)
        return ir.passes.PassResult(model, modified)

    def _fuse(
        self,
        graph: ir.Graph,
        node: ir.Node,
        attrs: dict[str, Any],
        users: list[ir.Node],
        weights: np.ndarray,
        scale: np.ndarray,
        bias: np.ndarray,
        levels: tuple[float, ...],
    ) -> None:
        planes = weights.shape[0]  # equal-scale planes: the threshold applies to the sum of their dots
        if node.op_type == "BinaryConv":
            reach = planes * int(attrs["in_channels"]) * weights.shape[2] * weights.shape[3]
            flip_mask = _low_bits_mask(int(attrs["in_channels"]), weights.shape[-1])
        else:
            reach = planes * int(attrs["in_features"])
            flip_mask = _low_bits_mask(int(attrs["in_features"]), weights.shape[-1])
        negative = scale < 0
        flipped = weights.copy()
        flipped[:, negative] ^= flip_mask  # dot → −dot for those channels
        thresholds = np.stack([integer_thresholds(np.abs(scale), bias, reach, level) for level in levels])
        self.report.flipped_channels += int(negative.sum())
        self.report.constant_channels += int((scale == 0).sum())
        name = node.name or node.outputs[0].name
        inputs = [
            node.inputs[0],
            add_initializer(graph, flipped, f"{name}__wbits_t"),
            add_initializer(graph, thresholds, f"{name}__threshold"),
        ]
        new_attrs = {k: v for k, v in attrs.items() if k != "output_format"} | {"output_format": "packed"}
        fused = ir.node(node.op_type, inputs, attributes=new_attrs, domain=ops.DOMAIN, name=f"{name}__packed")
        graph.insert_before(node, fused)
        ops.infer_shapes(fused)
        fused.outputs[0].name = f"{name}__bits"
        for user in users:
            ir.convenience.replace_all_uses_with(user.outputs[0], fused.outputs[0])
        self.report.fused.append(node.name)


def _fold_epilogue(graph: ir.Graph) -> bool:
    """BatchNormalization, or Mul/Add by a per-channel or scalar constant, right after a float binary layer
    → folded into its scale and bias (y·a + c applied to Σ scale·dot + bias)."""
    for node in graph:
        if node.domain != ops.DOMAIN or node.op_type not in ("BinaryConv", "BinaryDense"):
            continue
        result = node.outputs[0]
        uses = result.uses()
        if ops.get(node.op_type).attrs(node)["output_format"] != "float" or len(uses) != 1:
            continue
        user = uses[0][0]
        if any(v is result for v in graph.outputs) or user.domain not in ("", "ai.onnx"):
            continue
        channels = int(result.shape[1])
        affine = _affine(user, result, channels, 4 if node.op_type == "BinaryConv" else 2)
        scale, bias = constant(node.inputs[2]), constant(node.inputs[3])
        if affine is None or scale is None or bias is None:
            continue
        a, c = affine
        name = node.name or "binary"
        new_scale = add_initializer(graph, (scale * a[None]).astype(np.float32), f"{name}__scale_f")
        new_bias = add_initializer(graph, (bias * a + c).astype(np.float32), f"{name}__bias_f")
        node.replace_input_with(2, new_scale)
        node.replace_input_with(3, new_bias)
        replace_output(graph, user.outputs[0], result)
        graph.remove(user, safe=True)
        return True
    return False


def _affine(node: ir.Node, x: ir.Value, channels: int, rank: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The node as y = a[c]·x + b[c] over the channel axis (axis 1), if it is one."""
    if node.op_type == "BatchNormalization" and len(node.outputs) == 1 and node.inputs[0] is x:
        params = [constant(v) for v in node.inputs[1:5]]
        if any(p is None for p in params):
            return None
        gamma, beta, mean, var = (p.astype(np.float64) for p in params)
        a = gamma / np.sqrt(var + node.attributes.get_float("epsilon", 1e-5))
        return a, beta - mean * a
    if node.op_type in ("Mul", "Add") and len(node.inputs) == 2:
        other = node.inputs[1] if node.inputs[0] is x else node.inputs[0]
        value = constant(other)
        if value is None or other is x:
            return None
        per_channel = _per_channel(value, channels, rank)
        if per_channel is None:
            return None
        if node.op_type == "Mul":
            return per_channel, np.zeros(channels)
        return np.ones(channels), per_channel
    return None


def _per_channel(value: np.ndarray, channels: int, rank: int) -> np.ndarray | None:
    """A constant that broadcasts along the channel axis only → its [channels] vector."""
    if value.size == 1:
        return np.full(channels, float(value.reshape(-1)[0]))
    shape = (1,) * (rank - value.ndim) + value.shape
    if len(shape) != rank or any(d != 1 for i, d in enumerate(shape) if i != 1) or shape[1] != channels:
        return None
    return value.reshape(-1).astype(np.float64)


def _merge_planes(graph: ir.Graph) -> bool:
    """Add(B1(x), B2(x)) of two float binary layers with the same input and geometry → one op with both planes."""
    for add in graph:
        if add.op_type != "Add" or add.domain not in ("", "ai.onnx") or len(add.inputs) != 2:
            continue
        producers = [value.producer() for value in add.inputs]
        if any(
            p is None or p.domain != ops.DOMAIN or p.op_type not in ("BinaryConv", "BinaryDense") for p in producers
        ):
            continue
        first, second = producers
        if first is second or first.op_type != second.op_type or first.inputs[0] is not second.inputs[0]:
            continue
        attrs = ops.get(first.op_type).attrs(first)
        if attrs != ops.get(second.op_type).attrs(second) or attrs["output_format"] != "float":
            continue
        if any(len(p.outputs[0].uses()) != 1 for p in producers):
            continue
        parts = [[constant(v) for v in p.inputs[1:4]] for p in producers]
        if any(part is None for pair in parts for part in pair) or parts[0][0].shape[1:] != parts[1][0].shape[1:]:
            continue
        name = first.name or "binary"
        inputs = [
            first.inputs[0],
            add_initializer(graph, np.concatenate([parts[0][0], parts[1][0]]), f"{name}__wbits_planes"),
            add_initializer(graph, np.concatenate([parts[0][1], parts[1][1]]), f"{name}__scale_planes"),
            add_initializer(graph, (parts[0][2] + parts[1][2]).astype(np.float32), f"{name}__bias_planes"),
        ]
        merged = ir.node(first.op_type, inputs, attributes=attrs, domain=ops.DOMAIN, name=f"{name}__planes")
        graph.insert_before(add, merged)
        ops.infer_shapes(merged)
        merged.outputs[0].name = f"{name}__planes_out"
        replace_output(graph, add.outputs[0], merged.outputs[0])
        graph.remove(add, safe=True)
        return True
    return False


def integer_thresholds(scale: np.ndarray, bias: np.ndarray, reach: int, level: float = 0.0) -> np.ndarray:
    """T[o] = the smallest dot in [−reach, reach] with float32(dot·scale) + bias ≥ level (scale ≥ 0): the next
    BitPack's bit is −1 exactly where dot < T. Evaluated in float32 like the reference, hence bit-exact."""
    dots = np.arange(-reach, reach + 1, dtype=np.int64)
    values = dots.astype(np.float32)[None, :] * scale.astype(np.float32)[:, None] + bias.astype(np.float32)[:, None]
    non_negative = values >= np.float32(level)
    first = np.argmax(non_negative, axis=1)
    thresholds = np.where(non_negative.any(axis=1), dots[first], INT32.max)
    thresholds = np.where(non_negative.all(axis=1), INT32.min, thresholds)
    return thresholds.astype(np.int32)


def _low_bits_mask(bits: int, word_count: int) -> np.ndarray:
    """Words with the lowest `bits` bits set (the real channels of a packed row)."""
    mask = np.zeros(word_count, dtype=np.uint32)
    full, rest = divmod(bits, WORD_BITS)
    mask[:full] = np.uint32(0xFFFFFFFF)
    if rest:
        mask[full] = np.uint32((1 << rest) - 1)
    assert words(bits) <= word_count
    return mask
