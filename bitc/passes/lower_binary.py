"""Recognise binary layers (±1 activations × ±α weights) and lower them to bitc's bit-packed ops."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common

from bitc import ops
from bitc.ir.graph_edit import add_initializer, constant, replace_output
from bitc.ops.packing import pack_conv_weights, pack_dense_weights, words
from bitc.passes.binary_patterns import Packer, scalar, weight_planes
from bitc.passes.registry import register


@dataclass
class LoweringReport:
    lowered: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"lowered": len(self.lowered), "layers": self.lowered, "skipped": self.skipped, "notes": self.notes}


@register("lower_binary", phase="binary", exact=True)
class LowerBinaryLayers(ir.passes.InPlacePass):
    """Lower Conv/Gemm/MatMul on ±1 (or k-bit) activations with ±α / ternary weights to BinaryConv/BinaryDense.

    ±1 activations are recognised as Where(x >= 0, s, −s), Sign(x) (read as sign(0) = +1), a positive multiple of
    either, and MaxPool / Flatten of those (pooled as a bitwise AND on packed words). Symmetric k-bit quantizers
    (QONNX Quant, e.g. 2-bit narrow: −1/0/+1) become thermometer bit planes; ternary weights two ±1 planes, so
    W1A2 and W2A2 run on the same xor/popcount kernels. Weights must be constants whose entries in an output
    channel are ±α (or 0/±α), folded BN included. Explicit Pad with 0 or +s before the conv becomes the op's zero-
    or one-padding.
    """

    def __init__(self) -> None:
        super().__init__()
        self.report = LoweringReport()

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.report = LoweringReport()
        packer = Packer(model.graph)
        for node in list(model.graph):
            if node.op_type == "Conv" and node.domain in ("", "ai.onnx"):
                reason = _lower_conv(model.graph, node, packer)
            elif node.op_type in ("Gemm", "MatMul") and node.domain in ("", "ai.onnx"):
                reason = _lower_dense(model.graph, node, packer)
            else:
                continue
            if reason is None:
                self.report.lowered.append(node.name)
            elif reason:
                self.report.skipped[node.name] = reason
        self.report.notes = sorted(set(packer.notes))
        if packer.made:
            model.opset_imports.setdefault(ops.DOMAIN, ops.DOMAIN_VERSION)
            common.RemoveUnusedNodesPass()(model)
        return ir.passes.PassResult(model, bool(self.report.lowered))


def _lower_conv(graph: ir.Graph, node: ir.Node, packer: Packer) -> str | None:
    """None when lowered; '' when the input is not binary (nothing to say); else why not."""
    x, weight_value = node.inputs[0], node.inputs[1]
    pads = list(node.attributes.get_ints("pads", [0, 0, 0, 0]))
    pad_value = 0
    padder = x.producer()
    if padder is not None and padder.op_type == "Pad" and (padding := _pad_before(padder)) is not None:
        extra, value = padding
        source = padder.inputs[0]
        probe = packer.packed(source, node, create=False) if any(extra) else None
        one = probe is not None and probe.planes == 1 and value == probe.scale  # +1 padding of a ±s tensor
        if probe is not None and (value == 0.0 or one) and (value == 0.0 or not any(pads)):
            x = source
            pad_value = 0 if value == 0.0 else 1
            pads = [a + b for a, b in zip(pads, extra, strict=True)]
    probe = packer.packed(x, node, create=False)
    if probe is None:
        return ""
    if len(probe.shape) != 4:
        return "input is not 4-D"
    weights = constant(weight_value)
    if weights is None or weights.ndim != 4:
        return "weights are not a 4-D constant"
    if node.attributes.get_int("group", 1) != 1:
        return "grouped convolution"
    if set(node.attributes.get_ints("dilations", [1, 1])) != {1}:
        return "dilated convolution"
    if node.attributes.get_string("auto_pad", "NOTSET") != "NOTSET":
        return "auto_pad"
    planes = weight_planes(weights)
    if planes is None:
        return "weights are not ±α (or ternary 0/±α) per output channel"
    signs, alpha = planes
    out_channels, in_channels = weights.shape[:2]
    bias = constant(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else np.zeros(out_channels)
    if bias is None:
        return "bias is not a constant"
    packed = packer.packed(x, node)  # all checks passed: now create the packing nodes
    # every activation plane meets the same weights: tile them along the input channels
    signs = np.concatenate([signs] * packed.planes, axis=2)
    name = node.name or node.outputs[0].name
    inputs = [
        packed.value,
        add_initializer(graph, pack_conv_weights(signs), f"{name}__wbits"),
        add_initializer(graph, (alpha * packed.scale).astype(np.float32), f"{name}__scale"),
        add_initializer(graph, bias.astype(np.float32), f"{name}__bias"),
    ]
    attrs = {
        "in_channels": int(in_channels) * packed.planes,
        "strides": list(node.attributes.get_ints("strides", [1, 1])),
        "pads": pads,
        "pad_value": pad_value,
        "output_format": "float",
    }
    _replace(graph, node, "BinaryConv", inputs, attrs)
    return None


def _pad_before(node: ir.Node) -> tuple[list[int], float] | None:
    """A constant-mode spatial Pad of an NCHW tensor → ([top, left, bottom, right], value)."""
    if node.attributes.get_string("mode", "constant") != "constant":
        return None
    pads = constant(node.inputs[1]) if len(node.inputs) > 1 else None
    if pads is None or pads.size != 8 or any(pads[[0, 1, 4, 5]]):
        return None
    value = scalar(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else 0.0
    if value is None or (len(node.inputs) > 3 and node.inputs[3] is not None):
        return None
    return [int(pads[2]), int(pads[3]), int(pads[6]), int(pads[7])], value


def _lower_dense(graph: ir.Graph, node: ir.Node, packer: Packer) -> str | None:
    if packer.packed(node.inputs[0], node, create=False) is None:
        return ""
    weights = constant(node.inputs[1])
    if weights is None or weights.ndim != 2:
        return "weights are not a 2-D constant"
    alpha_factor, bias = 1.0, None
    if node.op_type == "Gemm":
        if node.attributes.get_int("transA", 0):
            return "Gemm with transA"
        if not node.attributes.get_int("transB", 0):
            weights = weights.T
        alpha_factor = node.attributes.get_float("alpha", 1.0)
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            c = constant(node.inputs[2])
            if c is None or c.size not in (1, weights.shape[0]):
                return "Gemm C is not a constant per-column bias"
            bias = np.broadcast_to(c.reshape(-1), (weights.shape[0],)) * node.attributes.get_float("beta", 1.0)
    else:
        weights = weights.T
    out_features = weights.shape[0]
    planes = weight_planes(weights)
    if planes is None:
        return "weights are not ±α (or ternary 0/±α) per output channel"
    signs, alpha = planes  # [Pw, N, K], [Pw, N]
    packed = packer.packed(node.inputs[0], node)  # all checks passed: now create the packing nodes
    bias = np.zeros(out_features) if bias is None else bias.astype(np.float64)
    scale = alpha * packed.scale * alpha_factor
    if len(packed.shape) == 4:
        # flattened NCHW: K goes from (c, h, w) order to the packed (h, w, plane·C + c, padded to whole words)
        # order; padding bits are +1 on both sides, so each adds +1 to every plane's dot: taken out via the bias
        _, c, h, w = packed.shape
        per_pixel = np.concatenate([signs.reshape(len(signs), out_features, c, h, w)] * packed.planes, axis=2)
        padded = np.ones((len(signs), out_features, h, w, words(packed.planes * c) * 32), dtype=signs.dtype)
        padded[..., : packed.planes * c] = per_pixel.transpose(0, 1, 3, 4, 2)
        signs = padded.reshape(len(signs), out_features, -1)
        bias = bias - (scale * (signs.shape[2] - packed.planes * c * h * w)).sum(axis=0)
    else:
        signs = np.concatenate([signs] * packed.planes, axis=2)
    packed_w = pack_dense_weights(signs)
    in_features = signs.shape[2]
    name = node.name or node.outputs[0].name
    inputs = [
        packed.value,
        add_initializer(graph, packed_w, f"{name}__wbits"),
        add_initializer(graph, scale.astype(np.float32), f"{name}__scale"),
        add_initializer(graph, bias.astype(np.float32), f"{name}__bias"),
    ]
    _replace(graph, node, "BinaryDense", inputs, {"in_features": int(in_features), "output_format": "float"})
    return None


def _replace(graph: ir.Graph, node: ir.Node, op_type: str, inputs: list[ir.Value], attrs: dict[str, Any]) -> None:
    new = ir.node(op_type, inputs, attributes=attrs, domain=ops.DOMAIN, name=f"{node.name}__binary")
    graph.insert_before(node, new)
    ops.infer_shapes(new)
    replace_output(graph, node.outputs[0], new.outputs[0])
    graph.remove(node, safe=True)
