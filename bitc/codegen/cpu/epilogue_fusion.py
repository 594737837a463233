"""A conv's or matmul's elementwise epilogue that reads the result more than once (HardSwish x·relu6(x+3)/6,
SiLU x·sigmoid(x)) joined to the conv's fused function.

TVM's FuseOps fuses an anchor (conv, matmul) only with the chain of elementwise ops up to the first value read
twice: conv+bias became one kernel and the HardSwish after it another, a second pass over the whole activation
(MobileNetV3, PP-LCNet, every YOLO with SiLU). This pass runs between FuseOps and FuseTIR: where a fused group
with one anchor feeds, and only feeds, a fused group of elementwise ops of the same shape, the two groups become
one; the anchor schedule then computes the epilogue in registers as it writes the accumulators back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import tvm
    from tvm import relax

_ELEMENTWISE, _BROADCAST, _OUT_ELEMWISE_FUSABLE = 0, 1, 4  # TVM's op_pattern values


def merge_epilogue_groups_pass() -> tvm.transform.Pass:
    import tvm

    @tvm.transform.module_pass(opt_level=0, name="BitcMergeEpilogueGroups")
    def merge(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return merge_epilogue_groups(mod)

    return merge


def merge_epilogue_groups(mod: tvm.IRModule) -> tvm.IRModule:
    """Join each (anchor group → elementwise group) pair of fused functions called from `main`."""
    from tvm import relax

    main = mod["main"]
    if not isinstance(main.body, relax.SeqExpr):
        return mod
    blocks = []
    changed = False
    builder = relax.BlockBuilder(mod)  # adds the joined functions with typed GlobalVars and unique names
    for block in main.body.blocks:
        if isinstance(block, relax.DataflowBlock):
            bindings, merged = _merge_block(mod, builder, list(block.bindings), main)
            changed |= merged
            block = relax.DataflowBlock(bindings)
        blocks.append(block)
    if not changed:
        return mod
    body = relax.SeqExpr(blocks, main.body.body)
    mod = builder.get()
    mod["main"] = relax.Function(main.params, body, main.ret_ty, main.is_pure, main.attrs, main.span)
    return relax.transform.DeadCodeElimination()(mod)


def _merge_block(
    mod: tvm.IRModule, builder: relax.BlockBuilder, bindings: list[Any], main: relax.Function
) -> tuple[list[Any], bool]:
    from tvm import relax

    uses = _use_counts(main)
    producer_of = {binding.var: binding for binding in bindings}
    removed: set[Any] = set()
    replaced: dict[Any, Any] = {}
    joined: dict[tuple[str, str, int], Any] = {}
    added: dict[Any, relax.Function] = {}  # joined functions, in the builder's module only

    def function(gvar: relax.GlobalVar) -> Any:
        return added[gvar] if gvar in added else mod[gvar]

    for binding in bindings:
        epilogue = _primitive(function, binding.value)
        if epilogue is None or not _only_elementwise(mod, epilogue):
            continue
        for index, arg in enumerate(binding.value.args):
            source = producer_of.get(arg) if isinstance(arg, relax.Var) else None
            if source is None or source.var in removed or uses.get(arg, 0) != 1:
                continue
            anchor_call = replaced.get(source.var, source).value  # a group joined earlier is an anchor group too
            anchor = _primitive(function, anchor_call)
            if anchor is None or not _has_one_anchor(mod, anchor) or not _same_shape(source.var, binding.var):
                continue
            merged, args = _joined(mod, anchor, anchor_call.args, epilogue, binding.value.args, index)
            key = (anchor_call.op.name_hint, binding.value.op.name_hint, index)
            if key not in joined:  # the same pair again (a repeated block) calls the same function
                joined[key] = builder.add_func(merged, f"{key[0]}_{key[1].removeprefix('fused_')}")
                added[joined[key]] = merged
            call = relax.Call(joined[key], args, ret_ty=binding.value.ty)
            replaced[binding.var] = relax.VarBinding(binding.var, call)
            removed.add(source.var)
            break
    if not replaced:
        return bindings, False
    result = [replaced.get(binding.var, binding) for binding in bindings if binding.var not in removed]
    return result, True


def _joined(
    mod: tvm.IRModule,
    anchor: relax.Function,
    anchor_args: Any,
    epilogue: relax.Function,
    epilogue_args: Any,
    index: int,
) -> tuple[relax.Function, list[Any]]:
    """One primitive function: the anchor group's bindings, then the epilogue's with its `index`-th parameter
    bound to the anchor's result; and the arguments to call it with."""
    from tvm import relax

    kept = [i for i in range(len(epilogue.params)) if i != index]
    params = [relax.Var(p.name, p.ty) for p in anchor.params]
    params += [relax.Var(epilogue.params[i].name, epilogue.params[i].ty) for i in kept]
    bb = relax.BlockBuilder()
    with bb.function("main", params, attrs={"Primitive": True}, private=True):
        with bb.dataflow():
            remap = dict(zip(anchor.params, params[: len(anchor.params)], strict=True))
            result = _emit_body(bb, anchor, remap)
            remap = dict(zip([epilogue.params[i] for i in kept], params[len(anchor.params) :], strict=True))
            remap[epilogue.params[index]] = result
            out = bb.emit_output(_emit_body(bb, epilogue, remap))
        bb.emit_func_output(out)
    func = bb.get()["main"]
    args = list(anchor_args) + [epilogue_args[i] for i in kept]
    return func, args


