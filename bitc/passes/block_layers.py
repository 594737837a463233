"""Replacing a Linear layer or an embedding lookup by its block-quantized op: the one graph edit `gguf_weights`
(a file's blocks) and `block_quantize` (fitted blocks) share."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from bitc import ops
from bitc.ir.graph_edit import add_initializer, replace_output


def replace_by_block_layer(
    graph: ir.Graph,
    node: ir.Node,
    tables: list[np.ndarray],
    *,
    block_size: int,
    bits: int,
    signed: bool,
    tag: str,
    table_prefix: str,
) -> ir.Value:
    """Put BlockQuantMatMul (for a MatMul or BlockQuantMatMul) or BlockQuantGather (for a Gather or
    BlockQuantGather) on `tables` = codes, scales[, offsets] in place of `node`; returns its output. The new node
    and its output are named `<node>__<tag>`, the tables `<node>__<table_prefix><part>`."""
    name = node.name or node.outputs[0].name
    data = node.inputs[1] if node.op_type == "Gather" else node.inputs[0]  # indices, or x
    inputs = [data] + [
        add_initializer(graph, array, f"{name}__{table_prefix}{part}")
        for array, part in zip(tables, ("codes", "scales", "offsets"), strict=False)
    ]
    layer = ir.node(
        "BlockQuantGather" if node.op_type in ("Gather", "BlockQuantGather") else "BlockQuantMatMul",
        inputs,
        attributes={
            "in_features": tables[1].shape[1] * block_size,
            "block_size": block_size,
            "bits": bits,
            "signed": int(signed),
        },
        domain=ops.DOMAIN,
        name=f"{name}__{tag}",
    )
    layer.outputs[0].name = f"{name}__{tag}"
    graph.insert_before(node, layer)
    ops.infer_shapes(layer)
    replace_output(graph, node.outputs[0], layer.outputs[0])
    graph.remove(node, safe=True)
    return layer.outputs[0]
