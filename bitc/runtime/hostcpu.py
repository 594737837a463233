"""What the host CPU can execute, so an artifact built for another CPU is refused instead of crashing."""

from __future__ import annotations

import functools
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


def host_arch() -> str:
    return platform.machine()
