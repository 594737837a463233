"""Reinterpret: a tensor's bits read as another type of the same width (ONNX BitCast between float and integer
types; TVM's importer has no BitCast)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import onnx_ir as ir

from bitc.ops.base import BitcOp


class Reinterpret(BitcOp):
    """x [any shape] → the same bits as `to` (an ONNX data type number of x's width)."""

    name = "Reinterpret"
    inputs = ("x",)
    attributes: ClassVar[dict[str, Any]] = {"to": int(ir.DataType.INT32)}

    @classmethod
    def output_types(cls, input_shapes: Sequence[tuple[int, ...]], **attrs: Any) -> list[tuple[ir.DataType, tuple]]:
        return [(ir.DataType(attrs["to"]), input_shapes[0])]

    @staticmethod
    def reference(x: np.ndarray, **attrs: Any) -> tuple[np.ndarray, ...]:
        return (np.ascontiguousarray(x).view(ir.DataType(attrs["to"]).numpy()),)
