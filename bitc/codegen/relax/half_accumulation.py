"""float16 convolutions and matmuls accumulate in float32, as onnxruntime's CPU kernels do.

TVM's legalizations accumulate in the output dtype: a float16 conv summed in float16 drifts from onnxruntime by
a few half-precision ulps (onnx's causal_conv_with_state_silu_fp16 case). The inputs are widened, the op runs in
float32 and its result is rounded to float16 once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bitc.codegen.relax.rewrite import rewrite_calls

if TYPE_CHECKING:
    import tvm
    from tvm import relax

_ACCUMULATING = {
    "relax.nn.conv1d",
    "relax.nn.conv2d",
    "relax.nn.conv3d",
    "relax.nn.conv1d_transpose",
    "relax.nn.conv2d_transpose",
    "relax.matmul",
}


def accumulate_half_in_float(mod: tvm.IRModule) -> tvm.IRModule:
    """Every float16 conv / matmul that leaves its accumulation type to its inputs, computed in float32."""
    return rewrite_calls(mod, _widened)


def _widened(mutator: relax.PyExprMutator, call: relax.Call) -> relax.Expr | None:
    from tvm import relax

    name = getattr(call.op, "name", None)
    if name not in _ACCUMULATING or str(getattr(call.ty, "dtype", "")) != "float16":
        return None
    if any(str(getattr(arg.ty, "dtype", "")) != "float16" for arg in call.args):
        return None
    out_dtype = getattr(call.attrs, "out_dtype", None)
    if out_dtype is not None and str(out_dtype) not in ("", "void"):
        return None  # an explicit accumulation type: keep what the model asked for
    widened = [relax.op.astype(arg, "float32") for arg in call.args]
    inner = mutator.builder_.normalize(relax.Call(call.op, widened, call.attrs))
    return relax.op.astype(inner, "float16")
