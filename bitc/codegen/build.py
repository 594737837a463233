"""An onnx-ir model → one shared library (plus, on CUDA, the kernels compiled ahead of time) for a target.

The target's builder (`cpu.build`, `cuda.build`) imports, lowers, schedules and compiles; what follows is shared:
the compiled executable exported to library bytes, with what the manifest records about the build.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx_ir as ir

from bitc.atomic import process_temp_dir
from bitc.codegen.cpu import build as cpu_build
from bitc.codegen.cpu import tuning
from bitc.codegen.cuda import build as cuda_build
from bitc.codegen.relax import module_merge
from bitc.codegen.target import CpuTarget, CudaTarget, Target
from bitc.errors import CompileError, first_line

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


def build_sizes(
    models: Sequence[ir.Model],
    target: CpuTarget,
    *,
    tuning_options: tuning.TuningOptions | None = None,
    source: str = "model",
) -> BuildResult:
    """Several input sizes of one model (each already through the passes at its shapes) as one CPU library: size
    i's entry function is `module_merge.entry_name(i)`, and the weights the sizes share are stored once."""
    start = time.perf_counter()
    tuning_options = tuning_options or tuning.TuningOptions()
    scheduled = [  # packed matmul weights would not be shared between a GEMV size and the others
        cpu_build.schedule_model(model, target, tuning_options, source, pack_weights=False) for model in models
    ]
    try:
        merged = module_merge.merge_sizes([mod for mod, *_ in scheduled])
    except ValueError as exc:
        raise CompileError(f"{source}: joining the compiled sizes failed: {first_line(exc)}") from None
    executable = cpu_build.compile_module(merged, target, source)
    _, tuning_report, conv_layout, _ = scheduled[0]
    generic = list(dict.fromkeys(conv for *_, convs in scheduled for conv in convs))
    library = export_library(executable)
    return BuildResult(library, time.perf_counter() - start, tuning_report, conv_layout, generic_convs=generic)


def export_library(executable: relax.VMExecutable) -> bytes:
    """The built executable as shared-library bytes (TVM exports only to a file)."""
    # in this process's bitc temp folder, intermediate objects too: a later bitc removes what a killed build left
    with tempfile.TemporaryDirectory(prefix="build-", dir=process_temp_dir()) as tmp:
        lib_path = Path(tmp) / "model.so"
        executable.export_library(str(lib_path), workspace_dir=tmp, options=["-Wl,--strip-debug"])
        return lib_path.read_bytes()
