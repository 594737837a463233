"""Forms of standard ONNX ops that TVM's importer would compile to different numbers: refused by name.

Wrong is worse than refused. `bitc.frontend.onnx_lowering` rewrites the forms it can into ops the importer gets
right; what is left here has no exact lowering yet. Each entry is an op type and a check that returns why the node
cannot be compiled exactly (None: it can). Every rule of `onnx_lowering` whose condition still holds on a node
counts too: that node is a form the rewrite could not do, which the importer would get wrong.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from bitc.errors import BadInputError
from bitc.frontend import onnx_lowering
from bitc.ir import graph_edit

Check = Callable[[ir.Node], str | None]


def _random_dropout(node: ir.Node) -> str | None:
    training = graph_edit.constant(node.inputs[2] if len(node.inputs) > 2 else None)
    if len(node.inputs) < 3 or node.inputs[2] is None or (training is not None and not bool(training)):
        return None
    ratio = graph_edit.constant(node.inputs[1] if len(node.inputs) > 1 else None)
    if training is not None and ratio is not None and float(ratio) == 0.0:
        return None
    return "training-mode Dropout draws a random mask; export the model in inference (eval) mode"


def _roi_align_max(node: ir.Node) -> str | None:
    if node.attributes.get_string("mode", "avg") == "max":
        return "RoiAlign mode='max' is computed differently by TVM's importer; only mode='avg' is supported"
    return None


def _resize(node: ir.Node) -> str | None:
    """TVM resizes by output/input size, not by the given scale, and has no antialiasing filter."""
    x = node.inputs[0] if node.inputs else None
    out = node.outputs[0]
    if x is None or x.shape is None or out.shape is None:
        return None
    sizes_in = [d if isinstance(d, int) else None for d in x.shape]
    sizes_out = [d if isinstance(d, int) else None for d in out.shape]
    if node.attributes.get_int("antialias", 0) and any(
        o is not None and i is not None and o < i for i, o in zip(sizes_in, sizes_out, strict=False)
    ):
        return "antialiased downsampling (antialias=1) has no exact lowering"
    scales = graph_edit.constant(node.inputs[2] if len(node.inputs) > 2 else None)
    if scales is None or scales.size == 0:
        return None
    axes = [a % len(sizes_in) for a in node.attributes.get_ints("axes", range(len(sizes_in)))]
    for axis, scale in zip(axes, scales.reshape(-1).tolist(), strict=False):
        size, resized = sizes_in[axis], sizes_out[axis]
        if size is None or resized is None or float(size * scale).is_integer():
            continue
        if node.attributes.get_string("mode", "nearest") != "nearest" or not _same_nearest(node, size, resized, scale):
            return (
                f"scale {scale:g} on axis {axis} (size {size}) gives a fractional output size, and TVM's importer "
                "resamples by the rounded size instead: give `sizes`, or a scale that divides the size"
            )
    return None


def _same_nearest(node: ir.Node, size: int, resized: int, scale: float) -> bool:
    """Whether nearest resampling picks the same source index for every output index with the given scale as
    with the scale TVM uses (output size / input size), with no coordinate so near a rounding boundary that float32
    arithmetic could tip it: then the result is exact after all."""
    given = _nearest_source(node, size, resized, scale)
    used = _nearest_source(node, size, resized, resized / size)
    if given is None or used is None:
        return given is None and used is None
    rounding = node.attributes.get_string("nearest_mode", "round_prefer_floor")
    boundary = 0.0 if rounding in ("floor", "ceil") else 0.5
    for source in (given, used):
        offset = np.mod(source - boundary, 1.0)
        if np.any(np.minimum(offset, 1.0 - offset) < 1e-3):
            return False
    return np.array_equal(_rounded(given, rounding, size), _rounded(used, rounding, size))


def _nearest_source(node: ir.Node, size: int, resized: int, scale: float) -> np.ndarray | None:
    """The source coordinate of each output index along one axis, by the operator text's coordinate transforms
    (None where the scale does not enter: align_corners, tf_crop_and_resize)."""
    x = np.arange(resized, dtype=np.float64)
    mode = node.attributes.get_string("coordinate_transformation_mode", "half_pixel")
    if mode == "asymmetric":
        return x / scale
    if mode == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if resized > 1 else np.zeros_like(x)
    if mode == "half_pixel_symmetric":
        return size / 2 * (1 - resized / (scale * size)) + (x + 0.5) / scale - 0.5
    if mode == "half_pixel":
        return (x + 0.5) / scale - 0.5
    return None


def _rounded(source: np.ndarray, rounding: str, size: int) -> np.ndarray:
    picked = {
        "floor": np.floor,
        "ceil": np.ceil,
        "round_prefer_ceil": lambda v: np.floor(v + 0.5),
    }.get(rounding, lambda v: np.ceil(v - 0.5))(source)
    return np.clip(picked, 0, size - 1)


def _string_constant(node: ir.Node) -> str | None:
    """TVM's importer turns a string Constant into a zero: refuse rather than compute with it."""
    value = node.attributes.get("value")
    strings = value is not None and value.type == ir.AttributeType.TENSOR and value.value.dtype == ir.DataType.STRING
    if strings or any(name in node.attributes for name in ("value_string", "value_strings")):
        return "string constants have no tensor form in compiled code"
    return None


CHECKS: dict[str, Check] = {
    "Constant": _string_constant,
    "Dropout": _random_dropout,
    "RoiAlign": _roi_align_max,
    "Resize": _resize,
}


def unsupported_reason(node: ir.Node) -> str | None:
    """Why `node` cannot be compiled exactly, or None."""
    if node.domain not in ("", "ai.onnx"):
        return None
    if (check := CHECKS.get(node.op_type)) is not None and (reason := check(node)) is not None:
        return reason
    rule = onnx_lowering.RULES.get(node.op_type)
    if rule is not None and not node.metadata_props.get(onnx_lowering.LOWERED) and rule.applies(node):
        return "this form (its attributes, or an input whose shape or value is not static) has no exact lowering"
    return None


def check_supported(model: ir.Model, source: str) -> None:
    """Refuse, in one line naming the first such node, a model with a node that would compile to wrong numbers."""
    for node in model.graph.all_nodes():
        if (reason := unsupported_reason(node)) is not None:
            name = node.name or "(unnamed)"
            raise BadInputError(f"{source}: node '{name}' ({node.op_type}): {reason}")
