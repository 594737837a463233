"""Write torch modules to ONNX files with the dynamo exporter (what `bitc.frontend.from_torch` uses too)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx_ir as ir

from bitc.frontend import from_torch


def export_onnx(
    module: Any,
    example_inputs: Sequence[Any],
    path: str | os.PathLike,
    *,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
) -> Path:
    """Export with torch.export → ONNX and save (without the exporter's per-node stack traces); returns the path."""
    model = from_torch(module, example_inputs, input_names=input_names, output_names=output_names)
    for node in model.graph.all_nodes():  # the exporter's stack traces name files on the exporting machine
        node.metadata_props.clear()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ir.save(model, path)
    return path
