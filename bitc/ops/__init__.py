"""bitc's own ops (ONNX domain "bitc"): schema, shape rule and numpy reference, one module per op family.

The numpy references are the semantics: passes are verified against them (through onnx's reference evaluator,
which runs the standard ops), and every compiled kernel is tested against them.
"""

from __future__ import annotations

from bitc.ops.base import DOMAIN, DOMAIN_VERSION, BitcOp, get, infer_shapes, is_bitc, reference_evaluator, registered

__all__ = ["DOMAIN", "DOMAIN_VERSION", "BitcOp", "get", "infer_shapes", "is_bitc", "reference_evaluator", "registered"]
