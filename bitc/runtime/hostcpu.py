"""What the host CPU can execute, so an artifact built for another CPU is refused instead of crashing."""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

# Instruction-set flags (as /proc/cpuinfo spells them) whose absence makes generated code fault (SIGILL).
ISA_FLAGS = (
    "sse4_1", "sse4_2", "popcnt", "avx", "avx2", "fma", "f16c", "bmi1", "bmi2",
    "avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni", "avx512_bf16",
    "avx512vbmi", "avx512_vbmi2", "avx512_bitalg", "avx512_vpopcntdq", "avx512ifma",
)  # fmt: skip


@functools.cache
def host_cpu_flags() -> frozenset[str]:
    """The ISA flags of this machine (empty where /proc/cpuinfo is unavailable)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split()) & frozenset(ISA_FLAGS)
    return frozenset()


@functools.cache
def physical_cores() -> int:
    """Cores this process may run on, counting SMT siblings once (compute-bound kernels gain nothing from a
    core's second hardware thread); falls back to the logical count where /proc/cpuinfo says nothing."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return max(1, len(allowed))
    cores = set()
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(":", 1) for line in block.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        if fields.get("processor", "").isdigit() and int(fields["processor"]) in allowed:
            cores.add(
                (
                    fields.get("physical id"),
                    fields.get("core id"),
                    fields["processor"] if "core id" not in fields else None,
                )
            )
    return max(1, len(cores) or len(allowed))


def host_arch() -> str:
    return platform.machine()
