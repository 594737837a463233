"""bitc nodes → Relax calls to our TE kernels (weights re-blocked for the target and bound as constants)."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir

from bitc import ops
from bitc.codegen import binary_kernels as kernels
from bitc.errors import CompileError

# Opaque to FuseOps: the kernels carry their epilogues already and have schedules of their own.
_OPAQUE = 8


def emit(bb: Any, node: ir.Node, args: list[Any], lanes: int) -> list[Any]:
    """Emit `node` into the block builder; `args` are the Relax values of its non-constant inputs, in order."""
    emitter = _EMITTERS.get(node.op_type)
    if emitter is None:
        raise CompileError(f"node '{node.name}': bitc op {node.op_type} has no kernel")
    return [emitter(bb, node, args, lanes)]


def _attrs(kernel: str) -> dict[str, Any]:
    return {"primfunc_attrs": {kernels.KERNEL_ATTR: kernel, "op_pattern": _OPAQUE}}


def _constant(node: ir.Node, index: int) -> np.ndarray:
    value = node.inputs[index]
    if value is None or value.const_value is None:
        raise CompileError(f"node '{node.name}': input {index} of {node.op_type} must be a constant")
    return value.const_value.numpy()


def _relax_const(array: np.ndarray) -> Any:
    from tvm import relax

    return relax.const(np.ascontiguousarray(array))


def _bitpack(bb: Any, node: ir.Node, args: list[Any], lanes: int) -> Any:
    return bb.emit_te(kernels.bitpack, args[0], primfunc_name_hint="bitc_bitpack", **_attrs("bitpack"))


def _binary_conv(bb: Any, node: ir.Node, args: list[Any], lanes: int) -> Any:
    attrs = ops.get("BinaryConv").attrs(node)
    packed = _constant(node, 1)
    planes, out_channels, kh, kw, _ = packed.shape
    n, h, w, _ = (int(d) for d in node.inputs[0].shape)
    geometry = kernels.ConvGeometry(
        n=n,
        h=h,
        w=w,
        in_channels=int(attrs["in_channels"]),
        out_channels=out_channels,
        kh=kh,
        kw=kw,
        strides=tuple(attrs["strides"]),
        pads=tuple(attrs["pads"]),
        planes=planes,
    )
    epilogue = [_relax_const(_constant(node, i)) for i in range(2, len(node.inputs))]
    correction, classes = None, (0, 0, 0, 0)
    if attrs["pad_value"] == 0 and any(geometry.pads):
        table, *classes = kernels.zero_pad_correction(packed, geometry)
        correction = _relax_const(table)
    blocked = _relax_const(kernels.block_weights(packed, lanes))

    def compute(x: Any, weights: Any, *rest: Any) -> Any:
        epilogue_tensors = list(rest[: len(epilogue)])
        table = rest[len(epilogue)] if correction is not None else None
        return kernels.binary_conv(
            x,
            weights,
            epilogue_tensors,
            table,
            geometry,
            lanes=lanes,
            output=attrs["output_format"],
            classes=tuple(classes),
        )

    extra = [correction] if correction is not None else []
    return bb.emit_te(
        compute, args[0], blocked, *epilogue, *extra, primfunc_name_hint="bitc_binary_conv", **_attrs("binary_conv")
    )


def _binary_dense(bb: Any, node: ir.Node, args: list[Any], lanes: int) -> Any:
    attrs = ops.get("BinaryDense").attrs(node)
    packed = _constant(node, 1)
    planes, out_features, _ = packed.shape
    epilogue = [_relax_const(_constant(node, i)) for i in range(2, len(node.inputs))]
    blocked = _relax_const(kernels.block_weights(packed, lanes))

    def compute(x: Any, weights: Any, *rest: Any) -> Any:
        return kernels.binary_dense(
            x,
            weights,
            list(rest),
            in_features=int(attrs["in_features"]),
            out_features=out_features,
            planes=planes,
            lanes=lanes,
            output=attrs["output_format"],
        )

    return bb.emit_te(
        compute, args[0], blocked, *epilogue, primfunc_name_hint="bitc_binary_dense", **_attrs("binary_dense")
    )


def _packed_max_pool(bb: Any, node: ir.Node, args: list[Any], lanes: int) -> Any:
    attrs = ops.get("PackedMaxPool").attrs(node)

    def compute(x: Any) -> Any:
        return kernels.packed_max_pool(x, tuple(attrs["kernel_shape"]), tuple(attrs["strides"]), tuple(attrs["pads"]))

    return bb.emit_te(compute, args[0], primfunc_name_hint="bitc_packed_max_pool", **_attrs("packed_max_pool"))


_EMITTERS = {
    "BitPack": _bitpack,
    "BinaryConv": _binary_conv,
    "BinaryDense": _binary_dense,
    "PackedMaxPool": _packed_max_pool,
}
