"""What the CUDA emitters share: a bitc node as a TE compute plus its GPU schedule (`TeKernel`), its emission as one
scheduled call_tir, and the schedules."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from bitc.codegen.cuda import schedules as gpu_schedules
from bitc.codegen.kernels.nodes import relax_const
from bitc.codegen.registry import kernel_attrs

if TYPE_CHECKING:
    from tvm import relax, s_tir, te


@dataclass
class TeKernel:
    """A bitc node as one TE compute over (activation, *constants), with the GPU schedule to apply to it.

    Kept apart from the Relax emission so that the same compute can be built for the CPU in tests: the GPU
    schedule only reorders it."""

    name: str
    compute: Callable[..., te.Tensor]
    constants: list[np.ndarray]
    names: list[str]
    schedule: Callable[[s_tir.Schedule], None] | None


def emit_scheduled_te(bb: relax.BlockBuilder, kernel: TeKernel, args: list[relax.Expr]) -> relax.Expr:
    """Build the compute over placeholders shaped like `args` + the kernel's constants, schedule it for the GPU
    (None: dlight schedules it later) and call it."""
    from tvm import relax, s_tir, te

    inputs = [*args, *(relax_const(c) for c in kernel.constants)]
    placeholders = [
        te.placeholder([int(d) for d in value.ty.shape], value.ty.dtype, name=name)
        for value, name in zip(inputs, kernel.names, strict=True)
    ]
    output = kernel.compute(*placeholders)
    func = te.create_prim_func([*placeholders, output])
    if kernel.schedule is not None:
        sch = s_tir.Schedule(func)
        kernel.schedule(sch)
        func = sch.mod["main"]
    attrs = kernel_attrs(kernel.name, scheduled=kernel.schedule is not None)
    gvar = bb.add_func(func.without_attr("global_symbol").with_attr(attrs), f"bitc_{kernel.name}")
    shape = [int(d) for d in output.shape]
    return bb.emit(relax.call_tir(gvar, inputs, relax.TensorType(shape, output.dtype)))


def popcount_schedule(*shared: str) -> Callable[[s_tir.Schedule], None]:
    """Elementwise epilogue blocks get a thread each, then the popcount GEMM its shared-memory tiles."""

    def schedule(sch: s_tir.Schedule) -> None:
        gpu_schedules.schedule_elementwise(sch, skip={"popc", "pad"})
        gpu_schedules.schedule_popcount_gemm(sch, shared=shared)

    return schedule


def elementwise_schedule(sch: s_tir.Schedule) -> None:
    gpu_schedules.schedule_elementwise(sch, skip=set())
