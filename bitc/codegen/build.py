"""An onnx-ir model → one shared library (plus, on CUDA, the kernels compiled ahead of time) for a target.

The target's builder (`cpu.build`, `cuda.build`) imports, lowers, schedules and compiles; what follows is shared:
the compiled executable exported to library bytes, with what the manifest records about the build.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx_ir as ir

from bitc.atomic import process_temp_dir
from bitc.codegen.cpu import build as cpu_build
from bitc.codegen.cpu import tuning
from bitc.codegen.cuda import build as cuda_build
from bitc.codegen.target import CudaTarget, Target

if TYPE_CHECKING:
    from tvm import relax


@dataclass
class BuildResult:
    library: bytes
    seconds: float
    tuning: dict[str, Any] = field(default_factory=dict)
    conv_layout: str = "blocked"
    generic_convs: list[str] = field(default_factory=list)  # convs left to TVM's generic (slow) code, with why
    members: dict[str, bytes] = field(default_factory=dict)  # artifact members beside the library
    kernels: dict[str, Any] = field(default_factory=dict)  # manifest entry describing `members`


def build(
    model: ir.Model,
    target: Target,
    *,
    tuning_options: tuning.TuningOptions | None = None,
    source: str = "model",
) -> BuildResult:
    """Import, lower and fuse; tune or apply tuned schedules; default-schedule the rest; export one library."""
    start = time.perf_counter()
    tuning_options = tuning_options or tuning.TuningOptions()
    if isinstance(target, CudaTarget):
        executable, kernels = cuda_build.compile_model(
            model, target, tuning_trials=tuning_options.trials, source=source
        )
        return BuildResult(
            library=export_library(executable),
            seconds=time.perf_counter() - start,
            tuning={"trials": 0},
            conv_layout="NCHW",
            members=kernels.members,
            kernels=kernels.manifest,
        )
    executable, tuning_report, conv_layout, generic = cpu_build.compile_model(model, target, tuning_options, source)
    library = export_library(executable)
    seconds = time.perf_counter() - start
    return BuildResult(library, seconds, tuning_report, conv_layout, generic_convs=generic)


def export_library(executable: relax.VMExecutable) -> bytes:
    """The built executable as shared-library bytes (TVM exports only to a file)."""
    # in this process's bitc temp folder, intermediate objects too: a later bitc removes what a killed build left
    with tempfile.TemporaryDirectory(prefix="build-", dir=process_temp_dir()) as tmp:
        lib_path = Path(tmp) / "model.so"
        executable.export_library(str(lib_path), workspace_dir=tmp)
        return lib_path.read_bytes()
