"""Run-time bounds checks on every index tensor that comes from data (Gather, GatherElements, GatherND,
ScatterElements, ScatterND and what TVM lowers them to).

TVM's kernels trust their indices: `take` in "fast" mode, `gather`, `gather_nd` and the scatters read or write
wherever an index points, so a token id past the vocabulary reads neighbouring memory or crashes the process.
onnxruntime refuses such input; so does bitc. After import, every such Relax call gets its index operand through
a small check kernel, `call_tir_inplace(check, [indices])`: it reads the indices once (O(#indices), no copy, never
fused into the consumer, so it runs before any read) and fails the call with one line naming the ONNX node and the
valid range. On a CPU the check is a TIR assert, which makes the call raise. A CUDA kernel cannot raise: there the
check is a device kernel that prints the same line and traps before the consumer runs, so the call fails and
nothing is read; the CUDA context is then unusable (later calls fail too), which is why host-side checks of known
inputs (the decoder session's token ids) come first and this is the guard of last resort.

Indices that are constants are checked here, at compile time. `take` in "clip"/"wrap" mode and OneHot (an
out-of-range index gives an all-off row, as ONNX says) cannot read out of bounds and are left alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from bitc.codegen.registry import kernel_attrs
from bitc.errors import BadInputError, BitcError, CompileError

CHECK_ATTR = "bitc.index_check"  # PrimFunc attribute holding the check's spec (JSON), read back by for_cuda
_CUDA_THREADS = 256

# ONNX op a Relax call comes from (when the importer did not name it), for messages
_ONNX_OP = {
    "relax.take": "Gather",
    "relax.gather_elements": "GatherElements",
    "relax.gather_nd": "GatherND",
    "relax.scatter_elements": "ScatterElements",
    "relax.scatter_nd": "ScatterND",
}


@dataclass(frozen=True)
class CheckSpec:
    """What one check verifies: each index (its last axis cycling through `extents` when there are several
    coordinates, as in GatherND) lies in [low, extent) where low is 0 or -extent (kernels that map negatives)."""

    shape: tuple[int, ...]
    dtype: str
    extents: tuple[int, ...]
    negatives: bool  # the consuming kernel maps [-extent, 0) itself
    message: str

    def to_json(self) -> str:
        return json.dumps(
            {"shape": self.shape, "dtype": self.dtype, "extents": self.extents, "negatives": self.negatives}
            | {"message": self.message}
        )

    @staticmethod
    def from_json(text: str) -> CheckSpec:
        data = json.loads(text)
        return CheckSpec(
            tuple(data["shape"]), data["dtype"], tuple(data["extents"]), data["negatives"], data["message"]
        )


def from_onnx_checked(proto: onnx.ModelProto, opset: int | None, source: str = "model") -> IRModule:
    """TVM's ONNX import with every data-dependent index checked; the importer is asked for each node's name
    (a private class: if it moved, the public entry point is used and messages name the op but not the node)."""
    from tvm import relax

    try:
        from tvm.relax.frontend.onnx.onnx_frontend import ONNXGraphImporter
    except ImportError:  # pragma: no cover - a TVM without the class
        from tvm.relax.frontend.onnx import from_onnx

        return add_index_checks(from_onnx(proto, opset=opset, keep_params_in_input=False), {}, source)

    names: list[tuple[Call, str, str]] = []

    class NamingImporter(ONNXGraphImporter):
        """Remembers which ONNX node each converted Relax call came from."""

        def _convert_operator(self, op_name: str, inputs: Any, attrs: dict, opset: int) -> Expr:
            sym = super()._convert_operator(op_name, inputs, attrs, opset)
            if isinstance(sym, relax.Call) and _op_name(sym) in _ONNX_OP:
                names.append((sym, op_name, str(attrs.get("tvm_custom", {}).get("name", ""))))
            return sym

    importer = NamingImporter(_empty_input_shapes(proto), "float32", keep_params_in_input=False, sanitize=True)
    mod = importer.from_onnx(proto.graph, opset if opset is not None else _model_opset(proto))
    return add_index_checks(mod, {call: (op, name) for call, op, name in names}, source)


def _empty_input_shapes(proto: onnx.ModelProto) -> dict[str, list[int]]:
    """Static shapes of the inputs with a 0 dimension: the importer reads a 0 in the file as 'unknown' and would
    make it a symbolic dimension (and every shape after it run-time)."""
    shapes = {}
    for value in proto.graph.input:
        dims = value.type.tensor_type.shape.dim if value.type.HasField("tensor_type") else []
        if dims and all(d.HasField("dim_value") for d in dims) and any(d.dim_value == 0 for d in dims):
            shapes[value.name] = [int(d.dim_value) for d in dims]
    return shapes


def _model_opset(proto: onnx.ModelProto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)


def add_index_checks(mod: IRModule, names: dict[Call, tuple[str, str]], source: str = "model") -> IRModule:
    """Route the index operand of every bounds-trusting call in `mod` through a check kernel; `names` maps
    original Relax calls to (ONNX op type, node name) for the messages."""
    from tvm import relax

    checks: dict[CheckSpec, GlobalVar] = {}
    refused: list[BitcError] = []  # raised after the walk: an exception through TVM's callback loses its type

    @relax.expr_functor.mutator
    class Checker(relax.PyExprMutator):
        def visit_call_(self, call: Call) -> Expr:
            label = names.get(call)  # TVM objects hash and compare by identity
            new = self.visit_expr_post_order(call)
            try:
                return _checked_call(self, new, label, checks, source)
            except BitcError as exc:
                refused.append(exc)
                return new

    checker = Checker(mod)
    for gvar, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            checker.builder_.update_func(gvar, checker.visit_expr(func))
            if refused:
                raise refused[0]
    return checker.builder_.get()


def _checked_call(mutator: PyExprMutator, call: Call, label: tuple[str, str] | None, checks: dict, source: str) -> Call:
    """`call` with its index operand replaced by the checked one (or unchanged: nothing to check)."""
    import tvm
    from tvm import relax

    op = _op_name(call)
    if op not in _ONNX_OP or (op == "relax.take" and str(call.attrs.mode) != "fast"):
        return call
    data, indices = call.args[0], call.args[1]
    onnx_op, node = label or (_ONNX_OP[op], "")
    where = f"{onnx_op} '{node}'" if node else f"{onnx_op} (a {op.removeprefix('relax.')} TVM made)"
    normalised = _normalised_from(mutator, indices)
    spec = _spec(call, data, indices, normalised is not None, where, source)
    if spec is None:
        return call
    constant = normalised if normalised is not None else indices
    if isinstance(constant, tvm.ir.GenericConst):  # known now: checked now, and not again at run time
        _check_constant(constant.value.numpy(), spec, normalised is not None, source)
        return call
    checked = emit_check(mutator.builder_, indices, spec, checks)
    return relax.Call(call.op, [data, checked, *call.args[2:]], call.attrs, call.ty_args, call.span)


def emit_check(builder: BlockBuilder, indices: Expr, spec: CheckSpec, checks: dict | None = None) -> Expr:
    """`indices` passed through the check kernel of `spec` (one per spec in `checks`, when given): use the result,
    so the check runs before anything reads through the indices."""
    from tvm import relax

    checks = {} if checks is None else checks
    if spec not in checks:
        func = check_func(spec).with_attr(CHECK_ATTR, spec.to_json())
        checks[spec] = builder.add_func(func, "bitc_index_check")
    return builder.emit(relax.call_tir_inplace(checks[spec], [indices], inplace_indices=[0], out_ty=indices.ty))


def _spec(call: Call, data: Expr, indices: Expr, normalised: bool, where: str, source: str) -> CheckSpec | None:
    """The bounds each index of `call` must meet, from the op's semantics and the (static) shapes."""
    op = _op_name(call)
    shape, dtype = _static_shape(indices, where, source), str(indices.ty.dtype)
    data_shape = _static_shape(data, where, source)
    if 0 in shape:  # no index to check
        return None
    if op in ("relax.take", "relax.gather_elements", "relax.scatter_elements"):
        axis = getattr(call.attrs, "axis", None)
        extent = int(np.prod(data_shape)) if axis is None else data_shape[int(axis) % len(data_shape)]
        negatives = op == "relax.scatter_elements"  # TVM's scatter_elements maps negatives; the others do not
        return index_spec(shape, dtype, (extent,), negatives, where, normalised, axis)
    batch_dims = int(call.attrs.batch_dims) if op == "relax.gather_nd" else 0
    coordinates = shape[-1]
    extents = tuple(data_shape[batch_dims : batch_dims + coordinates])
    if len(extents) != coordinates:
        raise CompileError(f"{source}: {where}: {coordinates} coordinates index a rank-{len(data_shape)} tensor")
    return index_spec(shape, dtype, extents, False, where, normalised)


