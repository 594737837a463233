"""Per-layer accounting of a model: what each weighted op costs (parameters, MACs, bytes) and at what precision.

`bitc inspect` prints it, the artifact's manifest stores it, `bitc report` plots it: what a user looks at to
decide which layers to binarize or prune.
"""

from __future__ import annotations

import math
from typing import Any

import onnx_ir as ir

WEIGHTED_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


def layer_table(model: ir.Model) -> list[dict[str, Any]]:
    """One row per Conv/Gemm/MatMul node (and any node carrying constant weights), in graph order."""
    rows = []
    for node in model.graph:
        if node.domain == "bitc" and node.op_type in ("BinaryConv", "BinaryDense"):
            rows.append(_binary_row(node))
            continue
        if node.domain == "bitc" and node.op_type == "LowBitMatMul":
            rows.append(_lowbit_row(node))
            continue
        if node.domain == "bitc" and node.op_type in ("BlockQuantMatMul", "BlockQuantGather"):
            rows.append(_block_row(node))
            continue
        weights = [v for v in node.inputs if _is_weight(v)]
        if node.op_type not in WEIGHTED_OPS and not weights:
            continue
        params = sum(int(w.const_value.size) for w in weights)
        rows.append(
            {
                "name": node.name or node.outputs[0].name,
                "op": node.op_type if not node.domain else f"{node.domain}::{node.op_type}",
                "precision": _precision(node, weights),
                "params": params,
                "bytes": sum(int(w.const_value.nbytes) for w in weights),
                "macs": macs(node),
            }
        )
    return rows


def _binary_row(node: ir.Node) -> dict[str, Any]:
    """A bit-packed layer: params are weight bits (×planes), bytes what the artifact stores, MACs binary ones."""
    from bitc import ops

    attrs = ops.get(node.op_type).attrs(node)
    weights = node.inputs[1]
    planes = int(weights.shape[0])
    constants = [v for v in node.inputs[1:] if v is not None and v.const_value is not None]
    if node.op_type == "BinaryConv":
        per_output = int(attrs["in_channels"]) * int(weights.shape[2]) * int(weights.shape[3])
        outputs = int(weights.shape[1])
    else:
        per_output, outputs = int(attrs["in_features"]), int(weights.shape[1])
    out_shape = node.outputs[0].shape
    positions = math.prod(int(d) for d in out_shape.dims) // (outputs if attrs["output_format"] == "float" else 1)
    if attrs["output_format"] == "packed":  # packed output: [N, OH, OW, words] or [M, words]
        positions = math.prod(int(d) for d in out_shape.dims[:-1])
    return {
        "name": node.name or node.outputs[0].name,
        "op": f"bitc::{node.op_type}",
        "precision": "1-bit" if planes == 1 else f"{planes}×1-bit",
        "params": planes * outputs * per_output,
        "bytes": sum(int(v.const_value.nbytes) for v in constants),
        "macs": planes * positions * outputs * per_output,
    }


def _lowbit_row(node: ir.Node) -> dict[str, Any]:
    """Low-bit weights × float activations: params are weights (not bits), MACs float ones, bytes as stored."""
    planes, outputs = int(node.inputs[1].shape[0]), int(node.inputs[1].shape[1])
    in_features = node.attributes.get_int("in_features", 0)
    rows = math.prod(int(d) for d in node.outputs[0].shape.dims[:-1])
    return {
        "name": node.name or node.outputs[0].name,
        "op": "bitc::LowBitMatMul",
        "precision": f"{planes}-plane weights",
        "params": outputs * in_features,
        "bytes": sum(int(v.const_value.nbytes) for v in node.inputs[1:] if v is not None and v.const_value is not None),
        "macs": rows * outputs * in_features,
    }


def _block_row(node: ir.Node) -> dict[str, Any]:
    """Block-quantized weights (GGUF / MatMulNBits blocks): params are weights, bytes codes + scales + offsets,
    MACs float ones (none for the embedding lookup)."""
    outputs = int(node.inputs[1].shape[0])
    in_features, bits = node.attributes.get_int("in_features", 0), node.attributes.get_int("bits", 0)
    out = node.outputs[0].shape
    rows = math.prod(int(d) for d in out.dims[:-1]) if out is not None and _static(out) else 0
    return {
        "name": node.name or node.outputs[0].name,
        "op": f"bitc::{node.op_type}",
        "precision": f"{bits}-bit blocks",
        "params": outputs * in_features,
        "bytes": sum(int(v.const_value.nbytes) for v in node.inputs[1:] if v is not None and v.const_value is not None),
        "macs": rows * outputs * in_features if node.op_type == "BlockQuantMatMul" else 0,
    }


def summarize_layers(rows: list[dict[str, Any]]) -> dict[str, Any]:
    total_macs = sum(r["macs"] for r in rows)
    binary_macs = sum(r["macs"] for r in rows if r["precision"].endswith("1-bit"))
    return {
        "layers": len(rows),
        "params": sum(r["params"] for r in rows),
        "bytes": sum(r["bytes"] for r in rows),
        "macs": total_macs,
        "binary_mac_share": binary_macs / total_macs if total_macs else 0.0,
    }


def macs(node: ir.Node) -> int:
    """Multiply-accumulates of one Conv/ConvTranspose/Gemm/MatMul (0 for other ops or unknown shapes)."""
    out = node.outputs[0].shape if node.outputs else None
    if out is None or not _static(out):
        return 0
    if node.op_type in ("Conv", "ConvTranspose"):
        weight = node.inputs[1].shape if len(node.inputs) > 1 and node.inputs[1] is not None else None
        if weight is None or not _static(weight):
            return 0
        per_output = math.prod(int(d) for d in weight.dims[1:])  # C_in/groups × kernel window
        if node.op_type == "ConvTranspose":
            x = node.inputs[0].shape
            return (
                math.prod(int(d) for d in x.dims) * int(weight.dims[1]) * math.prod(weight.dims[2:])
                if _static(x)
                else 0
            )
        return math.prod(int(d) for d in out.dims) * per_output
    if node.op_type in ("Gemm", "MatMul"):
        a = node.inputs[0].shape
        if a is None or not _static(a) or len(a) == 0:
            return 0
        transposed = node.op_type == "Gemm" and node.attributes.get_int("transA", 0)
        k = int(a.dims[0] if transposed and len(a) == 2 else a.dims[-1])
        return math.prod(int(d) for d in out.dims) * k
    return 0


def _precision(node: ir.Node, weights: list[ir.Value]) -> str:
    if node.domain == "bitc":
        return node.attributes.get_string("precision", "1-bit")
    if not weights:
        return "fp32"
    main = max(weights, key=lambda w: w.const_value.size).const_value.dtype  # the weight, not a shape or bias
    names = {ir.DataType.FLOAT: "fp32", ir.DataType.FLOAT16: "fp16", ir.DataType.BFLOAT16: "bf16"}
    return names.get(main, main.name.lower())


def _is_weight(value: ir.Value | None) -> bool:
    """A constant input that is data, not a shape, axis list or index table (those are integer)."""
    return value is not None and value.const_value is not None and not value.const_value.dtype.is_integer()


def _static(shape: ir.Shape) -> bool:
    return all(isinstance(d, int) for d in shape.dims)
