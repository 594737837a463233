"""Block-quantized weights for Linear layers and embedding tables: GGUF's Q4_0 / Q4_1 / Q8_0 formats, fitted.

Where `gguf_weights` keeps the blocks a file already has, this pass makes them: each MatMul by a constant float
matrix becomes BlockQuantMatMul and each Gather from a constant float table (a token embedding)
BlockQuantGather, their weights fitted block by block (`block_fit`). With `requantize`, layers already on wider
blocks (a GGUF file's Q8_0 embedding) are fitted again to the narrower format, from their stored values. It is
lossy: the report gives each layer's weight error and, on seeded inputs, its output error against the model
before the pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from bitc import ops
from bitc.errors import BadInputError
from bitc.ir.graph_edit import constant
from bitc.ops import block_matmul
from bitc.passes import verify
from bitc.passes.block_fit import BlockFormat, FittedBlocks, fit_blocks
from bitc.passes.block_layers import replace_by_block_layer
from bitc.passes.options import configure, option
from bitc.passes.registry import register

# GGUF's names for the formats: bits, and whether blocks carry a minimum (unsigned codes) or not (signed)
FORMATS = {"q4_0": (4, False), "q4_1": (4, True), "q8_0": (8, False), "q8_1": (8, True)}
_BLOCK_OPS = ("BlockQuantMatMul", "BlockQuantGather")


def block_format(text: str) -> dict[str, Any]:
    """'q4_1' → 4-bit codes with a minimum per block."""
    name = str(text).strip().lower()
    if name not in FORMATS:
        raise BadInputError(f"block weights must be one of {', '.join(FORMATS)}, got {text!r}")
    bits, offset = FORMATS[name]
    return {"bits": bits, "offset": offset}


@dataclass
class BlockQuantReport:
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    kept: dict[str, str] = field(default_factory=dict)
    bytes_before: int = 0
    bytes_after: int = 0
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        report = {
            "layers_converted": len(self.layers),
            "weight_bytes_before": self.bytes_before,
            "weight_bytes_after": self.bytes_after,
            "layers": self.layers,
            "kept": self.kept,
        }
        return report | ({"note": self.note} if self.note else {})


@register("block_quantize", phase="quantize", order=1, needs_flag="--block-weights")
class BlockQuantize(ir.passes.InPlacePass):
    """Block-quantize Linear weights and embedding tables (Q4_0 / Q4_1 / Q8_0 formats, least-squares fitted).

    Every MatMul by a constant float matrix whose input count is a multiple of `block_size`, and (with
    `embedding`) every Gather from a constant float table, gets `bits`-bit codes in blocks of `block_size` with a
    float16 scale each (and a minimum each with `offset`). Runs after `gguf_weights` and `lowbit_linear`: layers
    they converted are left alone, except that `requantize` fits layers on wider blocks again. `layers` /
    `exclude` choose by node name. The report gives bytes before and after, each layer's weight and output
    relative error.
    """

    @dataclass(frozen=True)
    class Options:
        bits: int = option(
            4,
            "bits per code: 4 or 8",
            flag="--block-weights",
            metavar="q4_0|q4_1|q8_0",
            flag_help="block-quantized Linear and embedding weights in a GGUF format, fitted (lossy, reported)",
            parse=block_format,
        )
        offset: bool = option(False, "unsigned codes and a minimum per block (q4_1) instead of signed (q4_0)")
        block_size: int = option(32, "inputs per block (a multiple of 8 dividing the layer's inputs)")
        embedding: bool = option(True, "also quantize Gather tables (token embeddings)")
        requantize: bool = option(
            False,
            "also fit layers already on wider blocks (a GGUF file's Q8_0) again to this format",
            flag="--block-requantize",
            const=True,
        )
        layers: list[str] | None = option(None, "convert exactly these nodes")
        exclude: list[str] | None = option(
            None, "nodes to leave as they are", flag="--block-exclude", metavar="NODE,..."
        )
        measure_error: bool = option(True, "report each layer's output error on seeded inputs")

        def __post_init__(self) -> None:
            if int(self.bits) not in block_matmul.BITS:
                raise BadInputError(f"block_quantize: bits must be one of {block_matmul.BITS}, got {self.bits}")
            if int(self.block_size) <= 0 or int(self.block_size) % 8:
                raise BadInputError(
                    f"block_quantize: block_size must be a positive multiple of 8, got {self.block_size}"
                )

        @staticmethod
        def shorthand(value: str) -> dict[str, Any]:
            """`bitc.compile(block_quantize="q4_1")`: the format."""
            return block_format(value)

    def __init__(self, **options: Any) -> None:
        super().__init__()
        o = self.options = configure(self, options)
        self.format = BlockFormat(int(o.bits), bool(o.offset), int(o.block_size))
        self.report = BlockQuantReport()

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.report = BlockQuantReport()
        graph = model.graph
        o = self.options
        candidates = [node for node in graph if self._is_candidate(node)]
        if o.layers is not None and (unknown := set(o.layers) - {node.name for node in candidates}):
            raise BadInputError(f"block_quantize: no MatMul, Gather or block layer named {', '.join(sorted(unknown))}")
        chosen: list[tuple[ir.Node, np.ndarray]] = []
        for node in candidates:
            rows, reason = self._rows(node)
            if reason:
                if reason != "-":
                    self.report.kept[node.name] = reason
                continue
            chosen.append((node, rows))
        if not chosen:
            return ir.passes.PassResult(model, False)
        before = ir.to_proto(model) if o.measure_error else None
        model.opset_imports.setdefault(ops.DOMAIN, ops.DOMAIN_VERSION)
        # a tied embedding and vocabulary head are fitted (and their error measured) once
        fitted: dict[tuple, tuple[FittedBlocks, float]] = {}
        outputs: dict[str, tuple[str, ir.Value]] = {}
        for node, rows in chosen:
            key = (rows.shape, hash(rows.tobytes()))
            if key not in fitted:
                try:
                    blocks = fit_blocks(rows, self.format)
                except OverflowError as exc:
                    self.report.kept[node.name] = str(exc)
                    continue
                difference = np.linalg.norm(blocks.dequantize(self.format) - rows)
                fitted[key] = blocks, float(difference / max(float(np.linalg.norm(rows)), 1e-30))
            blocks, error = fitted[key]
            original = node.outputs[0].name
            self.report.bytes_before += self._stored_bytes(node, rows)
            outputs[node.name] = (original, self._replace(graph, node, blocks))
            self.report.layers[node.name] = {
                "op": node.op_type,
                "format": self.format.label(),
                "shape": list(rows.shape),
                "bits_per_weight": round(blocks.nbytes * 8 / rows.size, 3),
                "weight_rel_error": round(error, 6),
            }
            self.report.bytes_after += blocks.nbytes
        if o.measure_error and outputs:
            errors, self.report.note = verify.measure_output_errors(before, model, outputs)
            for name, error in errors.items():
                self.report.layers[name]["output_rel_error"] = error
        return ir.passes.PassResult(model, bool(outputs))

    @staticmethod
    def _is_candidate(node: ir.Node) -> bool:
        standard = node.domain in ("", "ai.onnx") and node.op_type in ("MatMul", "Gather")
        return standard or (ops.is_bitc(node) and node.op_type in _BLOCK_OPS)

    def _rows(self, node: ir.Node) -> tuple[np.ndarray | None, str]:
        """The weights as rows [N, K] (outputs × inputs), or why the node stays as it is ("-": not a candidate
        worth reporting: a MatMul of two activations, a Gather of an activation)."""
        o = self.options
        if o.layers is not None and node.name not in o.layers:
            return None, "-"
        if node.name in set(o.exclude or []):
            return None, "excluded"
        table = node.op_type in ("Gather", "BlockQuantGather")
        if table and not o.embedding:
            return None, "embedding tables not chosen"
        if ops.is_bitc(node):
            attrs = ops.get(node.op_type).attrs(node)
            if not o.requantize:
                return None, "-"
            if int(attrs["bits"]) <= self.format.bits:
                return None, "-"  # already as narrow
            tables = [constant(value) if value is not None else None for value in node.inputs[1:4]]
            if any(t is None for t in tables[:2]):
                return None, "block tables not constant"
            codes, scales, *rest = tables
            offsets = rest[0] if rest else None
            rows = block_matmul.dequantize(
                codes, scales, offsets, int(attrs["bits"]), int(attrs["block_size"]), bool(attrs["signed"])
            )
        else:
            weights = constant(node.inputs[0 if table else 1])
            if weights is None or weights.ndim != 2 or weights.dtype != np.float32:
                return None, "-"
            if table and (node.attributes.get_int("axis", 0) != 0 or constant(node.inputs[1]) is not None):
                return None, "-"
            if not table and node.inputs[0].dtype != ir.DataType.FLOAT:
                return None, "input not float32"
            rows = weights if table else weights.T
        if rows.shape[1] % self.format.block_size:
            return None, f"{rows.shape[1]} inputs are not whole blocks of {self.format.block_size}"
        if not np.isfinite(rows).all():
            return None, "weights not finite"
        return np.ascontiguousarray(rows, np.float32), ""

    @staticmethod
    def _stored_bytes(node: ir.Node, rows: np.ndarray) -> int:
        if ops.is_bitc(node):
            return sum(constant(value).nbytes for value in node.inputs[1:] if value is not None)
        return rows.nbytes

    def _replace(self, graph: ir.Graph, node: ir.Node, blocks: FittedBlocks) -> ir.Value:
        fmt, label = self.format, self.format.label()
        tables = [blocks.codes, blocks.scales] + ([blocks.offsets] if blocks.offsets is not None else [])
        return replace_by_block_layer(
            graph,
            node,
            tables,
            block_size=fmt.block_size,
            bits=fmt.bits,
            signed=fmt.signed,
            tag=label,
            table_prefix=f"{label}_",
        )
