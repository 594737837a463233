"""Shapes of an onnx-ir model's values: ONNX shape inference (strict, with bitc ops' own rules) and the static
shape of a graph input."""

from __future__ import annotations

import logging

import onnx_ir as ir
import onnx_ir.passes.common as common

from bitc import ops
from bitc.errors import BadInputError, first_line


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


def infer_bitc_shapes(model: ir.Model, *, source: str) -> None:
    """onnx's inference stops at bitc nodes: give them their shapes (our rules), then infer the rest again."""
    for node in model.graph:
        if ops.is_bitc(node):
            if node.op_type not in ops.registered():
                raise BadInputError(f"{source}: node '{node.name}': unknown bitc op {node.op_type}")
            try:
                ops.infer_shapes(node)
            except Exception as exc:
                raise BadInputError(f"{source}: node '{node.name}' ({node.op_type}): {first_line(exc)}") from None
    infer_shapes(model, source=source)


def static_shape(value: ir.Value) -> tuple[int, ...]:
    """The dimensions of graph input `value`; a dynamic one is bad input (the user fixes it with --input-shape)."""
    if value.shape is None or not value.shape.is_static():
        raise BadInputError(
            f"input '{value.name}' has dynamic shape {value.shape}; fix it with --input-shape {value.name}=d0,d1,..."
        )
    return tuple(int(d) for d in value.shape)


class _FailureRecorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.error: BaseException | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None and self.error is None:
            self.error = record.exc_info[1]
