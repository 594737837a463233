"""Relax IRModule → scheduled TIR → shared library bytes for a CPU target."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx_ir as ir

from bitc.atomic import process_temp_dir
from bitc.codegen import fast_math, half_accumulation, lowbit_kernels, nan_semantics, nchwc, tuning
from bitc.codegen.bitc_relax import KernelTarget, cancel_layout_round_trips
from bitc.codegen.cpu_schedules import default_schedule_pass
from bitc.codegen.fold_call_tir import fold_call_tir_pass
from bitc.codegen.legalize_cache import cached_legalize_map
from bitc.codegen.relax_import import to_relax
from bitc.codegen.target import CpuTarget, CudaTarget, Target
from bitc.errors import BitcError, CompileError, first_line


@dataclass
class BuildResult:
    library: bytes
    seconds: float
    tuning: dict[str, Any] = field(default_factory=dict)
    conv_layout: str = "blocked"
    members: dict[str, bytes] = field(default_factory=dict)  # artifact members beside the library
    kernels: dict[str, Any] = field(default_factory=dict)  # manifest entry describing `members`


def lower_to_fused_tir(mod: Any, target: CpuTarget) -> tuple[Any, str]:
    """Blocked conv layout, legalisation to TIR and operator fusion: the form tuning and scheduling work on.

    Returns the module and the conv layout used: "blocked", or "NCHW" with the reason where TVM's layout
    inference refused the graph (e.g. 5-D BatchNorm) — that still compiles, with slower convs.
    """
    import tvm
    from tvm import relax

    with target.tvm():
        mod = nchwc.clip_to_relax_ops(mod)  # whether or not the layout changes: their legalization keeps NaN
        mod = half_accumulation.accumulate_half_in_float(mod)
        try:
            mod, conv_layout = nchwc.convert_conv_layout(mod, block=target.vector_lanes), "blocked"
        except Exception as exc:
            conv_layout = f"NCHW (layout conversion refused: {first_line(exc, 160)})"
        mod = cancel_layout_round_trips(mod)
        lowered = tvm.transform.Sequential(
            [
                relax.transform.DecomposeOpsForInference(),
                relax.transform.CanonicalizeBindings(),
                # Legalize before folding constants: FoldConstant legalizes every call it visits (with TVM's
                # uncached legalizations) just to see whether it can fold it; after LegalizeOps it only
                # evaluates the call_tirs whose arguments are all constant (pre-blocked weights, folded BN).
                relax.transform.LegalizeOps(customize_legalize_map=cached_legalize_map(_legalize_map())),
                relax.transform.AnnotateTIROpPattern(),
                # TVM's FoldConstant rebuilds the PrimFunc for every foldable call (its build cache never hits):
                # fold those first with one build per PrimFunc, so that compile time does not grow ~40 ms a conv
                fold_call_tir_pass(),
                relax.transform.FoldConstant(),
                relax.transform.FuseOps(),
                relax.transform.FuseTIR(),
            ]
        )(mod)
    return lowered, conv_layout


def _legalize_map() -> dict[str, Any]:
    """Our TE computes where TVM's legalization is missing (blocked conv), slow on CPUs (exp, erf, softmax) or
    loses NaN and infinities (max, min, relu, clip, max/min reductions, max-pooling)."""
    return {**nan_semantics.legalize_map(), **fast_math.legalize_map(), "relax.nn.conv2d": nchwc.legalize_conv2d}


def build(
    model: ir.Model,
    target: Target,
    *,
    tuning_options: tuning.TuningOptions | None = None,
    source: str = "model",
) -> BuildResult:
    """Import, lower and fuse; tune or apply tuned schedules; default-schedule the rest; export one library."""
    import tvm

    start = time.perf_counter()
    tuning_options = tuning_options or tuning.TuningOptions()
    if isinstance(target, CudaTarget):
        from bitc.codegen.cuda_build import build_cuda

        return build_cuda(model, target, tuning_trials=tuning_options.trials, source=source)
    lookup = lowbit_kernels.lookup_isa(set(target.cpu_features()))
    mod = to_relax(model, source, KernelTarget(lanes=target.vector_lanes, lookup=lookup, cores=target.num_cores))
    try:
        mod, conv_layout = lower_to_fused_tir(mod, target)
        mod, tuning_report = tuning.apply(mod, target, tuning_options)
        with target.tvm():
            mod = default_schedule_pass(target.num_cores, target.vector_lanes)(mod)
        executable = tvm.compile(mod, target=target.tvm(reassociate=True))
    except BitcError:
        raise
    except Exception as exc:
        raise CompileError(f"{source}: TVM compilation failed: {first_line(exc)}") from None
    library = export_library(executable)
    seconds = time.perf_counter() - start
    return BuildResult(library=library, seconds=seconds, tuning=tuning_report, conv_layout=conv_layout)


def export_library(executable: Any) -> bytes:
    """The built executable as shared-library bytes (TVM exports only to a file)."""
    # in this process's bitc temp folder, intermediate objects too: a later bitc removes what a killed build left
    with tempfile.TemporaryDirectory(prefix="build-", dir=process_temp_dir()) as tmp:
        lib_path = Path(tmp) / "model.so"
        executable.export_library(str(lib_path), workspace_dir=tmp)
        return lib_path.read_bytes()
