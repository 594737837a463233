"""What the CUDA emitters share: a bitc node as a TE compute plus its GPU schedule (`TeKernel`), and the
schedules."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bitc.codegen import gpu_schedules


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
