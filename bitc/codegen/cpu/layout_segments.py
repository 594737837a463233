"""Run a function pass on a long Relax function piece by piece, so its cost stays linear in the function's size.

TVM's ConvertLayout hands the layout of every variable seen so far to each operator's layout rule, so each call
costs time proportional to the bindings before it: 4,000 chained ReLUs took 11 s, 8,000 took 57 s, and a
200,000-node model never finished. Here a function with more than `max_bindings` bindings is cut into private
functions of about that many bindings (cuts are placed just before a convolution, where the layout changes
anyway), the pass runs on each, and the pieces are inlined back. Values crossing a cut go through the default
layout, so a blocked tensor leaves and re-enters its layout there; the transform pairs that meet back to back are
cancelled by `cancel_layout_round_trips` afterwards. Functions at or below the bound are left exactly as they were.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tvm
    from tvm import relax

MAX_BINDINGS = 1500
_CUT_BEFORE = ("relax.nn.conv2d", "relax.nn.conv1d", "relax.nn.conv2d_transpose")


def apply_in_segments(
    mod: tvm.IRModule, function_pass: Callable[[tvm.IRModule], tvm.IRModule], max_bindings: int = MAX_BINDINGS
) -> tvm.IRModule:
    """`function_pass(mod)` with every long dataflow function split into pieces of ~`max_bindings` first."""
    from tvm import relax

    split = False
    for gvar, func in list(mod.functions.items()):
        if isinstance(func, relax.Function) and (pieces := _split(mod, gvar, func, max_bindings)) is not None:
            mod = pieces
            split = True
    if not split:
        return function_pass(mod)
    mod = function_pass(mod)
    return relax.transform.CanonicalizeBindings()(relax.transform.InlinePrivateFunctions()(mod))


def _split(mod: tvm.IRModule, gvar: relax.GlobalVar, func: relax.Function, max_bindings: int) -> tvm.IRModule | None:
    """The module with `func`'s one dataflow block moved into private functions called in sequence, or None
    when it is short enough or not of the plain form (one dataflow block, no match_cast)."""
    import tvm
    from tvm import relax

    body = func.body
    if not isinstance(body, relax.SeqExpr) or len(body.blocks) != 1:
        return None
    block = body.blocks[0]
    bindings = list(block.bindings)
    if not isinstance(block, relax.DataflowBlock) or len(bindings) <= max_bindings:
        return None
    if not all(isinstance(b, relax.VarBinding) for b in bindings):
        return None
    cuts = _cut_points(bindings, max_bindings)
    uses_after = _last_uses(bindings, body.body)
    builder = relax.BlockBuilder()
    remap: dict[relax.Var, relax.Var] = {}
    attrs = {str(k): v for k, v in func.attrs.items()} if func.attrs is not None else None
    with builder.function(gvar.name_hint, list(func.params), attrs, private=False):
        with builder.dataflow():
            for index, (start, stop) in enumerate(zip(cuts, [*cuts[1:], len(bindings)], strict=True)):
                segment = bindings[start:stop]
                live_in = _free_vars_in_order(segment)
                live_out = [b.var for b in segment if uses_after.get(b.var, -1) >= stop]
                piece = _piece(segment, live_in, live_out)
                piece_var = builder.add_func(piece, f"{gvar.name_hint}_piece{index}")
                args = [remap.get(v, v) for v in live_in]
                outputs = builder.emit(relax.Call(piece_var, args))
                for position, var in enumerate(live_out):
                    remap[var] = builder.emit(relax.TupleGetItem(outputs, position), name_hint=var.name)
            result = builder.emit_output(_substitute(body.body, remap))
        builder.emit_func_output(result)
    pieces = builder.get()
    functions = {g: f for g, f in mod.functions.items() if not g.same_as(gvar)}
    functions |= {g: f for g, f in pieces.functions.items() if g.name_hint != gvar.name_hint}
    functions[gvar] = pieces[gvar.name_hint]
    return tvm.IRModule(functions, attrs=mod.attrs, global_infos=mod.global_infos)


def _cut_points(bindings: list[relax.VarBinding], max_bindings: int) -> list[int]:
    """Segment starts: every ~`max_bindings`, moved forward to the next convolution within half a segment."""
    cuts = [0]
    position = max_bindings
    while position < len(bindings):
        limit = min(position + max_bindings // 2, len(bindings))
        cut = next((i for i in range(position, limit) if _op_name(bindings[i].value) in _CUT_BEFORE), position)
        cuts.append(cut)
        position = cut + max_bindings
    return cuts


def _op_name(value: relax.Expr) -> str:
    op = getattr(value, "op", None)
    return str(getattr(op, "name", ""))


def _last_uses(bindings: list[relax.VarBinding], result: relax.Expr) -> dict[relax.Var, int]:
    """For each variable, the index of the last binding that reads it (len(bindings) for the function result)."""
    from tvm import relax

    last: dict[relax.Var, int] = {}
    for index, binding in enumerate(bindings):
        for var in relax.analysis.free_vars(binding.value):
            last[var] = index
    for var in relax.analysis.free_vars(result):
        last[var] = len(bindings)
    return last


def _free_vars_in_order(segment: list[relax.VarBinding]) -> list[relax.Var]:
    """Variables the segment reads but does not define, in order of first use."""
    from tvm import relax

    defined, seen, order = set(), set(), []
    for binding in segment:
        for var in relax.analysis.free_vars(binding.value):
            if var not in defined and var not in seen:
                seen.add(var)
                order.append(var)
        defined.add(binding.var)
    return order


def _piece(segment: list[relax.VarBinding], live_in: list[relax.Var], live_out: list[relax.Var]) -> relax.Function:
    """A private function over `live_in` computing the segment's bindings and returning `live_out` as a tuple."""
    from tvm import relax

    builder = relax.BlockBuilder()
    params = [relax.Var(v.name, v.ty) for v in live_in]
    remap = dict(zip(live_in, params, strict=True))
    substitute = _substitute_class()(remap)  # reads `remap` as it grows
    with builder.function("piece", params, private=True):
        with builder.dataflow():
            for binding in segment:
                value = substitute.visit_expr(binding.value)
                remap[binding.var] = builder.emit(value, name_hint=binding.var.name)
            result = builder.emit_output(relax.Tuple([remap[v] for v in live_out]))
        builder.emit_func_output(result)
    return builder.get()["piece"]


def _substitute(expr: relax.Expr, remap: dict[relax.Var, relax.Var]) -> relax.Expr:
    """`expr` with variables replaced as `remap` says (one mutator class, built once: defining a PyExprMutator
    costs far more than using one)."""
    return _substitute_class()(remap).visit_expr(expr)


@functools.cache
def _substitute_class() -> type:
    from tvm import relax

    @relax.expr_functor.mutator
    class Substitute(relax.PyExprMutator):
        def __init__(self, remap: dict[relax.Var, relax.Var]) -> None:
            super().__init__()
            self.remap = remap

        def visit_var_(self, var: relax.Var) -> relax.Expr:
            return self.remap.get(var, var)

        def visit_dataflow_var_(self, var: relax.DataflowVar) -> relax.Expr:
            return self.remap.get(var, var)

    return Substitute
