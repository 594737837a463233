"""Relax IRModule → scheduled TIR → an LLVM executable for a CPU target."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import onnx_ir as ir

from bitc.codegen.cpu import channel_gather, epilogue_fusion, fast_math, matmul_packing, matmul_padding, nchwc, tuning
from bitc.codegen.cpu.schedules import default_schedule_pass
from bitc.codegen.relax import half_accumulation, index_checks, nan_semantics
from bitc.codegen.relax.legalize_cache import Legalizer
from bitc.codegen.relax.lowering import legalize_and_fuse
from bitc.codegen.relax_import import to_relax
from bitc.codegen.target import CpuTarget
from bitc.errors import BitcError, CompileError, first_line

if TYPE_CHECKING:
    import tvm
    from tvm import relax


def compile_model(
    model: ir.Model, target: CpuTarget, tuning_options: tuning.TuningOptions, source: str
) -> tuple[relax.VMExecutable, dict[str, Any], str, list[str]]:
    """Import, lower and fuse; tune or apply tuned schedules; default-schedule the rest; compile.

    Returns the executable, the tuning report, the conv layout used and the convolutions left to generic code
    (`lower_to_fused_tir`)."""
    mod, tuning_report, conv_layout, generic_convs = schedule_model(model, target, tuning_options, source)
    return compile_module(mod, target, source), tuning_report, conv_layout, generic_convs


def schedule_model(
    model: ir.Model,
    target: CpuTarget,
    tuning_options: tuning.TuningOptions,
    source: str,
    *,
    pack_weights: bool = True,
) -> tuple[tvm.IRModule, dict[str, Any], str, list[str]]:
    """Everything before code generation: the scheduled module (one `main`), the tuning report, the conv layout
    and the convolutions left to generic code. `pack_weights`: see `lower_to_fused_tir`."""
    mod = to_relax(model, source, target)
    try:
        mod, conv_layout, generic_convs = lower_to_fused_tir(mod, target, pack_weights=pack_weights)
        mod, tuning_report = tuning.apply(mod, target, tuning_options)
        with target.tvm():
            mod = default_schedule_pass(target)(mod)
    except BitcError:
        raise
    except Exception as exc:
        raise CompileError(f"{source}: TVM compilation failed: {first_line(exc)}") from None
    return mod, tuning_report, conv_layout, generic_convs


def compile_module(mod: tvm.IRModule, target: CpuTarget, source: str) -> relax.VMExecutable:
    """A scheduled module (one or several entry functions) → the executable."""
    import tvm

    try:
        return tvm.compile(mod, target=target.tvm(reassociate=True))
    except BitcError:
        raise
    except Exception as exc:
        raise CompileError(f"{source}: TVM compilation failed: {first_line(exc)}") from None


def lower_to_fused_tir(
    mod: tvm.IRModule, target: CpuTarget, *, pack_weights: bool = True
) -> tuple[tvm.IRModule, str, list[str]]:
    """Blocked conv layout, legalisation to TIR and operator fusion: the form tuning and scheduling work on.
    `pack_weights`: constant matmul weights packed into column panels (`matmul_packing`; off where several sizes
    share one set of weights).

    Returns the module, the conv layout used ("blocked", or "NCHW" with the reason where TVM's layout inference
    refused the graph, e.g. 5-D BatchNorm: that still compiles, with slower convs) and the convolutions left to
    TVM's generic code (`nchwc.generic_convs`).
    """
    import tvm
    from tvm import relax

    with target.tvm():
        mod = nchwc.clip_to_relax_ops(mod)  # whether or not the layout changes: their legalization keeps NaN
        mod = half_accumulation.accumulate_half_in_float(mod)
        try:
            refused: list[str] = []
            mod = nchwc.convert_conv_layout(mod, block=target.vector_lanes, refused=refused)
            conv_layout = "blocked" if not refused else f"blocked, except around {_listed(refused)} (TVM refused)"
        except Exception as exc:
            conv_layout = f"NCHW (layout conversion refused: {first_line(exc, 160)})"
        mod = nchwc.cancel_layout_round_trips(mod)
        # a tensor two convs read gets one layout transform each from ConvertLayout: keep one (PicoDet: 2 x 3 ms)
        mod = relax.transform.EliminateCommonSubexpr()(mod)
        mod = channel_gather.gather_channel_permutations(mod)
        mod = matmul_padding.pad_matmul_columns(mod, target.vector_lanes)
        if pack_weights:
            mod = matmul_packing.pack_matmul_weights(mod, target.vector_lanes)
        generic = nchwc.generic_convs(mod)
        passes = legalize_and_fuse(
            legalize_map(), fold_call_tirs=True, after_fuse_ops=[epilogue_fusion.merge_epilogue_groups_pass()]
        )
        lowered = tvm.transform.Sequential(passes)(mod)
    return lowered, conv_layout, generic


def _listed(items: list[str], shown: int = 4) -> str:
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


def legalize_map() -> dict[str, Legalizer]:
    """Our TE computes where TVM's legalization is missing (blocked conv), slow on CPUs (exp, erf, softmax) or
    loses NaN and infinities (max, min, relu, clip, max/min reductions, max-pooling)."""
    return {
        **nan_semantics.legalize_map(),
        **fast_math.legalize_map(),
        "relax.nn.conv2d": nchwc.legalize_conv2d,
        "relax.layout_transform": nchwc.legalize_bijective_layout_transform,
        "relax.take": index_checks.legalize_take,
    }
