"""Bring any loaded model to the form every pass expects: constants as initializers, a supported opset,
fixed input shapes where the user gave them, and inferred shapes on every value."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import onnx
import onnx.version_converter
import onnx_ir as ir
import onnx_ir.passes.common as common

from bitc.errors import BadInputError, first_line

# Oldest opset we accept at all, and the one older models are upgraded to (the TVM importer's best-covered range).
MIN_OPSET = 7
UPGRADE_TO_OPSET = 13
MAX_OPSET = onnx.defs.onnx_opset_version()


def normalize(model: ir.Model, *, source: str, input_shapes: Mapping[str, Sequence[int]] | None = None) -> ir.Model:
    """Validate and normalise `model` in place (upgrading its opset may return a new model)."""
    graph = model.graph
    if len(graph) == 0:
        raise BadInputError(f"{source}: the graph has no nodes")
    if not graph.outputs:
        raise BadInputError(f"{source}: the graph has no outputs")
    model = _checked_opset(model, source)
    _unknown_negative_dims(model)
    common.RemoveInitializersFromInputsPass()(model)
    common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
    if input_shapes:
        set_input_shapes(model, input_shapes, source=source)
    infer_shapes(model, source=source)
    return model


def set_input_shapes(model: ir.Model, input_shapes: Mapping[str, Sequence[int]], *, source: str) -> None:
    inputs = {value.name: value for value in model.graph.inputs}
    for name, dims in input_shapes.items():
        if name not in inputs:
            raise BadInputError(f"{source}: --input-shape names '{name}', the model's inputs are {list(inputs)}")
        value = inputs[name]
        if value.shape is not None and len(value.shape) != len(dims):
            raise BadInputError(
                f"{source}: input '{name}' has rank {len(value.shape)}, --input-shape gives {len(dims)} dims"
            )
        if any(int(d) <= 0 for d in dims):
            raise BadInputError(f"{source}: input '{name}': dimensions must be positive, got {list(dims)}")
        value.shape = ir.Shape([int(d) for d in dims])


def _unknown_negative_dims(model: ir.Model) -> None:
    """Some exporters write -1 for an unknown dimension (invalid ONNX); treat it as unknown, not as -1."""
    values = [*model.graph.inputs, *model.graph.outputs]
    values += [out for node in model.graph.all_nodes() for out in node.outputs]
    for value in values:
        if value.shape is not None and any(isinstance(d, int) and d < 0 for d in value.shape):
            value.shape = ir.Shape([None if isinstance(d, int) and d < 0 else d for d in value.shape])


def infer_shapes(model: ir.Model, *, source: str) -> None:
    """ONNX shape inference (strict); an inconsistency (mismatched shapes, bad attributes) is bad input.

    onnx-ir's pass logs a failure and leaves the model unchanged; the failure is caught from its log record.
    """
    failures = _FailureRecorder()
    logger = logging.getLogger(common.shape_inference.__name__)
    logger.addHandler(failures)
    try:
        common.ShapeInferencePass(check_type=True, strict_mode=True, data_prop=True)(model)
    finally:
        logger.removeHandler(failures)
    if failures.error is not None:
        raise BadInputError(f"{source}: shape inference failed: {first_line(failures.error)}")


class _FailureRecorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.error: BaseException | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None and self.error is None:
            self.error = record.exc_info[1]


def _checked_opset(model: ir.Model, source: str) -> ir.Model:
    version = model.opset_imports.get("", model.opset_imports.get("ai.onnx"))
    if version is None:
        raise BadInputError(f"{source}: the model imports no version of the default ONNX opset")
    if version < MIN_OPSET:
        raise BadInputError(f"{source}: opset {version} is older than the oldest supported ({MIN_OPSET})")
    if version > MAX_OPSET:
        raise BadInputError(f"{source}: opset {version} is newer than this onnx package supports ({MAX_OPSET})")
    if version >= UPGRADE_TO_OPSET:
        return model
    try:
        upgraded = onnx.version_converter.convert_version(ir.to_proto(model), UPGRADE_TO_OPSET)
    except Exception:
        return model  # the importer still handles the old opset; upgrading is best effort
    return ir.from_proto(upgraded)
