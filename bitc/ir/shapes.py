"""Shapes of an onnx-ir model's values: ONNX shape inference (strict, with bitc ops' own rules) and the static
shape of a graph input."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common

from bitc import ops
from bitc.errors import BadInputError, first_line
from bitc.ir.graph_edit import add_initializer


def infer_shapes(model: ir.Model, *, source: str) -> None:
    """ONNX shape inference (strict); an inconsistency (mismatched shapes, bad attributes) is bad input.

    onnx's inference skips ops it has no schema for; the weight-only quantized products (`twin_shapes`) are seen
    through by standard twins, so the values behind them get shapes in the same run. onnx-ir's pass logs a
    failure and leaves the model unchanged; the failure is caught from its log record.
    """
    failures = _FailureRecorder()
    logger = logging.getLogger(common.shape_inference.__name__)
    logger.addHandler(failures)
    try:
        with _standard_twins(model):
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


def twin_shapes(node: ir.Node) -> tuple[str, list[int]] | None:
    """A node whose output shape a standard op gives, as (that op: MatMul or Gather, its constant operand's shape):
    onnxruntime's MatMulNBits and bitc's BlockQuantMatMul (x @ [K, N]), BlockQuantGather ([N, K] rows)."""
    attrs = node.attributes
    if (node.domain, node.op_type) == ("com.microsoft", "MatMulNBits"):
        k, n = attrs.get_int("K"), attrs.get_int("N")
        return ("MatMul", [k, n]) if k is not None and n is not None else None
    if ops.is_bitc(node) and node.op_type in ("BlockQuantMatMul", "BlockQuantGather"):
        codes, k = node.inputs[1].shape if len(node.inputs) > 1 else None, attrs.get_int("in_features")
        if codes is None or not isinstance(codes[0], int) or k is None:
            return None
        return ("MatMul", [k, codes[0]]) if node.op_type == "BlockQuantMatMul" else ("Gather", [codes[0], k])
    return None


@contextlib.contextmanager
def _standard_twins(model: ir.Model) -> Iterator[None]:
    """While inside: the consumers of each `twin_shapes` node read a standard twin of it, MatMul(x, ·) or
    Gather(·, ids) of ConstantOfShape(its operand's shape); on leaving, the node's output takes the twin's
    dtype and shape and its consumers back, and the twins go."""
    graph = model.graph
    twins = []
    for node in list(graph):
        if not node.outputs or (twin := twin_shapes(node)) is None:
            continue
        op_type, operand = twin
        size = add_initializer(graph, np.array(operand, np.int64), f"{node.name or node.op_type}__twin_shape")
        fill = ir.node("ConstantOfShape", [size], attributes={"value": ir.tensor(np.zeros(1, np.float32))})
        data = node.inputs[0]
        inputs = [data, fill.outputs[0]] if op_type == "MatMul" else [fill.outputs[0], data]
        standard = ir.node(op_type, inputs)
        graph.insert_before(node, [fill, standard])
        node.outputs[0].replace_all_uses_with(standard.outputs[0], replace_graph_outputs=True)
        twins.append((node, fill, standard, size))
    try:
        yield
    finally:
        for node, fill, standard, size in twins:
            out, twin_out = node.outputs[0], standard.outputs[0]
            if twin_out.shape is not None:
                out.shape, out.dtype = twin_out.shape, twin_out.dtype
            twin_out.replace_all_uses_with(out, replace_graph_outputs=True)
            graph.remove([standard, fill], safe=True)
            del graph.initializers[size.name]


class _FailureRecorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.error: BaseException | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None and self.error is None:
            self.error = record.exc_info[1]
