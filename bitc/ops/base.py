"""The bitc op registry, shape inference for bitc nodes, and onnx's reference evaluator extended with our ops."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import onnx_ir as ir

from bitc.errors import CompileError

DOMAIN = "bitc"
DOMAIN_VERSION = 1
_OPS: dict[str, type[BitcOp]] = {}


class BitcOp:
    """One op, declared once: its inputs, its required and defaulted attributes, an output shape/type rule, a numpy
    reference (the semantics) and the target kinds that have a kernel for it (`bitc.codegen.registry` holds the
    kernels; a test checks every kind claimed here has one)."""

    name: ClassVar[str]
    inputs: ClassVar[tuple[str, ...]] = ()  # in order; "name?" optional, "name*" any number (the rest)
    attributes: ClassVar[dict[str, Any]] = {}  # optional attributes and their defaults
    required: ClassVar[tuple[str, ...]] = ()  # attributes every node must carry
    targets: ClassVar[tuple[str, ...]] = ("llvm", "cuda")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _OPS[cls.name] = cls

    @classmethod
    def attrs(cls, node: ir.Node) -> dict[str, Any]:
        """The node's attributes as Python values, defaults filled in; a missing required one is refused."""
        values = dict(cls.attributes)
        for name, attr in node.attributes.items():
            values[name] = _python_value(attr.value)
        cls.check_required(values, node.name)
        return values

    @classmethod
    def check_required(cls, values: dict[str, Any], node_name: str | None) -> None:
        if missing := [name for name in cls.required if name not in values]:
            raise CompileError(f"node '{node_name}': {cls.name} lacks required attribute(s) {', '.join(missing)}")

    @classmethod
    def input_range(cls) -> tuple[int, int | None]:
        """(fewest, most) inputs a node may have (None: no upper bound), from `inputs`."""
        fewest = sum(1 for name in cls.inputs if not name.endswith(("?", "*")))
        most = None if any(name.endswith("*") for name in cls.inputs) else len(cls.inputs)
        return fewest, most

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
    fewest, most = op.input_range()
    if len(node.inputs) < fewest or (most is not None and len(node.inputs) > most):
        expected = f"at least {fewest}" if most is None else f"{fewest}" if most == fewest else f"{fewest} to {most}"
        raise CompileError(f"node '{node.name}': {op.name} takes {expected} inputs, got {len(node.inputs)}")
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
        op.check_required(attrs, self.onnx_node.name)
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}
        return tuple(op.reference(*inputs, **attrs))

    return type(op.name, (OpRun,), {"op_domain": DOMAIN, "_run": _run})


@functools.cache
def _import_ops() -> None:
    """Import every module of this package once: an op registers itself where it is defined."""
    import importlib
    import pkgutil

    import bitc.ops

    for module in pkgutil.iter_modules(bitc.ops.__path__):
        importlib.import_module(f"bitc.ops.{module.name}")
