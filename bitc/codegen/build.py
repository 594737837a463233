"""Relax IRModule → optimised TIR → shared library bytes for a CPU target."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx_ir as ir

from bitc.codegen import tuning
from bitc.codegen.relax_import import to_relax
from bitc.codegen.target import CpuTarget
from bitc.errors import CompileError, first_line


@dataclass
class BuildResult:
    library: bytes
    seconds: float
    tuning: dict[str, Any] = field(default_factory=dict)


def build(
    model: ir.Model,
    target: CpuTarget,
    *,
    tuning_options: tuning.TuningOptions | None = None,
    source: str = "model",
) -> BuildResult:
    """Import, legalise and fuse, tune or apply tuned schedules, and export one shared library."""
    import tvm
    from tvm import relax

    start = time.perf_counter()
    tuning_options = tuning_options or tuning.TuningOptions()
    mod = to_relax(model, source)
    tvm_target = target.tvm()
    try:
        with tvm_target:
            mod = tvm.transform.Sequential(
                [
                    relax.transform.DecomposeOpsForInference(),
                    relax.transform.CanonicalizeBindings(),
                    relax.get_pipeline("zero"),
                ]
            )(mod)
        mod, tuning_report = tuning.schedule(mod, tvm_target, tuning_options)
        executable = tvm.compile(mod, target=tvm_target)
    except Exception as exc:
        raise CompileError(f"{source}: TVM compilation failed: {first_line(exc)}") from None
    with tempfile.TemporaryDirectory(prefix="bitc-build-") as tmp:
        lib_path = Path(tmp) / "model.so"
        executable.export_library(str(lib_path))
        library = lib_path.read_bytes()
    return BuildResult(library=library, seconds=time.perf_counter() - start, tuning=tuning_report)
