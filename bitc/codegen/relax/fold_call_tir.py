"""Fold `call_tir`s whose arguments are all constants, building each PrimFunc once.

TVM's FoldConstant means to cache the function it builds for each PrimFunc, but stores it under the function with
the symbol name it adds before building, so every lookup misses: each foldable call (the layout transform of each
conv's weight and bias) runs a fresh LLVM build, ~40 ms. A 2,000-node conv chain spent 113 s there, and 200,000
nodes would spend hours. This pass folds those calls first, the way FoldConstant does (the same `tirx.build` on a
plain "llvm" target, the same output buffer), with one build per PrimFunc.

It also does what FoldConstant would do next with every variable bound to a constant: inline the constant into
each use and drop the binding. FoldConstant drops those by its final `RemoveAllUnused`, whose search for unused
variables takes time in (unused × used) variables: 93 s of a 20,000-node conv chain's 177 s compile. Run after this
pass, FoldConstant finds no unused variables and only folds what this pass leaves (calls on symbolic shapes or with
extra arguments, ops that are not call_tirs), so its output is the same as on the module this pass was given.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tvm
    import tvm_ffi
    from tvm import relax
    from tvm.ir.expr import Constant

_SYMBOL = "tir_function"  # the name FoldConstant builds under; kept so the machine code is the same


def fold_call_tir_pass() -> tvm.transform.Pass:
    """The module pass (named so that pass timings and instruments can tell it apart)."""
    import tvm

    @tvm.transform.module_pass(opt_level=0, name="FoldConstantCallTIR")
    def fold(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return fold_module(mod)

    return fold


def fold_module(mod: tvm.IRModule) -> tvm.IRModule:
    """`mod` with every Relax function's all-constant call_tirs replaced by their values, and every variable
    bound to a constant replaced by the constant (a new module: `mod` is left as it was)."""
    from tvm import relax

    builds = _Builds(mod)
    inliner = _inliner_class()(mod)
    for gvar, func in list(mod.functions.items()):
        if isinstance(func, relax.Function) and (folded := _fold_function(func, builds)) is not None:
            inliner.constants = folded[1]
            inliner.builder_.update_func(gvar, inliner.visit_expr(folded[0]))
    return inliner.builder_.get()


class _Builds:
    """Built PrimFuncs by GlobalVar: one LLVM build each, None where the build fails (FoldConstant then skips)."""

    def __init__(self, mod: tvm.IRModule) -> None:
        self.mod = mod
        self.cache: dict[str, tvm_ffi.Function | None] = {}

    def get(self, gvar: relax.GlobalVar) -> tvm_ffi.Function | None:
        import tvm

        key = gvar.name_hint
        if key not in self.cache:
            func = self.mod[gvar]
            try:
                build = tvm.get_global_func("tirx.build")
                module = build(func.with_attr("global_symbol", _SYMBOL), tvm.target.Target("llvm"))
                self.cache[key] = module[_SYMBOL]
            except Exception:
                self.cache[key] = None
        return self.cache[key]


def _fold_function(func: relax.Function, builds: _Builds) -> tuple[relax.Function, dict[int, Constant]] | None:
    """The function without its bindings to constants (folded or given), and those constants by variable;
    None when there are none. The variables stay in use until the inliner replaces them."""
    from tvm import relax

    body = func.body
    if not isinstance(body, relax.SeqExpr):
        return None
    constants: dict[int, Constant] = {}  # a Var's object handle → the constant it is bound to (Var's == builds an Expr)
    blocks = []
    for block in body.blocks:
        bindings = []
        for binding in block.bindings:
            value = _folded(binding, constants, builds) if isinstance(binding, relax.VarBinding) else binding.value
            if isinstance(binding, relax.VarBinding) and _is_constant(value):
                constants[binding.var.__chandle__()] = value  # FoldConstant inlines it and drops the binding
            else:
                bindings.append(binding)
        blocks.append(type(block)(bindings, block.span))
    if not constants:
        return None
    new_body = relax.SeqExpr(blocks, body.body, body.span)
    return relax.Function(func.params, new_body, func.ret_ty, func.is_pure, func.attrs, func.span), constants


@functools.cache
def _inliner_class() -> type:
    """The mutator that replaces each use of a variable in `constants` by its constant, normalizing what it
    changes: one C++ sweep calling back into Python only at variables (defined once: defining a PyExprMutator
    costs far more than using one)."""
    from tvm import relax

    @relax.expr_functor.mutator
    class Inliner(relax.PyExprMutator):
        def __init__(self, mod: tvm.IRModule) -> None:
            super().__init__(mod)
            self.constants: dict[int, Constant] = {}

        def visit_var_(self, var: relax.Var) -> relax.Expr:
            return self.constants.get(var.__chandle__(), var)

        def visit_dataflow_var_(self, var: relax.DataflowVar) -> relax.Expr:
            return self.constants.get(var.__chandle__(), var)

    return Inliner


def _folded(binding: relax.VarBinding, constants: dict[int, Constant], builds: _Builds) -> relax.Expr:
    """The binding's value, or the constant it evaluates to where it is `call_tir(prim_func, (constants...))`."""
    import tvm
    from tvm import relax

    call = binding.value
    if not isinstance(call, tvm.ir.expr.Call) or not _is_call_tir(call.op) or len(call.args) != 2:
        return call
    gvar, args = call.args
    if not isinstance(gvar, tvm.ir.expr.GlobalVar) or not isinstance(args, tvm.ir.expr.Tuple):
        return call
    values = [_constant_of(arg, constants) for arg in args.fields]
    shape = _static_shape(call)
    if any(v is None for v in values) or shape is None or not isinstance(builds.mod[gvar], tvm.tirx.PrimFunc):
        return call
    function = builds.get(gvar)
    if function is None:
        return call
    out = tvm.runtime.empty(shape, call.ty.dtype, tvm.cpu(0))
    function(*values, out)
    return relax.const(out)


def _is_call_tir(op: relax.Expr) -> bool:
    import tvm

    return isinstance(op, tvm.ir.Op) and op.name == "relax.call_tir"


def _is_constant(expr: relax.Expr) -> bool:
    import tvm

    return isinstance(expr, tvm.ir.expr.Constant)


def _constant_of(arg: relax.Expr, constants: dict[int, Constant]) -> tvm.runtime.Tensor | None:
    """The tensor an argument is: a constant, or a variable bound to one earlier (FoldConstant inlines those)."""
    if _is_constant(arg):
        return arg.value
    bound = constants.get(arg.__chandle__())
    return bound.value if bound is not None else None


def _static_shape(call: relax.Call) -> list[int] | None:
    """The call's one tensor output shape when every dimension is a constant (what FoldConstant requires)."""
    import tvm
    from tvm import relax

    if len(call.ty_args) != 1 or not isinstance(call.ty, relax.TensorType):
        return None
    shape = call.ty.shape
    if not isinstance(shape, relax.ShapeExpr) or not all(isinstance(d, tvm.ir.prim.expr.IntImm) for d in shape.values):
        return None
    return [int(d.value) for d in shape.values]