def index_spec(
    shape: tuple[int, ...],
    dtype: str,
    extents: tuple[int, ...],
    negatives: bool,
    where: str,
    normalised: bool,
    axis: int | None = None,
) -> CheckSpec:
    """The spec with its message: the range ONNX allows ([-N, N) where negatives are mapped before the kernel
    or by it), per coordinate for several."""
    signed = normalised or negatives
    ranges = ", ".join(f"[{-e if signed else 0}, {e})" for e in extents)
    axis_text = f" on axis {int(axis)}" if axis is not None and len(extents) == 1 else ""
    plural = "coordinates" if len(extents) > 1 else "valid"
    message = f"index out of range in {where}{axis_text}: {plural} {ranges}"
    return CheckSpec(tuple(shape), dtype, tuple(extents), negatives, message)


def _static_shape(expr: Expr, where: str, source: str) -> tuple[int, ...]:
    from tvm import tirx

    shape = getattr(getattr(expr.ty, "shape", None), "values", None)
    if shape is None or not all(isinstance(d, tirx.IntImm) for d in shape):
        raise CompileError(f"{source}: {where}: indices of a dynamic shape cannot be bounds-checked")
    return tuple(int(d) for d in shape)


def _normalised_from(mutator: PyExprMutator, indices: Expr) -> Expr | None:
    """The raw indices i if `indices` is the importer's where(i < 0, i + N, i) (ONNX negatives mapped), else None."""
    from tvm import relax

    value = mutator.lookup_binding(indices) if isinstance(indices, relax.Var) else indices
    return value.args[2] if isinstance(value, relax.Call) and _op_name(value) == "relax.where" else None


