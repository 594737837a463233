"""onnx-ir model → TVM Relax IRModule, through TVM's public ONNX importer; unsupported ops are named.

The importer knows no custom domains, so a model with bitc ops is imported in runs: each maximal run of standard
nodes becomes a small ONNX model imported as its own (private) Relax function, each bitc node a call to our
kernel, all chained in one `main`; inlining the private functions then leaves one ordinary Relax function.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import onnx
import onnx_ir as ir

from bitc.codegen import onnx_support, registry
from bitc.codegen.relax import index_checks
from bitc.codegen.target import CpuTarget, Target
from bitc.errors import BadInputError, BitcError, CompileError, first_line

if TYPE_CHECKING:
    import tvm
    from tvm import relax, tirx

DEFAULT_TARGET = CpuTarget(mcpu="x86-64-v4", num_cores=1)  # an AVX-512 CPU


def to_relax(model: ir.Model, source: str = "model", target: Target = DEFAULT_TARGET) -> tvm.IRModule:
    """Import the (already normalised, static-shape) model with its weights bound as constants; `target` says
    what the bitc kernels need of the CPU or GPU (default: an AVX-512 CPU, one core)."""
    onnx_support.check_supported(model, source)
    ir.external_data.load_to_model(model)  # TVM would resolve external paths from the working directory
    if not any(registry.is_custom(node, target.kind) for node in model.graph):
        mod = _from_onnx(ir.to_proto(model), model, source)
    else:
        mod = _import_mixed(model, source, target)
    check_output_shapes(mod, model, source)
    return mod


def check_output_shapes(mod: tvm.IRModule, model: ir.Model, source: str) -> None:
    """Refuse a model whose compiled outputs do not have the static shapes the artifact promises: the importer
    left a shape data-dependent (NonMaxSuppression's box count, an Expand to a run-time shape), so the artifact
    could only fail when it runs, or return a shape nobody checked."""
    from tvm import relax

    returned = mod["main"].ret_ty
    fields = list(returned.fields) if isinstance(returned, relax.TupleType) else [returned]
    for value, field in zip(model.graph.outputs, fields, strict=False):
        expected = [int(d) if isinstance(d, int) else None for d in (value.shape or [])]
        shape = getattr(field, "shape", None)
        values = getattr(shape, "values", None)
        compiled = [_static_dim(d) for d in values or []]
        if values is None or None in compiled or compiled != expected:
            got = "a shape known only at run time" if values is None or None in compiled else f"shape {compiled}"
            raise BadInputError(
                f"{source}: output '{value.name}' would have {got} in the compiled code, not {expected}: its shape "
                "depends on input values (e.g. NonMaxSuppression's box count, Expand or Reshape to a run-time "
                "shape); bitc artifacts have static output shapes"
            )


def _from_onnx(proto: onnx.ModelProto, model: ir.Model, source: str) -> tvm.IRModule:
    import tvm

    opset = model.opset_imports.get("", None)
    try:  # every index that comes from data gets a run-time bounds check (index_checks)
        return index_checks.from_onnx_checked(_identifier_inputs(proto), opset, source)
    except BitcError:
        raise
    except tvm.error.OpNotImplemented as exc:
        raise BadInputError(_unsupported_message(model, source, str(exc))) from None
    except Exception as exc:
        raise CompileError(f"{source}: TVM's ONNX importer failed: {first_line(exc)}") from None


def _identifier_inputs(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Graph inputs renamed to C identifiers ('gpu_0/data_0' → 'gpu_0_data_0'): their names become kernel
    parameter names, which the CUDA compiler rejects otherwise. Inputs keep their order, which is all the
    compiled function's callers rely on."""
    renames = {v.name: _var_name(v.name) for v in proto.graph.input if _var_name(v.name) != v.name}
    taken = {v.name for v in proto.graph.input} | {t.name for t in proto.graph.initializer}
    renames = {old: _fresh(new, taken) for old, new in renames.items()}
    if not renames:
        return proto
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    for value in proto.graph.input:
        value.name = renames.get(value.name, value.name)
    for node in proto.graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
    for value in proto.graph.output:  # an input passed straight through
        value.name = renames.get(value.name, value.name)
    return proto


def _static_dim(dim: int | tirx.Expr) -> int | None:
    """A Relax shape dimension as an int (an IntImm or int), None when it is symbolic."""
    if isinstance(dim, int):
        return dim
    value = getattr(dim, "value", None)
    return int(value) if isinstance(value, int) else None


def _fresh(name: str, taken: set[str]) -> str:
    candidate, suffix = name, 1
    while candidate in taken:
        candidate, suffix = f"{name}_{suffix}", suffix + 1
    taken.add(candidate)
    return candidate


def _import_mixed(model: ir.Model, source: str, target: Target) -> tvm.IRModule:
    from tvm import relax

    model.graph.sort()
    nodes = list(model.graph)
    registry.check_emitters(nodes, target.kind)  # refused before a builder holds a half-built function
    full = ir.to_proto(model)
    position = {id(node): index for index, node in enumerate(nodes)}
    initializers = {tensor.name: tensor for tensor in full.graph.initializer}
    graph_outputs = {value.name for value in model.graph.outputs}
    bb = relax.BlockBuilder()
    params = [relax.Var(_var_name(v.name), _struct_info(v)) for v in model.graph.inputs]
    env: dict[str, relax.Expr] = {v.name: p for v, p in zip(model.graph.inputs, params, strict=True)}
    with bb.function("main", params, attrs={"num_input": len(params)}):
        with bb.dataflow():
            runs = itertools.groupby(nodes, key=lambda node: registry.is_custom(node, target.kind))
            for index, (is_bitc, run) in enumerate(runs):
                run = list(run)
                if is_bitc:
                    for node in run:
                        args = [env[v.name] for v in node.inputs if v is not None and v.name in env]
                        env[node.outputs[0].name] = registry.emit(bb, node, args, target)
                    continue
                last = position[id(run[-1])]
                inputs, outputs = _run_boundary(run, last, graph_outputs, initializers)
                sub = _segment_proto(full, run, inputs, outputs, initializers, position)
                func = _add_segment(bb, _from_onnx(sub, model, source), f"segment_{index}")
                gvar = bb.add_func(func, f"segment_{index}")
                call = bb.emit(relax.Call(gvar, [env[v.name] for v in inputs]))
                for i, value in enumerate(outputs):
                    env[value.name] = call if len(outputs) == 1 else bb.emit(relax.TupleGetItem(call, i))
            results = [env[v.name] for v in model.graph.outputs]
            result = bb.emit_output(results[0] if len(results) == 1 else relax.Tuple(results))
        bb.emit_func_output(result)
    try:
        return relax.transform.InlinePrivateFunctions()(bb.get())
    except Exception as exc:
        raise CompileError(f"{source}: joining imported segments failed: {first_line(exc)}") from None


def _add_segment(bb: relax.BlockBuilder, mod: tvm.IRModule, prefix: str) -> relax.Function:
    """Add the segment module's helper functions (its own TIR kernels) under fresh names; return its `main`,
    private and calling them by those names (two segments may both have made a kernel called 'maximum')."""
    from tvm.relax.expr_functor import PyExprMutator, mutator

    renamed = {}
    for gvar, func in mod.functions.items():
        if gvar.name_hint != "main":
            renamed[gvar] = bb.add_func(func, f"{prefix}_{gvar.name_hint}")

    @mutator
    class Rename(PyExprMutator):
        def visit_global_var_(self, op: relax.GlobalVar) -> relax.GlobalVar:
            return renamed.get(op, op)

    return Rename().visit_expr(mod["main"]).without_attr("global_symbol")


def _run_boundary(
    run: list[ir.Node], last: int, graph_outputs: set[str], initializers: dict[str, onnx.TensorProto]
) -> tuple[list[ir.Value], list[ir.Value]]:
    """Values a run of nodes reads from outside (not weights) and values it produces for later nodes."""
    inside = {id(node) for node in run}
    inputs: dict[str, ir.Value] = {}
    outputs: dict[str, ir.Value] = {}
    for node in run:
        for value in node.inputs:
            if value is None or value.name in initializers or value.name in inputs:
                continue
            if value.producer() is None or id(value.producer()) not in inside:
                inputs[value.name] = value
        for value in node.outputs:
            if value.name in graph_outputs or any(id(user) not in inside for user, _ in value.uses()):
                outputs[value.name] = value
    return list(inputs.values()), list(outputs.values())


def _segment_proto(
    full: onnx.ModelProto,
    run: list[ir.Node],
    inputs: list[ir.Value],
    outputs: list[ir.Value],
    initializers: dict[str, onnx.TensorProto],
    position: dict[int, int],
) -> onnx.ModelProto:
    node_protos = [full.graph.node[position[id(node)]] for node in run]
    used = {name for proto in node_protos for name in proto.input}
    graph = onnx.helper.make_graph(
        node_protos,
        "segment",
        [ir.serde.serialize_value(v) for v in inputs],
        [ir.serde.serialize_value(v) for v in outputs],
        initializer=[initializers[name] for name in sorted(used & initializers.keys())],
    )
    return onnx.helper.make_model(graph, opset_imports=list(full.opset_import), ir_version=full.ir_version)


def _struct_info(value: ir.Value) -> relax.TensorType:
    from tvm import relax

    return relax.TensorType([int(d) for d in value.shape], value.dtype.numpy().name)


def _var_name(name: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name) or "input"


def _unsupported_message(model: ir.Model, source: str, text: str) -> str:
    """Name each unsupported op with its domain and first node, and what the user can do (not the importer's
    whole op list)."""
    listed = text.rsplit(":", 1)[-1]
    op_types = {name.strip() for name in listed.split(",") if name.strip()}
    culprits = []
    for op_type in sorted(op_types):
        node = next((n for n in model.graph.all_nodes() if n.op_type == op_type), None)
        domain = (node.domain if node else "") or "ai.onnx"
        culprits.append(f"{op_type} (domain {domain}, node '{node.name if node else '?'}')")
    return (
        f"{source}: unsupported op {', '.join(culprits)}: neither TVM's ONNX importer nor an ONNX function body "
        "lowers it; replace it in the model with standard ops (`bitc inspect` lists the model's ops)"
    )


def supported_ops() -> list[str]:
    """Op types TVM's ONNX importer converts (empty if its private table moved: the message then omits it)."""
    try:
        from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

        return sorted(_get_convert_map())
    except Exception:
        return []
