"""Bring any loaded model to the form every pass expects: constants as initializers, a supported opset,
fixed input shapes where the user gave them, and inferred shapes on every value."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import onnx
import onnx.version_converter
import onnx_ir as ir
import onnx_ir.passes.common as common

from bitc import ops
from bitc.errors import BadInputError
from bitc.frontend import narrow_types, onnx_lowering, qonnx
from bitc.ir.shapes import infer_bitc_shapes, infer_shapes

# Oldest opset we accept at all, and the one older models are upgraded to (the TVM importer's best-covered range).
MIN_OPSET = 7
UPGRADE_TO_OPSET = 13
MAX_OPSET = onnx.defs.onnx_opset_version()
# Largest tensor bitc accepts: far beyond any CPU's memory, and its size arithmetic cannot overflow int64 in TVM.
MAX_TENSOR_BYTES = 2**40


def normalize(model: ir.Model, *, source: str, input_shapes: Mapping[str, Sequence[int]] | None = None) -> ir.Model:
    """Validate and normalise `model` in place (upgrading its opset may return a new model)."""
    graph = model.graph
    if len(graph) == 0:
        raise BadInputError(f"{source}: the graph has no nodes")
    if not graph.outputs:
        raise BadInputError(f"{source}: the graph has no outputs")
    _check_dataflow(graph, source)
    model = _checked_opset(model, source)
    _drop_trailing_omitted_inputs(model)
    _unknown_negative_dims(model)
    common.RemoveInitializersFromInputsPass()(model)
    common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
    _initializer_shapes_from_data(model)
    if qonnx.has_qonnx(model):
        qonnx.to_standard_onnx(model, source)
    if input_shapes:
        set_input_shapes(model, input_shapes, source=source)
    infer_shapes(model, source=source)
    if any(ops.is_bitc(node) for node in model.graph):
        infer_bitc_shapes(model, source=source)
    if onnx_lowering.lower_unsupported_forms(model):
        infer_shapes(model, source=source)
    if narrow_types.emulate_narrow_types(model, source):
        infer_bitc_shapes(model, source=source)
    _check_tensor_sizes(model, source)
    return model


def _check_dataflow(graph: ir.Graph, source: str) -> None:
    """Every node input must come from a graph input, an initializer or an earlier node, and every graph output
    must exist: the ONNX checker says so for files, but an in-memory model (or check=False) skips it, and a cycle
    or a missing initializer read from a file shows up here as a value nothing produces."""
    available: set[ir.Value] = {*graph.inputs, *graph.initializers.values()}
    for index, node in enumerate(graph):
        for value in node.inputs:
            if value is not None and value not in available:
                raise BadInputError(
                    f"{source}: node '{node.name or index}' ({node.op_type}) reads '{value.name}', which no graph "
                    "input, initializer or earlier node produces (missing initializer, or a cycle)"
                )
        available.update(node.outputs)
    for value in graph.outputs:
        if value not in available:
            raise BadInputError(f"{source}: graph output '{value.name}' is not produced by any node")


def _check_tensor_sizes(model: ir.Model, source: str) -> None:
    """Refuse absurd static shapes (e.g. [2**40, 2**40]) here, before anything sizes a buffer from them."""
    graph = model.graph
    values = [*graph.inputs, *graph.initializers.values(), *(out for node in graph for out in node.outputs)]
    for value in values:
        size = _static_bytes(value)
        if size is not None and size > MAX_TENSOR_BYTES:
            raise BadInputError(
                f"{source}: value '{value.name}' of shape {list(value.shape)} would take {size} bytes, "
                f"more than bitc supports ({MAX_TENSOR_BYTES >> 40} TiB)"
            )


def _static_bytes(value: ir.Value) -> int | None:
    """Bytes of a value whose dimensions are all known (one byte per element when its type has no fixed width)."""
    if value.shape is None or not value.shape.is_static():
        return None
    try:
        bits = value.dtype.bitwidth if value.dtype is not None else 8
    except TypeError:
        bits = 8
    return (math.prod(int(d) for d in value.shape) * bits + 7) // 8


def set_input_shapes(model: ir.Model, input_shapes: Mapping[str, Sequence[int | str | None]], *, source: str) -> None:
    """Fix the given inputs' dims (an int fixes one; a name or None leaves the model's own dim in place)."""
    inputs = {value.name: value for value in model.graph.inputs}
    for name, dims in input_shapes.items():
        if name not in inputs:
            raise BadInputError(f"{source}: --input-shape names '{name}', the model's inputs are {list(inputs)}")
        value = inputs[name]
        if value.shape is not None and len(value.shape) != len(dims):
            raise BadInputError(
                f"{source}: input '{name}' has rank {len(value.shape)}, --input-shape gives {len(dims)} dims"
            )
        if any(type(d) is int and d <= 0 for d in dims):
            raise BadInputError(f"{source}: input '{name}': dimensions must be positive, got {list(dims)}")
        # a dim given as a name or None keeps the model's own (a named --dim fixed only the others)
        kept = value.shape or [None] * len(dims)
        value.shape = ir.Shape([int(d) if isinstance(d, int) else old for d, old in zip(dims, kept, strict=True)])
    # shapes recorded for the exported input size are stale now: inference derives them again
    for node in model.graph.all_nodes():
        for output in node.outputs:
            output.shape = None


def _unknown_negative_dims(model: ir.Model) -> None:
    """Some exporters write -1 for an unknown dimension (invalid ONNX); treat it as unknown, not as -1."""
    values = [*model.graph.inputs, *model.graph.outputs]
    values += [out for node in model.graph.all_nodes() for out in node.outputs]
    for value in values:
        if value.shape is not None and any(isinstance(d, int) and d < 0 for d in value.shape):
            value.shape = ir.Shape([None if isinstance(d, int) and d < 0 else d for d in value.shape])


def _initializer_shapes_from_data(model: ir.Model) -> None:
    """A weight's shape is its tensor's, whatever a stale value_info entry in the file claims."""
    for value in model.graph.initializers.values():
        if value.const_value is not None:
            value.shape = ir.Shape(value.const_value.shape)
            value.dtype = value.const_value.dtype


def _checked_opset(model: ir.Model, source: str) -> ir.Model:
    version = model.opset_imports.get("", model.opset_imports.get("ai.onnx"))
    if version is None:
        raise BadInputError(f"{source}: the model imports no version of the default ONNX opset")
    if version > MAX_OPSET:
        raise BadInputError(f"{source}: opset {version} is newer than this onnx package supports ({MAX_OPSET})")
    if version >= UPGRADE_TO_OPSET:
        return model
    try:
        upgraded = ir.from_proto(onnx.version_converter.convert_version(ir.to_proto(model), UPGRADE_TO_OPSET))
    except Exception:
        if version < MIN_OPSET:  # the importer cannot read these: upgrading is the only way in
            raise BadInputError(
                f"{source}: opset {version} is older than the oldest supported ({MIN_OPSET}) and onnx's version "
                "converter could not upgrade it"
            ) from None
        return model  # the importer still handles the old opset; upgrading is best effort
    if _interface(upgraded) != _interface(model):  # the Scan-8 adapter drops the batch axis of the graph's inputs
        if version < MIN_OPSET:
            raise BadInputError(
                f"{source}: opset {version} is older than the oldest supported ({MIN_OPSET}) and onnx's version "
                "converter changes the model's input or output shapes"
            )
        return model
    base_dir = _external_data_dir(model)
    if base_dir:  # the round trip through protobuf forgets where external data lives
        ir.external_data.set_base_dir(upgraded.graph, base_dir)
    return upgraded


def _interface(model: ir.Model) -> list[tuple[str, str]]:
    """Names, types and shapes of the graph's inputs and outputs: what an upgrade must not change."""
    return [(str(v.name), str(v.type), str(v.shape)) for v in [*model.graph.inputs, *model.graph.outputs]]


def _external_data_dir(model: ir.Model) -> str | os.PathLike | None:
    """The folder the model's external tensors (initializers or Constant values) are read from, if any."""
    tensors = [value.const_value for value in model.graph.initializers.values()]
    tensors += [attr.value for node in model.graph.all_nodes() for attr in node.attributes.values()]
    return next((t.base_dir for t in tensors if isinstance(t, ir.ExternalTensor) and t.base_dir), None)


def _drop_trailing_omitted_inputs(model: ir.Model) -> None:
    """`Conv(x, w, "")` is `Conv(x, w)`; the rewrite rules of the passes expect the shorter form (an omitted
    trailing input otherwise reaches them as None and crashes e.g. BatchNorm folding)."""
    for node in model.graph.all_nodes():
        count = len(node.inputs)
        while count and node.inputs[count - 1] is None:
            count -= 1
        node.resize_inputs(count)
