"""What the CUDA emitters share: a bitc node as a TE compute plus its GPU schedule (`TeKernel`), the schedules,
and the parts of a node its kernels are built from (epilogue constants, a conv's geometry and padding fix)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir

from bitc import ops
from bitc.codegen import binary_kernels as kernels
from bitc.codegen import gpu_schedules
from bitc.codegen.bitc_relax import as_planes, constant_input


@dataclass
class TeKernel:
    """A bitc node as one TE compute over (activation, *constants), with the GPU schedule to apply to it.

    Kept apart from the Relax emission so that the same compute can be built for the CPU in tests: the GPU
    schedule only reorders it."""

    name: str
    compute: Callable[..., Any]
    constants: list[np.ndarray]
    names: list[str]
    schedule: Callable[[Any], None] | None


def popcount_schedule(*shared: str) -> Callable[[Any], None]:
    """Elementwise epilogue blocks get a thread each, then the popcount GEMM its shared-memory tiles."""

    def schedule(sch: Any) -> None:
        gpu_schedules.schedule_elementwise(sch, skip={"popc", "pad"})
        gpu_schedules.schedule_popcount_gemm(sch, shared=shared)

    return schedule


def elementwise_schedule(sch: Any) -> None:
    gpu_schedules.schedule_elementwise(sch, skip=set())


def epilogue_constants(node: ir.Node) -> list[np.ndarray]:
    return [np.ascontiguousarray(as_planes(constant_input(node, i))) for i in range(2, len(node.inputs))]


@dataclass
class ConvParts:
    """What a BinaryConv node's kernels share: geometry, epilogue constants, zero-padding correction."""

    geometry: kernels.ConvGeometry
    epilogue: list[np.ndarray]
    correction: list[np.ndarray]  # [] or [table]
    classes: tuple[int, int, int, int]
    output: str


def conv_parts(node: ir.Node) -> ConvParts:
    attrs = ops.get("BinaryConv").attrs(node)
    packed = constant_input(node, 1)
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
    correction, classes = [], (0, 0, 0, 0)
    if attrs["pad_value"] == 0 and any(geometry.pads):
        table, *classes = kernels.zero_pad_correction(packed, geometry)
        correction = [table]
    return ConvParts(geometry, epilogue_constants(node), correction, tuple(classes), attrs["output_format"])
