"""Low-bit weights for Linear layers (MatMul / Gemm): 1-4 binary planes or ternary, per-group scales, optional
float salient input columns; activations stay float. The layers become `LowBitMatMul` (bitc domain)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from bitc import ops
from bitc.errors import BadInputError
from bitc.ir.graph_edit import add_initializer, constant, replace_output
from bitc.ops.lowbit_matmul import float_twin
from bitc.ops.packing import WORD_BITS, pack_signs
from bitc.passes import verify
from bitc.passes.calibration import load_calibration
from bitc.passes.lowbit_fit import WeightFormat, fit_weights
from bitc.passes.options import configure, option
from bitc.passes.registry import register


@dataclass
class LowBitReport:
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    kept: dict[str, str] = field(default_factory=dict)
    bits_per_weight: float = 0.0
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        report = {"layers_converted": len(self.layers), "bits_per_weight": round(self.bits_per_weight, 3)}
        report |= {"layers": self.layers, "kept_in_float": self.kept}
        return report | ({"note": self.note} if self.note else {})


def _batch(value: ir.Value) -> int | None:
    shape = value.shape
    return shape[0] if shape is not None and len(shape) and isinstance(shape[0], int) else None


def lowbit_format(text: str) -> dict[str, Any]:
    """'2' → 2 planes, 'ternary' → ternary."""
    text = str(text).strip().lower()
    if text == "ternary":
        return {"ternary": True}
    if text.isdigit():
        return {"planes": int(text)}
    raise BadInputError(f"low-bit weights must be a plane count 1-4 or 'ternary', got {text!r}")


def _calibration_flag(text: str) -> dict[str, Any]:
    """--calibration FILE.npz, its members checked before anything loads it."""
    from bitc.npyfile import check_npz

    check_npz(text)
    return {"calibration": text}


@register("lowbit_linear", phase="quantize")
class LowBitLinear(ir.passes.InPlacePass):
    """Low-bit weights for MatMul/Gemm layers: W ≈ Σ αᵢ·Bᵢ (1-4 planes) or ternary, float activations.

    `planes` 1-4, or `ternary`; `group_size` inputs share a scale (a multiple of 32; 0 = one per output channel).
    `salient`: share (0-1) of input columns per layer kept in float (the columns whose error costs most), read
    with a Slice when they form one block, else a Gather; `salient_block` keeps the best contiguous block instead
    (PB-LLM with channel reordering: run `reorder` first so the important channels sit together). With
    `calibration` inputs (a dict of arrays) the fit is activation-aware and, with `method="gptq"` (the default
    then), error-compensating; without, each group is fitted by alternating least squares on the weights alone.
    `sequential` calibrates each
    layer on the outputs of the layers already converted before it (one onnxruntime run per distinct input: better
    at 1-2 planes, slower on deep models). Layers with constant 2-D weights qualify; `layers` / `exclude` choose,
    and the last one (an LLM's vocabulary head) stays float unless `keep_last=False`. The report gives bits per
    weight and each layer's weight and output relative error.
    """

    @dataclass(frozen=True)
    class Options:
        planes: int = option(
            2,
            "binary weight planes, 1-4",
            flag="--lowbit-weights",
            metavar="K|ternary",
            flag_help="low-bit Linear (MatMul/Gemm) weights, float activations: K binary planes (1-4) or ternary",
            parse=lambda text: lowbit_format(text),
        )
        ternary: bool = option(False, "ternary weights (0/±α) instead of binary planes")
        group_size: int = option(
            128, "inputs per scale (multiple of 32; 0 = per row)", flag="--lowbit-group-size", metavar="N"
        )
        salient: float = option(
            0.0, "input columns per layer kept in float (0-1)", flag="--lowbit-salient", metavar="SHARE"
        )
        salient_block: bool = option(False, "keep the best contiguous block of columns in float instead")
        calibration: dict[str, Any] | str | os.PathLike | None = option(
            None,
            "calibration inputs: arrays named like the model inputs, or an .npz file of them",
            path=True,
            flag="--calibration",
            metavar="FILE.npz",
            flag_help="calibration inputs (arrays named like the model inputs) for --lowbit-*",
            parse=_calibration_flag,
        )
        method: str | None = option(None, "'gptq' (default with calibration) or 'fit'")
        layers: list[str] | None = option(None, "convert exactly these MatMul/Gemm layers")
        exclude: list[str] | None = option(
            None, "Linear layers to keep in float", flag="--lowbit-exclude", metavar="NODE,..."
        )
        keep_last: bool = option(True, "keep the last layer (an LLM's vocabulary head) in float")
        sequential: bool = option(False, "calibrate each layer on the outputs of the converted layers before it")
        min_features: int = option(32, "layers with fewer inputs stay float")
        measure_error: bool = option(True, "report each layer's weight and output error")

        def __post_init__(self) -> None:
            if not 1 <= int(self.planes) <= 4:
                raise BadInputError(f"lowbit_linear: planes must be 1-4, got {self.planes}")
            if int(self.group_size) < 0 or int(self.group_size) % WORD_BITS:
                raise BadInputError(f"lowbit_linear: group_size must be 0 or a multiple of 32, got {self.group_size}")
            if not 0.0 <= float(self.salient) < 1.0:
                raise BadInputError(f"lowbit_linear: salient must be a share in [0, 1), got {self.salient}")
            if self.method not in (None, "gptq", "fit"):
                raise BadInputError(f"lowbit_linear: method must be 'gptq' or 'fit', got {self.method!r}")

        @staticmethod
        def shorthand(value: int | str) -> dict[str, Any]:
            """`bitc.compile(lowbit_linear=2)` or `"ternary"`: the weight format."""
            return lowbit_format(str(value))

    def __init__(self, **options: Any) -> None:
        super().__init__()
        o = self.options = configure(self, options)
        self.format = WeightFormat(int(o.planes), bool(o.ternary), int(o.group_size))
        self.salient = float(o.salient)
        self.salient_block = bool(o.salient_block)
        self.calibration = load_calibration(o.calibration) if o.calibration is not None else None
        self.method = o.method or ("gptq" if o.calibration else "fit")
        self.layers = list(o.layers) if o.layers is not None else None
        self.exclude = set(o.exclude or [])
        self.keep_last = o.keep_last
        self.sequential = bool(o.sequential)
        self.min_features = int(o.min_features)
        self.measure_error = o.measure_error
        self.report = LowBitReport()

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.report = LowBitReport()
        graph = model.graph
        candidates = [n for n in graph if n.op_type in ("MatMul", "Gemm") and n.domain in ("", "ai.onnx")]
        if self.layers is not None and (unknown := set(self.layers) - {n.name for n in candidates}):
            raise BadInputError(f"lowbit_linear: no MatMul/Gemm named {', '.join(sorted(unknown))}")
        chosen = []
        for index, node in enumerate(candidates):
            reason = self._excluded(node, index == len(candidates) - 1)
            if reason:
                self.report.kept[node.name] = reason
            else:
                chosen.append(node)
        if not chosen:
            return ir.passes.PassResult(model, False)
        calibrate_once = self.calibration is not None and not self.sequential
        before = ir.to_proto(model) if self.measure_error or calibrate_once else None
        hessians = self._hessians(model, chosen, before) if calibrate_once else {}
        model.opset_imports.setdefault(ops.DOMAIN, ops.DOMAIN_VERSION)
        outputs: dict[str, tuple[str, ir.Value]] = {}
        bits, weights = 0.0, 0
        for node in chosen:
            original = node.outputs[0].name
            if self.sequential and self.calibration is not None and node.inputs[0].name not in hessians:
                # the layers reading this input see what the already converted layers before them produce
                sharing = [n for n in chosen if n.inputs[0] is node.inputs[0]]
                hessians = self._hessians(model, sharing)
            entry, new_output = self._convert(graph, node, hessians.get(node.inputs[0].name))
            self.report.layers[node.name] = entry
            outputs[node.name] = (original, new_output)
            bits += entry["bits_per_weight"] * entry["weights"]
            weights += entry["weights"]
        self.report.bits_per_weight = bits / weights
        if self.measure_error:
            errors, self.report.note = verify.measure_output_errors(before, model, outputs)
            for name, error in errors.items():
                self.report.layers[name]["output_rel_error"] = error
        return ir.passes.PassResult(model, True)

    def _excluded(self, node: ir.Node, last: bool) -> str:
        if self.layers is not None:
            return "" if node.name in self.layers else "not listed"
        if node.name in self.exclude:
            return "excluded"
        if self.keep_last and last:
            return "last layer"
        weights = constant(node.inputs[1])
        if weights is None or weights.ndim != 2:
            return "weights not a constant matrix"
        if node.op_type == "Gemm" and node.attributes.get_int("transA", 0):
            return "Gemm with transA"
        if node.inputs[0].shape is None or any(not isinstance(d, int) for d in node.inputs[0].shape):
            return "input shape not static"
        if min(weights.shape) < self.min_features:
            return f"fewer than {self.min_features} features"
        return ""

    def _hessians(self, model: ir.Model, nodes: list[ir.Node], proto: Any = None) -> dict[str, np.ndarray]:
        """E[x xᵀ] of every chosen layer's input over the calibration tokens (onnxruntime, one session; `proto`:
        the model as a ModelProto if the caller has it). Calibration arrays with more samples than the model's
        static batch run in batch-sized chunks."""
        inputs = {value.name: value for value in model.graph.inputs}
        if missing := set(inputs) - set(self.calibration):
            raise BadInputError(f"lowbit_linear: calibration inputs lack {', '.join(sorted(missing))}")
        names = list(dict.fromkeys(node.inputs[0].name for node in nodes))
        session = verify.session_with_outputs(proto if proto is not None else float_twin(model), names)
        batch = min(_batch(inputs[name]) or len(array) for name, array in self.calibration.items() if name in inputs)
        samples = min(len(array) for name, array in self.calibration.items() if name in inputs)
        if samples < batch:
            raise BadInputError(f"lowbit_linear: {samples} calibration samples, fewer than the model's batch {batch}")
        sums: dict[str, np.ndarray] = {}
        rows = dict.fromkeys(names, 0)
        for start in range(0, samples - batch + 1, batch):
            feeds = {name: self.calibration[name][start : start + batch] for name in inputs}
            for name, value in zip(names, session.run(names, feeds), strict=True):
                flat = value.reshape(-1, value.shape[-1]).astype(np.float64)
                sums[name] = sums.get(name, 0.0) + flat.T @ flat
                rows[name] += len(flat)
        return {name: sums[name] / rows[name] for name in sums}

    def _convert(self, graph: ir.Graph, node: ir.Node, hessian: np.ndarray | None) -> tuple[dict, ir.Value]:
        weights = constant(node.inputs[1]).astype(np.float64)
        bias = None
        if node.op_type == "Gemm":
            weights = weights * node.attributes.get_float("alpha", 1.0)
            weights = weights if node.attributes.get_int("transB", 0) else weights.T
            if len(node.inputs) > 2 and node.inputs[2] is not None:
                bias = constant(node.inputs[2])
                if bias is None:
                    raise BadInputError(f"lowbit_linear: node '{node.name}': Gemm bias must be a constant")
                bias = (bias * node.attributes.get_float("beta", 1.0)).astype(np.float32)
        else:
            weights = weights.T  # MatMul [K, N] → rows are outputs
        out_features, in_features = weights.shape
        salient = round(self.salient * in_features)
        fitted = fit_weights(
            weights,
            self.format,
            hessian=hessian,
            salient=salient,
            salient_block=self.salient_block,
            gptq=self.method == "gptq",
        )
        name = node.name or node.outputs[0].name
        x = node.inputs[0]
        layer = ir.node(
            "LowBitMatMul",
            [
                x,
                add_initializer(graph, pack_signs(fitted.negative), f"{name}__planes"),
                add_initializer(graph, fitted.scales, f"{name}__scales"),
            ],
            attributes={"in_features": in_features, "group_size": self.format.group_size},
            domain=ops.DOMAIN,
            name=f"{name}__lowbit",
        )
        layer.outputs[0].name = f"{name}__lowbit"
        graph.insert_before(node, layer)
        ops.infer_shapes(layer)
        out = layer.outputs[0]
        if salient:
            out = self._add(graph, node, out, self._salient_product(graph, node, x, fitted.salient, fitted.residual))
        if bias is not None:
            out = self._add(graph, node, out, add_initializer(graph, bias, f"{name}__bias"))
        replace_output(graph, node.outputs[0], out)
        graph.remove(node, safe=True)
        approx = fitted.dequantize(self.format.group_size)
        error = float(np.linalg.norm(approx - weights) / max(np.linalg.norm(weights), 1e-30))
        bits = self.format.bits_per_weight(in_features) + 32 * salient / in_features
        entry = {
            "op": node.op_type,
            "format": self.format.label(),
            "shape": [out_features, in_features],
            "salient_columns": salient,
            "bits_per_weight": round(bits, 3),
            "weights": int(weights.size),
            "weight_rel_error": round(error, 6),
        }
        return entry, out

    def _salient_product(
        self, graph: ir.Graph, node: ir.Node, x: ir.Value, columns: np.ndarray, residual: np.ndarray
    ) -> ir.Value:
        """x[..., columns] @ residualᵀ: a Slice when the columns are one block (e.g. after `reorder`), else a Gather."""
        name = node.name or node.outputs[0].name
        if columns[-1] - columns[0] + 1 == columns.size:
            bounds = [
                add_initializer(graph, np.array([v], np.int64), f"{name}__salient_{tag}")
                for tag, v in (("start", columns[0]), ("end", columns[-1] + 1), ("axis", -1))
            ]
            pick = ir.node("Slice", [x, *bounds], name=f"{name}__salient")
        else:
            index = add_initializer(graph, columns, f"{name}__salient_index")
            pick = ir.node("Gather", [x, index], attributes={"axis": -1}, name=f"{name}__salient")
        product = ir.node(
            "MatMul",
            [pick.outputs[0], add_initializer(graph, residual.T.copy(), f"{name}__salient_w")],
            name=f"{name}__salient_matmul",
        )
        pick.outputs[0].name, product.outputs[0].name = f"{name}__salient_x", f"{name}__salient_y"
        graph.insert_before(node, [pick, product])
        shape = list(x.shape)
        pick.outputs[0].dtype, pick.outputs[0].shape = x.dtype, ir.Shape([*shape[:-1], columns.size])
        product.outputs[0].dtype = x.dtype
        product.outputs[0].shape = ir.Shape([*shape[:-1], residual.shape[0]])
        return product.outputs[0]

    @staticmethod
    def _add(graph: ir.Graph, node: ir.Node, left: ir.Value, right: ir.Value) -> ir.Value:
        add = ir.node("Add", [left, right], name=f"{left.name}__add")
        add.outputs[0].name = f"{left.name}__add"
        graph.insert_before(node, add)
        add.outputs[0].dtype, add.outputs[0].shape = left.dtype, left.shape
        return add.outputs[0]
