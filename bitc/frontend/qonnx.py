"""QONNX (Brevitas export) → standard ONNX: BipolarQuant and Quant nodes become ordinary ops.

Quantizers on constants (weights) are evaluated here with qonnx's formulas, so a binary weight arrives at the
passes as a ±α initializer. Quantizers on activations become standard ops with the same semantics:
BipolarQuant(x, s) → Where(x >= 0, 1, -1)·s (sign(0) = +1), and Quant → clip(round(x/s + z)) − z)·s. The
binary-layer recognition in `passes/lower_binary` then matches the Where form, as it matches torch's.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from bitc.errors import BadInputError
from bitc.ir.graph_edit import add_initializer, constant, replace_output

QONNX_DOMAINS = {"qonnx.custom_op.general", "finn.custom_op.general", "onnx.brevitas"}
_ROUNDING = {
    "ROUND": np.round,
    "HALF_EVEN": np.round,
    "CEIL": np.ceil,
    "FLOOR": np.floor,
    "DOWN": np.fix,
    "UP": lambda x: np.sign(x) * np.ceil(np.abs(x)),
    "HALF_UP": lambda x: np.sign(x) * np.floor(np.abs(x) + 0.5),
    "HALF_DOWN": lambda x: np.sign(x) * np.ceil(np.abs(x) - 0.5),
}
_ONNX_ROUNDING = {"ROUND", "HALF_EVEN", "CEIL", "FLOOR"}


def is_qonnx(node: ir.Node) -> bool:
    return node.domain in QONNX_DOMAINS


def has_qonnx(model: ir.Model) -> bool:
    return any(is_qonnx(node) for node in model.graph.all_nodes())


def to_standard_onnx(model: ir.Model, source: str) -> int:
    """Rewrite every QONNX quantizer in place; returns how many were rewritten."""
    count = 0
    for node in list(model.graph):
        if not is_qonnx(node):
            continue
        if node.op_type == "BipolarQuant":
            _bipolar(model.graph, node, source)
        elif node.op_type in ("Quant", "IntQuant"):
            _quant(model.graph, node, source)
        else:
            raise BadInputError(
                f"{source}: node '{node.name}': QONNX op {node.op_type} (domain {node.domain}) is not supported; "
                "supported: BipolarQuant, Quant"
            )
        count += 1
    for domain in QONNX_DOMAINS:
        model.opset_imports.pop(domain, None)
    return count


def bipolar_quant(x: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """qonnx's BipolarQuant: x >= 0 → +scale, else −scale."""
    return (np.where(x >= 0, 1.0, -1.0) * scale).astype(np.float32)


def int_quant(
    x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, bits: float, signed: int, narrow: int, rounding: str
) -> np.ndarray:
    """qonnx's Quant: clamp to the integer range, round, dequantise (1-bit signed is bipolar)."""
    y = x / scale + zero_point
    if bits == 1 and signed:
        y = np.where(y >= 0, 1.0, -1.0)
    else:
        low, high = integer_range(bits, signed, narrow)
        y = _ROUNDING[rounding](np.clip(y, low, high))
    return ((y - zero_point) * scale).astype(np.float32)


def integer_range(bits: float, signed: int, narrow: int) -> tuple[float, float]:
    bits = int(bits)
    if signed:
        return float(-(2 ** (bits - 1)) + (1 if narrow else 0)), float(2 ** (bits - 1) - 1)
    return 0.0, float(2**bits - 1 - (1 if narrow else 0))


def _replace_with_constant(graph: ir.Graph, node: ir.Node, array: np.ndarray) -> None:
    output = node.outputs[0]
    replace_output(graph, output, add_initializer(graph, array.astype(np.float32), f"{output.name}__q"))
    graph.remove(node, safe=True)


