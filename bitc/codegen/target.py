"""Compilation targets: what `--target` means and what the manifest records about it.

The TVM wheel's LLVM triple rejects `mcpu=native`, so the host CPU is named explicitly (LLVM's own detection).
The ISA features that the chosen CPU implies are recorded so the runtime can refuse a machine that lacks them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from bitc.errors import BadInputError
from bitc.runtime.hostcpu import ISA_FLAGS, host_arch, physical_cores


@dataclass(frozen=True)
class CpuTarget:
    """An LLVM CPU target: `mcpu` is an LLVM CPU name, `num_cores` the threads the schedules are tuned for."""

    mcpu: str
    num_cores: int

    @property
    def name(self) -> str:
        return f"cpu:{self.mcpu}"

    def tvm(self, *, reassociate: bool = False) -> Any:
        """The TVM target; `reassociate` lets LLVM reorder float sums (code generation only: the scalar row
        reductions of layer norm and softmax then vectorise, 2× faster, at float-rounding-level differences)."""
        import tvm

        attrs = {"kind": "llvm", "mcpu": self.mcpu, "num-cores": self.num_cores}
        return tvm.target.Target({**attrs, "fast-math-reassoc": True} if reassociate else attrs)

    @property
    def vector_lanes(self) -> int:
        """float32 lanes per vector register: 16 with AVX-512, else 8 (AVX2; also the layout block size)."""
        return 16 if "avx512f" in self.cpu_features() else 8

    def cpu_features(self) -> list[str]:
        """The ISA flags (as /proc/cpuinfo spells them) that code for this CPU may use."""
        return _cpu_features(self.mcpu)

    def to_manifest(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": "llvm",
            "mcpu": self.mcpu,
            "num_cores": self.num_cores,
            "arch": host_arch(),
            "cpu_features": self.cpu_features(),
        }


def parse_target(text: str, num_cores: int | None = None) -> CpuTarget:
    """'cpu' (this machine), 'cpu:<llvm cpu name>' (e.g. cpu:skylake-avx512, cpu:x86-64-v3); 'llvm' = 'cpu'."""
    import tvm

    kind, _, cpu = text.strip().partition(":")
    kind = kind.lower()
    if kind in ("cuda", "gpu", "nvidia"):
        raise BadInputError(f"target '{text}': the CUDA target is not available in this build; use --target cpu")
    if kind not in ("cpu", "llvm"):
        raise BadInputError(f"unknown target '{text}'; use 'cpu' or 'cpu:<llvm cpu name>'")
    cores = num_cores or physical_cores()
    if not cpu or cpu == "native":
        return CpuTarget(mcpu=str(tvm.target.codegen.llvm_get_system_cpu()), num_cores=cores)
    triple = tvm.target.codegen.llvm_get_system_triple()
    if not tvm.target.codegen.llvm_is_valid_cpu(cpu, triple):
        raise BadInputError(f"target '{text}': '{cpu}' is not a CPU name LLVM knows for {triple}")
    return CpuTarget(mcpu=cpu, num_cores=cores)


@functools.cache
def _cpu_features(mcpu: str) -> list[str]:
    import tvm

    target = tvm.target.Target({"kind": "llvm", "mcpu": mcpu})
    llvm_features = {_canonical(str(f)) for f in tvm.target.codegen.llvm_get_cpu_features(target)}
    return sorted(flag for flag in ISA_FLAGS if _canonical(flag) in llvm_features)


def _canonical(flag: str) -> str:
    """cpuinfo and LLVM spell features differently (sse4_1 / sse4.1, bmi1 / bmi, avx512_vnni / avx512vnni)."""
    flag = flag.replace("_", "").replace(".", "").lower()
    return "bmi" if flag == "bmi1" else flag
