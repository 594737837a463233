"""Post-training binarization of a float model by a policy: which layers, how many weight planes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from bitc.errors import BadInputError
from bitc.ir.graph_edit import add_initializer, constant, replace_output
from bitc.passes import verify
from bitc.passes.options import configure, option
from bitc.passes.registry import register

_LAYER_OPS = ("Conv", "Gemm", "MatMul")


@dataclass
class BinarizeReport:
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    kept: dict[str, str] = field(default_factory=dict)
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        report = {"binarized": len(self.layers), "layers": self.layers, "kept_in_float": self.kept}
        return report | ({"note": self.note} if self.note else {})


def residual_planes(weights: np.ndarray, planes: int) -> tuple[np.ndarray, np.ndarray]:
    """W ≈ Σᵢ αᵢ·Bᵢ per output channel (axis 0): Bᵢ = sign of what the previous planes left, αᵢ = its mean |·|.
    Returns signs [planes, *W.shape] (±1) and scales [planes, O]."""
    rest = weights.astype(np.float64)
    signs, scales = [], []
    for _ in range(planes):
        sign = np.where(rest >= 0, 1.0, -1.0)
        alpha = np.abs(rest).reshape(rest.shape[0], -1).mean(axis=1)
        signs.append(sign)
        scales.append(alpha)
        rest = rest - alpha.reshape(-1, *([1] * (rest.ndim - 1))) * sign
    return np.stack(signs), np.stack(scales)


@register(
    "binarize",
    phase="quantize",
    order=1,
    requires=("lower_binary", "fuse_binary"),
    switch=(
        "--binarize",
        "binarize a float model (post-training): all Conv/Gemm/MatMul but the first and last, sign activations",
    ),
)
class Binarize(ir.passes.InPlacePass):
    """Binarize float Conv/Gemm/MatMul layers (post-training): sign activations, W ≈ Σ αᵢ·Bᵢ (1-4 planes).

    Default policy: every Conv/Gemm/MatMul with constant weights except the first and the last layer (and grouped
    convs, which stay float). `layers` names exactly which to binarize, `exclude` which to keep. `activations`:
    "sign" (1-bit, the fast xor/popcount path) or "float" (weights only). The rewrite is standard ONNX
    (Where-sign + one conv per plane, summed), which `lower_binary` then turns into packed kernels; the report
    gives each layer's relative weight error.
    """

    @dataclass(frozen=True)
    class Options:
        planes: int = option(1, "weight planes W ≈ Σ αᵢ·Bᵢ, 1-4 (default 1)", flag="--binarize-planes", metavar="K")
        activations: str = option(
            "sign",
            "'sign' (1-bit, xor/popcount) or 'float' (weights only)",
            flag="--binarize-weights-only",
            const="float",
            flag_help="keep activations in float",
        )
        layers: list[str] | None = option(
            None, "binarize exactly these layers", flag="--binarize-layers", metavar="NODE,..."
        )
        exclude: list[str] | None = option(
            None, "layers to keep in float", flag="--binarize-exclude", metavar="NODE,..."
        )
        keep_first_last: bool = option(True, "keep the first and the last layer in float")
        measure_error: bool = option(True, "report each layer's relative weight error")

        def __post_init__(self) -> None:
            if not 1 <= int(self.planes) <= 4:
                raise BadInputError(f"binarize: planes must be 1-4, got {self.planes}")
            if self.activations not in ("sign", "float"):
                raise BadInputError(f"binarize: activations must be 'sign' or 'float', got {self.activations!r}")

    def __init__(self, **options: Any) -> None:
        super().__init__()
        o = self.options = configure(self, options)
        self.planes = int(o.planes)
        self.activations = o.activations
        self.layers = list(o.layers) if o.layers is not None else None
        self.exclude = set(o.exclude or [])
        self.keep_first_last = o.keep_first_last
        self.measure_error = o.measure_error
        self.report = BinarizeReport()
        self._signs: dict[int, ir.Value] = {}

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.report = BinarizeReport()
        self._signs = {}
        graph = model.graph
        candidates = [n for n in graph if n.op_type in _LAYER_OPS and n.domain in ("", "ai.onnx")]
        if self.layers is not None:
            unknown = set(self.layers) - {n.name for n in candidates}
            if unknown:
                raise BadInputError(f"binarize: no Conv/Gemm/MatMul named {', '.join(sorted(unknown))}")
        before = ir.to_proto(model) if self.measure_error else None
        outputs: dict[str, tuple[str, ir.Value]] = {}
        for index, node in enumerate(candidates):
            reason = self._excluded(node, index, len(candidates))
            if reason:
                self.report.kept[node.name] = reason
                continue
            weights = constant(node.inputs[1])
            original_output = node.outputs[0].name
            self.report.layers[node.name], new_output = self._binarize(graph, node, weights)
            outputs[node.name] = (original_output, new_output)
        if before is not None and outputs:
            errors, self.report.note = verify.measure_output_errors(before, model, outputs)
            for name, error in errors.items():
                self.report.layers[name]["output_rel_error"] = error
        return ir.passes.PassResult(model, bool(self.report.layers))

    def _excluded(self, node: ir.Node, index: int, count: int) -> str:
        if self.layers is not None:
            return "" if node.name in self.layers else "not listed"
        if node.name in self.exclude:
            return "excluded"
        if self.keep_first_last and index == 0:
            return "first layer"
        if self.keep_first_last and index == count - 1:
            return "last layer"
        weights = constant(node.inputs[1])
        if weights is None:
            return "weights not constant"
        if node.op_type == "Conv" and node.attributes.get_int("group", 1) != 1:
            return "grouped conv"
        if node.op_type == "Gemm" and node.attributes.get_int("transA", 0):
            return "Gemm with transA"
        if node.op_type == "MatMul" and (weights.ndim != 2 or len(node.inputs[0].shape or []) != 2):
            return "MatMul is not 2-D"
        return ""

    def _binarize(self, graph: ir.Graph, node: ir.Node, weights: np.ndarray) -> tuple[dict[str, Any], ir.Value]:
        # per-output-channel axis first; MatMul / Gemm without transB keep outputs in the last axis
        transposed = node.op_type == "MatMul" or (node.op_type == "Gemm" and not node.attributes.get_int("transB", 0))
        oriented = weights.T if transposed else weights
        signs, scales = residual_planes(oriented, self.planes)
        approx = np.einsum("po,po...->o...", scales, signs)
        error = float(np.linalg.norm(approx - oriented) / max(np.linalg.norm(oriented), 1e-30))
        x = node.inputs[0]
        if self.activations == "sign":
            if id(x) not in self._signs:
                self._signs[id(x)] = _sign(graph, node, x)
            x = self._signs[id(x)]
        name = node.name or node.outputs[0].name
        total = None
        for plane in range(self.planes):
            plane_weights = scales[plane].reshape(-1, *([1] * (oriented.ndim - 1))) * signs[plane]
            plane_weights = (plane_weights.T if transposed else plane_weights).astype(np.float32)
            w = add_initializer(graph, plane_weights, f"{name}__plane{plane}")
            inputs = [x, w, *(node.inputs[2:] if plane == 0 else [])]
            layer = ir.node(node.op_type, inputs, attributes=dict(node.attributes), name=f"{name}__plane{plane}")
            layer.outputs[0].name = f"{name}__plane{plane}_out"
            graph.insert_before(node, layer)
            _copy_type(node.outputs[0], layer.outputs[0])
            out = layer.outputs[0]
            if total is not None:
                add = ir.node("Add", [total, out], name=f"{name}__sum{plane}")
                add.outputs[0].name = f"{name}__sum{plane}"
                graph.insert_before(node, add)
                _copy_type(node.outputs[0], add.outputs[0])
                out = add.outputs[0]
            total = out
        replace_output(graph, node.outputs[0], total)
        graph.remove(node, safe=True)
        return {"op": node.op_type, "planes": self.planes, "weight_rel_error": round(error, 6)}, total


def _sign(graph: ir.Graph, anchor: ir.Node, x: ir.Value) -> ir.Value:
    """Where(x >= 0, 1, −1): sign with sign(0) = +1, in standard ONNX."""
    name = x.name or "x"
    zero = add_initializer(graph, np.zeros((), np.float32), f"{name}__zero")
    plus = add_initializer(graph, np.ones((), np.float32), f"{name}__plus")
    minus = add_initializer(graph, -np.ones((), np.float32), f"{name}__minus")
    compare = ir.node("GreaterOrEqual", [x, zero], name=f"{name}__ge")
    where = ir.node("Where", [compare.outputs[0], plus, minus], name=f"{name}__sign")
    compare.outputs[0].name = f"{name}__ge"
    where.outputs[0].name = f"{name}__sign"
    graph.insert_before(anchor, [compare, where])
    compare.outputs[0].dtype = ir.DataType.BOOL
    compare.outputs[0].shape = x.shape
    _copy_type(x, where.outputs[0])
    return where.outputs[0]


def _copy_type(source: ir.Value, target: ir.Value) -> None:
    target.dtype = source.dtype
    target.shape = source.shape
