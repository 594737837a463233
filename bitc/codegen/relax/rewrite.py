"""Rewrite the calls of every Relax function in a module, one call at a time (operands rewritten first)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import tvm
    from tvm import relax


def rewrite_calls(
    mod: tvm.IRModule, rewrite: Callable[[relax.PyExprMutator, relax.Call], relax.Expr | None]
) -> tvm.IRModule:
    """`rewrite(mutator, call)` returns a replacement expression or None to keep the call; the mutator gives
    `builder_` (the module being built) and `lookup_binding` (what a variable is bound to)."""
    from tvm import relax

    @relax.expr_functor.mutator
    class Rewriter(relax.PyExprMutator):
        def visit_call_(self, call: relax.Call) -> relax.Expr:
            call = self.visit_expr_post_order(call)
            replacement = rewrite(self, call)
            return call if replacement is None else replacement

    rewriter = Rewriter(mod)
    for gvar, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gvar, rewriter.visit_expr(func))
    return rewriter.builder_.get()


def declared_out_dtype(attrs: Any) -> str | None:
    """A conv's or matmul's `out_dtype` attribute for rebuilding the call, None where it is unset (the op then
    keeps its input's dtype)."""
    text = str(attrs.out_dtype)
    return text if text not in ("", "None", "void") else None


def bound_value(mutator: relax.PyExprMutator, value: relax.Expr) -> relax.Expr:
    """What a variable is bound to earlier in the function (the value itself when it is not a bound variable)."""
    from tvm import relax

    if isinstance(value, relax.Var) and (bound := mutator.lookup_binding(value)) is not None:
        return bound
    return value


def static_shape(expr: relax.Expr) -> list[int] | None:
    """The expression's tensor shape when every dimension is a constant, else None."""
    try:
        return [int(d) for d in expr.ty.shape]
    except (AttributeError, TypeError, ValueError):
        return None


def constant_matmul_weight(mutator: relax.PyExprMutator, call: relax.Call) -> relax.Constant | None:
    """W of a `matmul(x, W)` call whose W is a constant 2-D matrix (inline or bound earlier), else None."""
    import tvm

    if getattr(call.op, "name", None) != "relax.matmul" or len(call.args) != 2:
        return None
    weight = bound_value(mutator, call.args[1])
    if not isinstance(weight, tvm.ir.GenericConst) or getattr(weight.ty, "ndim", -1) != 2:
        return None
    return weight
