"""onnx-ir model → TVM Relax IRModule, through TVM's public ONNX importer; unsupported ops are named."""

from __future__ import annotations

import onnx_ir as ir

from bitc.errors import BadInputError, CompileError, first_line


def to_relax(model: ir.Model, source: str = "model"):
    """Import the (already normalised, static-shape) model with its weights bound as constants."""
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    ir.external_data.load_to_model(model)  # TVM would resolve external paths from the working directory
    proto = ir.to_proto(model)
    opset = model.opset_imports.get("", None)
    try:
        return from_onnx(proto, opset=opset, keep_params_in_input=False)
    except tvm.error.OpNotImplemented as exc:
        raise BadInputError(_unsupported_message(model, source, str(exc))) from None
    except Exception as exc:
        raise CompileError(f"{source}: TVM's ONNX importer failed: {first_line(exc)}") from None


def _unsupported_message(model: ir.Model, source: str, text: str) -> str:
    """Name each unsupported op with its domain and first node, and list what the importer does support."""
    listed = text.rsplit(":", 1)[-1]
    op_types = {name.strip() for name in listed.split(",") if name.strip()}
    culprits = []
    for op_type in sorted(op_types):
        node = next((n for n in model.graph.all_nodes() if n.op_type == op_type), None)
        domain = (node.domain if node else "") or "ai.onnx"
        culprits.append(f"{op_type} (domain {domain}, node '{node.name if node else '?'}')")
    supported = supported_ops()
    hint = f"; supported ops: {', '.join(supported)}" if supported else ""
    return f"{source}: unsupported op {', '.join(culprits)}{hint}"


def supported_ops() -> list[str]:
    """Op types TVM's ONNX importer converts (empty if its private table moved: the message then omits it)."""
    try:
        from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

        return sorted(_get_convert_map())
    except Exception:
        return []
