"""The bitc op registry, shape inference for bitc nodes, and onnx's reference evaluator extended with our ops."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import onnx_ir as ir

DOMAIN = "bitc"
DOMAIN_VERSION = 1
_OPS: dict[str, type[BitcOp]] = {}


class BitcOp:
    """One op: attributes with defaults, an output shape/type rule and a numpy reference."""

    name: ClassVar[str]
    attributes: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _OPS[cls.name] = cls

    @classmethod
    def attrs(cls, node: ir.Node) -> dict[str, Any]:
        """The node's attributes as Python values, defaults filled in."""
        values = dict(cls.attributes)
        for name, attr in node.attributes.items():
            values[name] = _python_value(attr.value)
        return values

    @classmethod
    def output_types(cls, input_shapes: Sequence[tuple[int, ...]], **attrs: Any) -> list[tuple[ir.DataType, tuple]]:
        raise NotImplementedError

    @staticmethod
    def reference(*inputs: np.ndarray, **attrs: Any) -> tuple[np.ndarray, ...]:
        raise NotImplementedError


def _python_value(value: Any) -> Any:
    if isinstance(value, (list, tuple)) or (hasattr(value, "__iter__") and not isinstance(value, (str, bytes))):
        return [int(v) if isinstance(v, (int, np.integer)) else v for v in value]
    return value


def registered() -> dict[str, type[BitcOp]]:
    _import_ops()
    return dict(_OPS)


def get(op_type: str) -> type[BitcOp]:
    _import_ops()
    return _OPS[op_type]


def is_bitc(node: ir.Node) -> bool:
    return node.domain == DOMAIN


def infer_shapes(node: ir.Node) -> None:
    """Set the outputs' dtype and shape of a bitc node from its inputs (onnx's shape inference skips our domain)."""
    op = get(node.op_type)
    shapes = [tuple(int(d) for d in value.shape) for value in node.inputs if value is not None]
    for output, (dtype, shape) in zip(node.outputs, op.output_types(shapes, **op.attrs(node)), strict=True):
        output.dtype = dtype
        output.shape = ir.Shape(shape)


def reference_evaluator(model: ir.Model) -> Any:
    """onnx.reference.ReferenceEvaluator over the model, with every bitc op bound to its numpy reference."""
    from onnx.reference import ReferenceEvaluator

    proto = ir.to_proto(model)
    return ReferenceEvaluator(proto, new_ops=[_op_run_class(op) for op in registered().values()])


def _op_run_class(op: type[BitcOp]) -> type:
    from onnx import helper
    from onnx.reference.op_run import OpRun

    def _run(self: Any, *inputs: np.ndarray, **_ignored: Any) -> tuple[np.ndarray, ...]:
        attrs = dict(op.attributes)
        attrs.update({a.name: _python_value(helper.get_attribute_value(a)) for a in self.onnx_node.attribute})
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}
        return tuple(op.reference(*inputs, **attrs))

    return type(op.name, (OpRun,), {"op_domain": DOMAIN, "_run": _run})


def _import_ops() -> None:
    from bitc.ops import (  # noqa: F401  (registration on import)
        binary_conv,
        binary_dense,
        bitpack,
        kv_attention,
        lowbit_matmul,
        packed_pool,
        reinterpret,
        round_to_format,
    )
