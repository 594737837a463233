"""Capture a PyTorch nn.Module with torch.export and convert it to ONNX (onnx-ir) in memory."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import onnx_ir as ir
import onnx_ir.passes.common as common

from bitc.errors import BadInputError, CompileError, first_line
from bitc.frontend.normalize import normalize

DEFAULT_OPSET = 18


def from_torch(
    module: Any,
    example_inputs: Sequence[Any],
    *,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    opset: int = DEFAULT_OPSET,
    dynamic_shapes: Any = None,
) -> ir.Model:
    """Export `module` (in eval mode) on `example_inputs`; shapes are fixed to the examples' shapes except where
    `dynamic_shapes` (torch.export's form: per input, {axis: torch.export.Dim}) leaves a dim symbolic."""
    try:
        import torch
    except ImportError:
        raise BadInputError("from_torch needs PyTorch: pip install 'bitc[torch]'") from None
    if not isinstance(module, torch.nn.Module):
        raise BadInputError(f"from_torch expects a torch.nn.Module, got {type(module).__name__}")
    module = module.eval()
    name = type(module).__name__
    try:
        with torch.no_grad():
            program = torch.onnx.export(
                module,
                tuple(example_inputs),
                dynamo=True,
                opset_version=opset,
                input_names=list(input_names) if input_names else None,
                output_names=list(output_names) if output_names else None,
                dynamic_shapes=dynamic_shapes,
                verbose=False,
            )
    except Exception as exc:
        raise CompileError(f"torch.onnx.export of {name} failed: {first_line(exc)}") from None
    if program is None:
        raise CompileError(f"torch.onnx.export of {name} returned no program")
    model: ir.Model = program.model
    # The exporter can give a renamed output the name of an existing value; make names unique again.
    common.NameFixPass()(model)
    return normalize(model, source=f"<torch {name}>")
