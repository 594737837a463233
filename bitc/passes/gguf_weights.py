"""Run a model's Linear layers on the blocks of the GGUF file its weights came from (Q4_0, Q4_1, Q8_0).

An LLM shipped as GGUF reaches bitc as a float export (transformers dequantizes the file): the weights are the
file's blocks, dequantized, at eight times their size. This pass finds, for each MatMul by a constant float
matrix, the GGUF tensor it equals value for value (up to the order of its rows: transformers undoes llama.cpp's
row permutation of the query and key projections) and replaces it by BlockQuantMatMul on that tensor's codes,
scales and offsets; a Gather from a constant table (the token embedding) equal to a tensor row for row becomes
BlockQuantGather. Nothing is re-quantized: the dequantized blocks equal the float weights bit for bit, checked
per layer before the layer is replaced, so the pass is exact.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from bitc import ops
from bitc.ir.graph_edit import constant
from bitc.ops.gguf_blocks import BLOCK, BlockTensor, read_block_tensors
from bitc.passes.block_layers import replace_by_block_layer
from bitc.passes.options import configure, option
from bitc.passes.registry import register


@dataclass
class GgufReport:
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    kept: dict[str, str] = field(default_factory=dict)
    float_bytes: int = 0
    block_bytes: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "layers_converted": len(self.layers),
            "weight_bytes_before": self.float_bytes,
            "weight_bytes_after": self.block_bytes,
            "layers": self.layers,
            "kept_in_float": self.kept,
        }


@register("gguf_weights", phase="quantize", exact=True)
class GgufWeights(ir.passes.InPlacePass):
    """Run Linear layers and the embedding on a GGUF file's own Q4_0 / Q4_1 / Q8_0 blocks (exact).

    Each MatMul whose float weight equals one of the file's tensors (rows in any order) becomes BlockQuantMatMul
    on its codes, a Gather from a table equal to one row for row BlockQuantGather; nothing is re-quantized.
    """

    @dataclass(frozen=True)
    class Options:
        path: str | None = option(
            None,
            "the GGUF file the model's weights were dequantized from",
            path=True,
            flag="--gguf-weights",
            metavar="FILE.gguf",
            flag_help="run Linear layers on the blocks of this GGUF file (exact: only layers equal to one of its "
            "Q4_0/Q4_1/Q8_0 tensors)",
        )

    def __init__(self, **options: Any) -> None:
        super().__init__()
        self.options = configure(self, options)
        self.report = GgufReport()

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.report = GgufReport()
        if self.options.path is None:
            return ir.passes.PassResult(model, False)
        index = _RowIndex(read_block_tensors(os.fspath(self.options.path)))
        changed = False
        for node in list(model.graph):
            if node.op_type not in ("MatMul", "Gather") or node.domain not in ("", "ai.onnx"):
                continue
            table = node.op_type == "Gather"
            weights = constant(node.inputs[0 if table else 1])
            if weights is None or weights.ndim != 2 or weights.dtype != np.float32:
                continue
            if table and (node.attributes.get_int("axis", 0) != 0 or constant(node.inputs[1]) is not None):
                continue
            match = index.find(weights if table else weights.T)
            if match is None or (table and (match[1] != np.arange(len(match[1]))).any()):
                self.report.kept[node.name] = "no GGUF block tensor equals its weights"
                continue
            tensor, order = match
            self._replace(model, node, tensor, order)
            self.report.float_bytes += weights.nbytes
            self.report.block_bytes += tensor.nbytes
            changed = True
        return ir.passes.PassResult(model, changed)

    def _replace(self, model: ir.Model, node: ir.Node, tensor: BlockTensor, order: np.ndarray) -> None:
        graph = model.graph
        model.opset_imports.setdefault(ops.DOMAIN, ops.DOMAIN_VERSION)
        arrays = [tensor.codes[order], tensor.scales[order]]
        if tensor.offsets is not None:
            arrays.append(tensor.offsets[order])
        replace_by_block_layer(
            graph,
            node,
            arrays,
            block_size=BLOCK,
            bits=tensor.bits,
            signed=tensor.signed,
            tag=tensor.kind.lower(),
            table_prefix="",
        )
        out_features, in_features = tensor.shape
        self.report.layers[node.name] = {
            "tensor": tensor.name,
            "format": tensor.kind,
            "bits_per_weight": round(tensor.nbytes * 8 / (out_features * in_features), 3),
            "rows_reordered": bool((order != np.arange(len(order))).any()),
        }


class _RowIndex:
    """GGUF tensors by the multiset of their dequantized rows, so a float matrix finds the tensor it equals even
    when its rows were permuted; each candidate is confirmed by comparing every value."""

    def __init__(self, tensors: dict[str, BlockTensor]) -> None:
        self.tensors = tensors
        self.by_shape: dict[tuple[int, int], list[str]] = defaultdict(list)
        for name, tensor in tensors.items():
            self.by_shape[tensor.shape].append(name)
        self.rows: dict[str, tuple[int, list[int]]] = {}

    def find(self, rows: np.ndarray) -> tuple[BlockTensor, np.ndarray] | None:
        """The tensor whose dequantized rows are exactly `rows` [N, K] in some order, and that order."""
        if rows.shape[1] % BLOCK:
            return None
        hashes = _row_hashes(rows)
        signature = hash(tuple(sorted(hashes)))
        for name in self.by_shape.get(rows.shape, []):
            tensor_signature, tensor_hashes = self._rows_of(name)
            if tensor_signature != signature:
                continue
            dense = self.tensors[name].dequantize()
            positions: dict[int, list[int]] = defaultdict(list)
            for position, row_hash in enumerate(tensor_hashes):
                positions[row_hash].append(position)
            # equal rows are taken in order, so a tensor whose rows are all in place maps to the identity
            pending = {row_hash: iter(found) for row_hash, found in positions.items()}
            order = np.array([next(pending[row_hash]) for row_hash in hashes], dtype=np.int64)
            if np.array_equal(dense[order], rows):  # not a hash collision: every value matches
                return self.tensors[name], order
        return None

    def _rows_of(self, name: str) -> tuple[int, list[int]]:
        """The tensor's row hashes and their multiset's signature (kept; the dequantized rows are not, so a
        large model's weights are never held twice in float)."""
        if name not in self.rows:
            hashes = _row_hashes(self.tensors[name].dequantize())
            self.rows[name] = (hash(tuple(sorted(hashes))), hashes)
        return self.rows[name]


def _row_hashes(rows: np.ndarray) -> list[int]:
    data = np.ascontiguousarray(rows, dtype=np.float32)
    return [hash(row.tobytes()) for row in data]
