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

import contextlib
import functools
import os
import sys
from collections.abc import Callable, Iterator
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


def apply_isolating_failures(
    mod: tvm.IRModule, function_pass: Callable[[tvm.IRModule], tvm.IRModule], max_bindings: int = MAX_BINDINGS
) -> tuple[tvm.IRModule, list[str]]:
    """`apply_in_segments`, but a failure of the pass costs only the bindings it fails on: the failing function is
    cut into pieces, each piece converted on its own, and a piece the pass fails on is halved until the failure is
    one binding, which is left as it was. Values crossing a cut go through the default layout (the transform pairs
    that meet are cancelled later by `cancel_layout_round_trips`). Returns the module and one line per binding left
    unconverted (empty when the whole module converted)."""
    with _native_stderr_silenced():  # a failed attempt logs TVM warnings that say nothing to the user
        try:
            return apply_in_segments(mod, function_pass, max_bindings), []
        except Exception:  # TVM's layout inference refused some op: isolate it below
            pass
        return _isolate_failures(mod, function_pass, max_bindings)


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null for the block (TVM's C++ logging writes there directly)."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a stderr without a descriptor: nothing native reaches it
        yield
        return
    sys.stderr.flush()
    saved, devnull = os.dup(fd), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, fd)
        os.close(saved)
        os.close(devnull)


def _isolate_failures(
    mod: tvm.IRModule, function_pass: Callable[[tvm.IRModule], tvm.IRModule], max_bindings: int
) -> tuple[tvm.IRModule, list[str]]:
    import tvm
    from tvm import relax

    left: list[str] = []
    for gvar, func in list(mod.functions.items()):
        bindings = _plain_bindings(func) if isinstance(func, relax.Function) else None
        if bindings is None or not bindings:
            continue
        uses_after = _last_uses(bindings, func.body.body)
        helpers = {g: f for g, f in mod.functions.items() if not isinstance(f, relax.Function)}
        done: dict[tuple[int, int], relax.Function] = {}
        starts = _cut_points(bindings, max_bindings)
        pending = list(zip(starts, [*starts[1:], len(bindings)], strict=True))
        while pending:
            start, stop = pending.pop()
            segment = bindings[start:stop]
            live_out = [b.var for b in segment if uses_after.get(b.var, -1) >= stop]
            piece = _piece(segment, _free_vars_in_order(segment), live_out)
            try:
                alone = relax.GlobalVar("piece")
                done[(start, stop)] = function_pass(tvm.IRModule({alone: piece, **helpers}))["piece"]
            except Exception:
                if stop - start == 1:
                    done[(start, stop)] = piece
                    left.append(f"{_op_name(bindings[start].value) or 'binding'} '{bindings[start].var.name}'")
                else:
                    middle = (start + stop) // 2
                    pending += [(start, middle), (middle, stop)]
        ranges = sorted(done)
        mod, pieces = _split_at(mod, gvar, func, bindings, [start for start, _ in ranges])
        for piece_gvar, key in zip(pieces, ranges, strict=True):
            mod[piece_gvar] = done[key]
    mod = relax.transform.CanonicalizeBindings()(relax.transform.InlinePrivateFunctions()(mod))
    return mod, left


def _plain_bindings(func: relax.Function) -> list[relax.VarBinding] | None:
    """The bindings of a function of the plain form (one dataflow block of var bindings), else None."""
    from tvm import relax

    body = func.body
    if not isinstance(body, relax.SeqExpr) or len(body.blocks) != 1:
        return None
    block = body.blocks[0]
    bindings = list(block.bindings)
    if not isinstance(block, relax.DataflowBlock) or not all(isinstance(b, relax.VarBinding) for b in bindings):
        return None
    return bindings


def _split(mod: tvm.IRModule, gvar: relax.GlobalVar, func: relax.Function, max_bindings: int) -> tvm.IRModule | None:
    """The module with `func`'s one dataflow block moved into private functions called in sequence, or None
    when it is short enough or not of the plain form (one dataflow block, no match_cast)."""
    bindings = _plain_bindings(func)
    if bindings is None or len(bindings) <= max_bindings:
        return None
    return _split_at(mod, gvar, func, bindings, _cut_points(bindings, max_bindings))[0]


def _split_at(
    mod: tvm.IRModule, gvar: relax.GlobalVar, func: relax.Function, bindings: list[relax.VarBinding], cuts: list[int]
) -> tuple[tvm.IRModule, list[relax.GlobalVar]]:
    """The module with `func`'s bindings moved into private functions, one per segment starting at each of
    `cuts`, called in sequence; and those functions' global vars, in order."""
    import tvm
    from tvm import relax

    body = func.body
    uses_after = _last_uses(bindings, body.body)
    builder = relax.BlockBuilder()
    remap: dict[relax.Var, relax.Var] = {}
    names: list[str] = []
    attrs = {str(k): v for k, v in func.attrs.items()} if func.attrs is not None else None
    with builder.function(gvar.name_hint, list(func.params), attrs, private=False):
        with builder.dataflow():
            for index, (start, stop) in enumerate(zip(cuts, [*cuts[1:], len(bindings)], strict=True)):
                segment = bindings[start:stop]
                live_in = _free_vars_in_order(segment)
                live_out = [b.var for b in segment if uses_after.get(b.var, -1) >= stop]
                piece = _piece(segment, live_in, live_out)
                piece_var = builder.add_func(piece, f"{gvar.name_hint}_piece{index}")
                names.append(piece_var.name_hint)
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
    split = tvm.IRModule(functions, attrs=mod.attrs, global_infos=mod.global_infos)
    return split, [split.get_global_var(name) for name in names]


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
