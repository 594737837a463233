"""Compilation targets: what `--target` means, what the manifest records about it, and what the emitters and
schedules need to know of the machine (one target object is passed through the whole build).

The TVM wheel's LLVM triple rejects `mcpu=native`, so the host CPU is named explicitly (LLVM's own detection).
The ISA features that the chosen CPU implies are recorded so the runtime can refuse a machine that lacks them.
A CUDA target names a compute capability (`cuda:sm_80`); the kernels are compiled for it ahead of time and also
carried as PTX, which newer GPUs compile when the artifact loads.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from bitc.codegen.kernels import lowbit_kernels
from bitc.errors import BadInputError
from bitc.runtime.hostcpu import ISA_FLAGS, host_arch, physical_cores
from bitc.runtime.tvm_loader import arch_capability

if TYPE_CHECKING:
    import tvm


@dataclass(frozen=True)
class CpuTarget:
    """An LLVM CPU target: `mcpu` is an LLVM CPU name, `num_cores` the threads the schedules are tuned for."""

    kind: ClassVar[str] = "llvm"  # the codegen registry's target kind

    mcpu: str
    num_cores: int

    @property
    def name(self) -> str:
        return f"cpu:{self.mcpu}"

    def tvm(self, *, reassociate: bool = False) -> tvm.target.Target:
        """The TVM target; `reassociate` lets LLVM reorder float sums (code generation only: the scalar row
        reductions of layer norm and softmax then vectorise, 2× faster, at float-rounding-level differences)."""
        import tvm

        attrs = {"kind": "llvm", "mcpu": self.mcpu, "num-cores": self.num_cores}
        return tvm.target.Target({**attrs, "fast-math-reassoc": True} if reassociate else attrs)

    @property
    def vector_lanes(self) -> int:
        """float32 lanes per vector register: 16 with AVX-512, else 8 (AVX2; also the layout block size)."""
        return 16 if "avx512f" in self.cpu_features() else 8

    @property
    def lookup_isa(self) -> str | None:
        """The ISA of the low-bit table-lookup kernel this CPU runs (`lowbit_kernels.lookup_isa`; None: the portable
        compute)."""
        return lowbit_kernels.lookup_isa(set(self.cpu_features()))

    def cpu_features(self) -> list[str]:
        """The ISA flags (as /proc/cpuinfo spells them) that code for this CPU may use."""
        return _cpu_features(self.mcpu)

    def to_manifest(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "mcpu": self.mcpu,
            "num_cores": self.num_cores,
            "arch": host_arch(),
            "cpu_features": self.cpu_features(),
        }


DEFAULT_CUDA_ARCH = "sm_80"  # Ampere: the oldest arch with 1-bit mma.m16n8k256; its PTX runs on every newer GPU


@dataclass(frozen=True)
class CudaTarget:
    """An NVIDIA GPU of compute capability `arch` ("sm_80"); `arch_source` says whether it was asked for, found
    on this machine's GPU, or the default."""

    kind: ClassVar[str] = "cuda"  # the codegen registry's target kind

    arch: str = DEFAULT_CUDA_ARCH
    arch_source: str = "default"

    @property
    def name(self) -> str:
        return f"cuda:{self.arch}"

    @property
    def compute_capability(self) -> int:
        """80 for sm_80, 90 for sm_90 (the PTX `compute_` number)."""
        return arch_capability(self.arch)

    @property
    def has_b1_mma(self) -> bool:
        """mma.sync m16n8k256 on 1-bit operands (`.and.popc`) exists from sm_80 on."""
        return self.compute_capability >= 80

    def tvm(self) -> tvm.target.Target:
        import tvm

        return tvm.target.Target({"kind": "cuda", "arch": self.arch, "host": {"kind": "llvm"}})

    def to_manifest(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "arch": self.arch,
            "arch_source": self.arch_source,
            "ptx": f"compute_{self.compute_capability}",
            "host_arch": host_arch(),
        }


Target = CpuTarget | CudaTarget


def parse_target(text: str, num_cores: int | None = None) -> Target:
    """'cpu' (this machine), 'cpu:<llvm cpu name>' (e.g. cpu:skylake-avx512, cpu:x86-64-v3); 'llvm' = 'cpu';
    'cuda' (this machine's GPU, else sm_80), 'cuda:sm_XY'."""
    import tvm

    kind, _, cpu = text.strip().partition(":")
    kind = kind.lower()
    if kind in ("cuda", "gpu", "nvidia"):
        return _cuda_target(text, cpu.strip().lower())
    if kind not in ("cpu", "llvm"):
        raise BadInputError(f"unknown target '{text}'; use 'cpu', 'cpu:<llvm cpu name>', 'cuda' or 'cuda:sm_XY'")
    cores = num_cores or physical_cores()
    if not cpu or cpu == "native":
        return CpuTarget(mcpu=str(tvm.target.codegen.llvm_get_system_cpu()), num_cores=cores)
    triple = tvm.target.codegen.llvm_get_system_triple()
    if not tvm.target.codegen.llvm_is_valid_cpu(cpu, triple):
        raise BadInputError(f"target '{text}': '{cpu}' is not a CPU name LLVM knows for {triple}")
    return CpuTarget(mcpu=cpu, num_cores=cores)


def _cuda_target(text: str, arch: str) -> CudaTarget:
    if not arch:
        detected = local_gpu_arch()
        return CudaTarget(detected, "detected") if detected else CudaTarget()
    known = nvcc_archs()
    if arch not in known:
        listed = ", ".join(known) or "none (nvcc not found)"
        raise BadInputError(f"target '{text}': '{arch}' is not a GPU arch this nvcc builds for; known: {listed}")
    return CudaTarget(arch, "requested")


@functools.cache
def nvcc_archs() -> list[str]:
    """The sm_XY names `nvcc --list-gpu-arch` accepts (empty when nvcc is missing)."""
    import shutil
    import subprocess

    if shutil.which("nvcc") is None:
        return []
    listed = subprocess.run(["nvcc", "--list-gpu-arch"], capture_output=True, text=True, check=False).stdout
    return [line.strip().replace("compute_", "sm_") for line in listed.splitlines() if line.startswith("compute_")]


def local_gpu_arch() -> str | None:
    """The compute capability of GPU 0 on this machine as 'sm_XY', or None (no GPU or no driver)."""
    try:
        import tvm

        device = tvm.cuda(0)
        return f"sm_{device.compute_version.replace('.', '')}" if device.exist else None
    except Exception:
        return None


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
