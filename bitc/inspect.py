"""What `bitc inspect` reports about an ONNX model or a `.bitc` artifact, as plain data."""

from __future__ import annotations

import collections
import zipfile
from pathlib import Path
from typing import Any

from bitc.errors import BadInputError
from bitc.layers import layer_table, summarize_layers


def inspect_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: no such file")
    if zipfile.is_zipfile(path):
        return inspect_artifact(path)
    return inspect_onnx(path)


def inspect_artifact(path: Path) -> dict[str, Any]:
    from bitc.runtime.artifact import read_manifest

    manifest = read_manifest(path)
    return {"kind": "artifact", "path": str(path), "size_bytes": path.stat().st_size, "manifest": manifest}


def inspect_onnx(path: Path) -> dict[str, Any]:

    from bitc.frontend import load_onnx

    model = load_onnx(path)
    ops = collections.Counter(
        f"{node.domain}::{node.op_type}" if node.domain else node.op_type for node in model.graph.all_nodes()
    )
    params = sum(int(v.const_value.size) for v in model.graph.initializers.values() if v.const_value is not None)
    param_bytes = sum(int(v.const_value.nbytes) for v in model.graph.initializers.values() if v.const_value)
    layers = layer_table(model)
    return {
        "kind": "onnx",
        "path": str(path),
        "size_bytes": path.stat().st_size,
        "producer": f"{model.producer_name or ''} {model.producer_version or ''}".strip(),
        "opsets": dict(model.opset_imports),
        "inputs": [_value(v) for v in model.graph.inputs],
        "outputs": [_value(v) for v in model.graph.outputs],
        "nodes": len(model.graph),
        "ops": dict(ops.most_common()),
        "parameters": params,
        "parameter_bytes": param_bytes,
        "ir_version": model.ir_version,
        "summary": summarize_layers(layers),
        "layers": layers,
    }


def _value(value: Any) -> dict[str, Any]:
    shape = [d if isinstance(d, int) else str(d) for d in value.shape] if value.shape is not None else None
    dtype = value.dtype.numpy().name if value.dtype is not None else None
    return {"name": value.name, "shape": shape, "dtype": dtype}
