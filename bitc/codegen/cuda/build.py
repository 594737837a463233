"""Relax IRModule → scheduled CUDA kernels → one host library plus the kernels compiled ahead of time.

TVM keeps a CUDA module's kernels as CUDA C source and compiles them when the library loads (NVRTC or nvcc on
the machine that runs the model, seconds per load). bitc compiles them here instead, with nvcc, to a fatbin
holding SASS for the target arch and PTX for any newer GPU; the artifact carries it, and the runtime answers
TVM's compile request with those bytes (`bitc.runtime.tvm_loader.CUDA_COMPILE_HOOK`), so the deployment machine
needs only the NVIDIA driver.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx_ir as ir

from bitc.atomic import process_temp_dir
from bitc.codegen.relax import index_checks, nan_semantics
from bitc.codegen.relax.lowering import legalize_and_fuse
from bitc.codegen.relax_import import to_relax
from bitc.codegen.target import CudaTarget
from bitc.errors import BadInputError, BitcError, CompileError, first_line

if TYPE_CHECKING:
    import tvm
    from tvm import relax

FATBIN_NAME = "kernels.fatbin"
PTX_NAME = "kernels.ptx"


@dataclass
class CudaKernels:
    """The CUDA C source TVM generated, and what nvcc made of it."""

    source: str
    ptx: bytes
    fatbin: bytes

    @property
    def source_sha256(self) -> str:
        return hashlib.sha256(self.source.encode()).hexdigest()

    @property
    def members(self) -> dict[str, bytes]:
        """The artifact members that carry the kernels."""
        return {FATBIN_NAME: self.fatbin, PTX_NAME: self.ptx}

    @property
    def manifest(self) -> dict[str, Any]:
        """The manifest entry describing `members`."""
        return {"source_sha256": self.source_sha256, "fatbin": FATBIN_NAME, "ptx": PTX_NAME}


def lower(mod: tvm.IRModule, target: CudaTarget) -> tvm.IRModule:
    """Legalise to TIR, fuse, and give every function bitc did not schedule itself dlight's GPU schedule."""
    import tvm
    from tvm.s_tir import dlight

    with target.tvm():
        return tvm.transform.Sequential(
            [
                *legalize_and_fuse(
                    {**nan_semantics.legalize_map(), "relax.take": index_checks.legalize_take}, fold_call_tirs=False
                ),
                dlight.ApplyDefaultSchedule(
                    dlight.gpu.Matmul(),
                    dlight.gpu.GEMV(),
                    dlight.gpu.Reduction(),
                    dlight.gpu.GeneralReduction(),
                    dlight.gpu.Fallback(),
                ),
            ]
        )(mod)


def compile_model(
    model: ir.Model, target: CudaTarget, *, tuning_trials: int = 0, source: str = "model"
) -> tuple[relax.VMExecutable, CudaKernels]:
    """Import, lower, schedule, compile; returns the host executable and the kernels nvcc compiled."""
    import tvm

    if shutil.which("nvcc") is None:
        raise BadInputError("--target cuda needs nvcc (the CUDA toolkit) on PATH to compile the kernels")
    if tuning_trials > 0:
        raise BadInputError(
            "--tune-trials: MetaSchedule tuning is not wired to the CUDA target yet (it gets dlight's schedules)"
        )
    mod = index_checks.for_cuda(to_relax(model, source, target))  # the indices live in GPU memory
    try:
        mod = lower(mod, target)
        executable = tvm.compile(mod, target=target.tvm())
        kernels = compile_kernels(cuda_source(executable.mod), target)
    except BitcError:
        raise
    except Exception as exc:
        raise CompileError(f"{source}: CUDA compilation failed: {first_line(exc)}") from None
    return executable, kernels


def cuda_source(module: tvm.runtime.Module) -> str:
    """The CUDA C source of the (one) CUDA module in a built library's import tree."""
    found = []

    def walk(node: tvm.runtime.Module) -> None:
        if node.kind == "cuda":
            found.append(node.inspect_source(""))
        for child in node.imports:
            walk(child)

    walk(module)
    if len(found) != 1:
        raise CompileError(f"expected one CUDA module in the built library, found {len(found)}")
    return found[0]


def compile_kernels(source: str, target: CudaTarget) -> CudaKernels:
    """nvcc: CUDA C → PTX for compute_XY, then PTX → fatbin with SASS for sm_XY and the PTX itself."""
    compute = f"compute_{target.compute_capability}"
    with tempfile.TemporaryDirectory(prefix="nvcc-", dir=process_temp_dir()) as tmp:
        cu, ptx, fatbin = (Path(tmp) / f"kernels.{ext}" for ext in ("cu", "ptx", "fatbin"))
        cu.write_text(source)
        _nvcc(["--ptx", "-O3", f"-arch={compute}", "-o", str(ptx), str(cu)])
        _nvcc(["--fatbin", "-gencode", f"arch={compute},code=[{target.arch},{compute}]", "-o", str(fatbin), str(ptx)])
        return CudaKernels(source=source, ptx=ptx.read_bytes(), fatbin=fatbin.read_bytes())


def _nvcc(args: list[str]) -> None:
    done = subprocess.run(["nvcc", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if "error" in line.lower()] or done.stderr.splitlines()
        raise CompileError(f"nvcc failed: {errors[0].strip() if errors else f'exit code {done.returncode}'}")