def _check_constant(values: np.ndarray, spec: CheckSpec, normalised: bool, source: str) -> None:
    """Constant indices out of range make a model that can never run: refuse it at compile time. `normalised`:
    these are the raw ONNX indices, negatives still to be mapped."""
    values = values.astype(np.int64).reshape(-1, len(spec.extents))
    extents = np.asarray(spec.extents, np.int64)
    low = -extents if spec.negatives or normalised else np.zeros_like(extents)
    if ((values < low) | (values >= extents)).any():
        raise BadInputError(f"{source}: constant {spec.message}")


def _op_name(call: Call) -> str:
    import tvm

    return call.op.name if isinstance(call.op, tvm.ir.Op) else ""


def check_func(spec: CheckSpec) -> tirx.PrimFunc:
    """Host check: one pass over the indices, a TIR assert per coordinate (the call fails with `message`)."""
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T

    coordinates = len(spec.extents)
    count = int(np.prod(spec.shape))
    with IRBuilder() as builder, T.prim_func():
        T.func_name("bitc_index_check")
        T.func_attr({"tir.noalias": True, **kernel_attrs("index_check", scheduled=True)})
        buffer = T.match_buffer(T.arg("indices", T.handle()), spec.shape, spec.dtype)
        flat = T.decl_buffer((count,), spec.dtype, data=buffer.data)
        with T.serial(0, count // coordinates) as i:
            for j, extent in enumerate(spec.extents):
                with T.Assert(_in_range(flat[i * coordinates + j], extent, spec), spec.message):
                    pass
    return builder.get().without_attr("global_symbol")


def _in_range(value: tirx.Expr, extent: int | tirx.Expr, spec: CheckSpec) -> tirx.Expr:
    from tvm import tirx

    upper = value < _as_expr(extent, spec)
    if spec.dtype.startswith("uint"):
        return upper
    low = -extent if spec.negatives else 0
    return tirx.all(value >= _as_expr(low, spec), upper)


def _const(value: int, spec: CheckSpec) -> tirx.Expr:
    """`value` in the index dtype; an extent past its range compares as 'every index is below it'."""
    from tvm import tirx

    info = np.iinfo(spec.dtype)
    return tirx.const(int(min(max(value, info.min), info.max)), spec.dtype)


def for_cuda(mod: IRModule) -> IRModule:
    """Replace every host check in `mod` by its device form: the indices live in GPU memory."""
    from tvm import tirx

    for gvar, func in list(mod.functions.items()):
        if isinstance(func, tirx.PrimFunc) and func.attrs is not None and CHECK_ATTR in func.attrs:
            spec = CheckSpec.from_json(str(func.attrs[CHECK_ATTR]))
            mod[gvar] = cuda_check_func(spec).with_attr(CHECK_ATTR, spec.to_json())
    return mod


def cuda_check_func(spec: CheckSpec) -> tirx.PrimFunc:
    """Device check: a thread per index; one out of range prints `message` (CUDA's device printf) and traps,
    which aborts the kernel, and so the model's call, before the gather or scatter reads or writes anything."""
    from tvm import tirx
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T

    count = int(np.prod(spec.shape))
    blocks = (count + _CUDA_THREADS - 1) // _CUDA_THREADS
    with IRBuilder() as builder, T.prim_func():
        T.func_name("bitc_index_check")
        T.func_attr({"tir.noalias": True, **kernel_attrs("index_check", scheduled=True)})
        buffer = T.match_buffer(T.arg("indices", T.handle()), spec.shape, spec.dtype)
        flat = T.decl_buffer((count,), spec.dtype, data=buffer.data)
        block = T.env_thread("blockIdx.x")
        thread = T.env_thread("threadIdx.x")
        with T.launch_thread(block, blocks), T.launch_thread(thread, _CUDA_THREADS):
            i = block * _CUDA_THREADS + thread
            bad = tirx.Not(_in_range(flat[i], _extent_of(i, spec), spec))
            # two nested ifs, not one `and`: the last block's spare threads must not read past the indices
            with T.If(i < count), T.Then(), T.If(bad), T.Then():
                T.evaluate(tirx.call_extern("int32", "printf", "bitc: %s\\n", _printable(spec.message)))
                T.evaluate(tirx.call_extern("void", "__trap"))
    return builder.get().without_attr("global_symbol")


def _extent_of(i: tirx.Expr, spec: CheckSpec) -> tirx.Expr:
    """The extent flat index i is checked against: its coordinate is i % K (the indices' last axis)."""
    from tvm import tirx

    extent = _const(spec.extents[-1], spec)
    for j, other in enumerate(spec.extents[:-1]):
        extent = tirx.Select(i % len(spec.extents) == j, _const(other, spec), extent)
    return extent


def _printable(text: str) -> str:
    """The message as plain ASCII without quotes or backslashes: it becomes a C string literal in CUDA source."""
    return "".join(c if " " <= c <= "~" and c not in '"\\' else "?" for c in text)


def _as_expr(extent: int | tirx.Expr, spec: CheckSpec) -> tirx.Expr:
    return _const(extent, spec) if isinstance(extent, int) else extent


def legalize_take(bb: BlockBuilder, call: Call) -> Expr:
    """LegalizeOps hook for relax.take: "fast" mode (the importer's Gather, whose indices `check_func` bounds at
    run time) as "clip", which gives the same values for in-range indices and can never read out of bounds; TVM's
    fast mode also prints a warning that it segfaults on out-of-range indices at every compile."""
    from tvm import topi

    mode = "clip" if str(call.attrs.mode) == "fast" else str(call.attrs.mode)
    axis = call.attrs.axis
    return bb.call_te(topi.take, call.args[0], call.args[1], None if axis is None else int(axis), mode=mode)


# imported last, so that no line above moves: the kernels' source lines end up in the compiled artifacts
if TYPE_CHECKING:
    import onnx
    from tvm import tirx
    from tvm.ir import IRModule
    from tvm.relax import BlockBuilder, Call, Expr, GlobalVar, PyExprMutator