def _emit_body(bb: relax.BlockBuilder, func: relax.Function, remap: dict[Any, Any]) -> Any:
    """Emit `func`'s bindings (call_tirs of its dataflow block) with variables renamed; returns its result."""

    for block in func.body.blocks:
        for binding in block.bindings:
            remap[binding.var] = bb.emit(_renamed(binding.value, remap))
    return remap.get(func.body.body, func.body.body)


def _renamed(expr: Any, remap: dict[Any, Any]) -> Any:
    from tvm import relax

    if isinstance(expr, relax.Var):
        return remap.get(expr, expr)
    if isinstance(expr, relax.Tuple):
        return relax.Tuple([_renamed(field, remap) for field in expr.fields])
    if isinstance(expr, relax.Call):
        args = [_renamed(arg, remap) for arg in expr.args]
        return relax.Call(expr.op, args, expr.attrs, expr.ty_args)
    return expr


def _primitive(function: Callable[[relax.GlobalVar], Any], value: Any) -> relax.Function | None:
    """The fused (Primitive) Relax function `value` calls (`function` looks it up), if it is such a call."""
    from tvm import relax

    if not isinstance(value, relax.Call) or not isinstance(value.op, relax.GlobalVar):
        return None
    func = function(value.op)
    attrs = func.attrs if isinstance(func, relax.Function) else None
    if attrs is None or not attrs.get("Primitive"):
        return None
    body = func.body
    if not isinstance(body, relax.SeqExpr) or len(body.blocks) != 1:
        return None
    return func


def _patterns(mod: tvm.IRModule, func: relax.Function) -> list[int] | None:
    """The op_pattern of every call_tir in `func` (None if it calls anything else)."""
    from tvm import relax, tirx

    found = []
    for binding in func.body.blocks[0].bindings:
        value = binding.value
        if not isinstance(value, relax.Call) or getattr(value.op, "name", None) != "relax.call_tir":
            return None
        callee = mod[value.args[0]]
        if not isinstance(callee, tirx.PrimFunc) or callee.attrs is None or "op_pattern" not in callee.attrs:
            return None
        found.append(int(callee.attrs["op_pattern"]))
    return found


def _only_elementwise(mod: tvm.IRModule, func: relax.Function) -> bool:
    patterns = _patterns(mod, func)
    return bool(patterns) and all(p in (_ELEMENTWISE, _BROADCAST) for p in patterns)


def _has_one_anchor(mod: tvm.IRModule, func: relax.Function) -> bool:
    patterns = _patterns(mod, func)
    if not patterns or patterns.count(_OUT_ELEMWISE_FUSABLE) != 1:
        return False
    return all(p in (_ELEMENTWISE, _BROADCAST, _OUT_ELEMWISE_FUSABLE) for p in patterns)


def _same_shape(a: relax.Var, b: relax.Var) -> bool:
    try:
        return [int(d) for d in a.ty.shape] == [int(d) for d in b.ty.shape] and a.ty.dtype == b.ty.dtype
    except (AttributeError, TypeError, ValueError):
        return False


def _use_counts(func: relax.Function) -> dict[Any, int]:
    """How many times each variable is read in `func`'s body (bindings' values and the result)."""
    import tvm
    from tvm import relax

    counts: dict[Any, int] = {}

    def visit(expr: Any) -> None:
        if isinstance(expr, relax.Var):
            counts[expr] = counts.get(expr, 0) + 1
        elif isinstance(expr, relax.Tuple):
            for field in expr.fields:
                visit(field)
        elif isinstance(expr, relax.TupleGetItem):
            visit(expr.tuple_value)
        elif isinstance(expr, relax.Call):
            for arg in expr.args:
                visit(arg)
        elif not isinstance(expr, (tvm.ir.GenericConst, relax.GlobalVar, relax.ShapeExpr)):
            counts[None] = 1  # an expression this does not walk: be conservative elsewhere

    for block in func.body.blocks:
        for binding in block.bindings:
            visit(binding.value)
    visit(func.body.body)
    return counts