def _bipolar(graph: ir.Graph, node: ir.Node, source: str) -> None:
    x, scale = node.inputs[0], constant(node.inputs[1])
    if scale is None:
        raise BadInputError(f"{source}: node '{node.name}': BipolarQuant scale must be a constant")
    if (weights := constant(x)) is not None:
        _replace_with_constant(graph, node, bipolar_quant(weights, scale))
        return
    tape = ir.tape.Tape()
    zero = tape.initializer(ir.tensor(np.zeros((), np.float32), name=f"{node.name}__zero"))
    plus = tape.initializer(ir.tensor(np.ones((), np.float32), name=f"{node.name}__plus"))
    minus = tape.initializer(ir.tensor(-np.ones((), np.float32), name=f"{node.name}__minus"))
    sign = tape.op("Where", [tape.op("GreaterOrEqual", [x, zero]), plus, minus])
    if not np.all(scale == 1):
        sign = tape.op("Mul", [sign, tape.initializer(ir.tensor(scale.astype(np.float32), name=f"{node.name}__s"))])
    _splice(graph, node, tape, sign)


def _quant(graph: ir.Graph, node: ir.Node, source: str) -> None:
    x = node.inputs[0]
    params = [constant(v) for v in node.inputs[1:4]]
    if any(p is None for p in params):
        raise BadInputError(f"{source}: node '{node.name}': Quant scale, zero point and bit width must be constants")
    scale, zero_point, bits = params
    signed = int(node.attributes.get_int("signed", 1))
    narrow = int(node.attributes.get_int("narrow", 0))
    rounding = node.attributes.get_string("rounding_mode", "ROUND").upper()
    if rounding not in _ROUNDING or bits.size != 1:
        raise BadInputError(f"{source}: node '{node.name}': Quant with rounding_mode {rounding} is not supported")
    bits_value = float(bits.reshape(-1)[0])
    if (weights := constant(x)) is not None:
        _replace_with_constant(graph, node, int_quant(weights, scale, zero_point, bits_value, signed, narrow, rounding))
        return
    if bits_value == 1 and signed:
        _bipolar_from_quant(graph, node, scale, zero_point)
        return
    if rounding not in _ONNX_ROUNDING:
        raise BadInputError(
            f"{source}: node '{node.name}': Quant rounding_mode {rounding} on activations is not supported"
        )
    low, high = integer_range(bits_value, signed, narrow)
    tape = ir.tape.Tape()

    def const(array: np.ndarray | float, tag: str) -> ir.Value:
        return tape.initializer(ir.tensor(np.asarray(array, np.float32), name=f"{node.name}__{tag}"))

    y = tape.op("Add", [tape.op("Div", [x, const(scale, "scale")]), const(zero_point, "zp")])
    y = tape.op("Clip", [y, const(low, "low"), const(high, "high")])
    y = tape.op({"CEIL": "Ceil", "FLOOR": "Floor"}.get(rounding, "Round"), [y])
    y = tape.op("Mul", [tape.op("Sub", [y, const(zero_point, "zp2")]), const(scale, "scale2")])
    _splice(graph, node, tape, y)


def _bipolar_from_quant(graph: ir.Graph, node: ir.Node, scale: np.ndarray, zero_point: np.ndarray) -> None:
    """A 1-bit signed Quant is bipolar on x/s + z: the sign flips at x = −z·s."""
    tape = ir.tape.Tape()
    x = node.inputs[0]
    threshold = tape.initializer(ir.tensor((-zero_point * scale).astype(np.float32), name=f"{node.name}__t"))
    plus = tape.initializer(ir.tensor(((1 - zero_point) * scale).astype(np.float32), name=f"{node.name}__plus"))
    minus = tape.initializer(ir.tensor(((-1 - zero_point) * scale).astype(np.float32), name=f"{node.name}__minus"))
    _splice(graph, node, tape, tape.op("Where", [tape.op("GreaterOrEqual", [x, threshold]), plus, minus]))


def _splice(graph: ir.Graph, node: ir.Node, tape: ir.tape.Tape, result: ir.Value) -> None:
    """Insert the tape's nodes before `node`, route its users to `result`, drop `node`."""
    for initializer in tape.initializers:
        graph.register_initializer(initializer)
    graph.insert_before(node, tape.nodes)
    output = node.outputs[0]
    result.name = output.name + "__std" if output.name else None
    replace_output(graph, output, result)
    graph.remove(node, safe=True)
