"""Several compiled sizes of one model as one module: an entry function per size, the weights stored once.

Each input size is imported, lowered and scheduled on its own (its kernels are specialised to its shapes); the
scheduled modules are then joined into one executable: size i's entry is renamed (`main` stays the first size's),
its kernels get a prefix so names never collide, and constants with equal bytes become one constant object, which
the VM's constant pool stores once. So a decoder's one-token step and its prefill chunk, or a recognizer at three
line widths, share their weights instead of carrying a copy each.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tvm
    from tvm import relax


def entry_name(index: int) -> str:
    """The entry function of the `index`-th size: `main` for the first, `size1`, `size2`... after it."""
    return "main" if index == 0 else f"size{index}"


def merge_sizes(modules: Sequence[tvm.IRModule]) -> tvm.IRModule:
    """One module holding every size's functions (`entry_name(i)` for size i's `main`), constants shared."""
    import tvm

    functions: dict = {}
    for index, module in enumerate(modules):
        renamed = module if index == 0 else _renamed(module, f"size{index}__", entry_name(index))
        for gvar, function in renamed.functions_items():
            if any(other.name_hint == gvar.name_hint for other in functions):
                raise ValueError(f"two sizes define a function named {gvar.name_hint}")
            functions[gvar] = function
    merged = tvm.IRModule(functions, attrs=modules[0].attrs)
    return share_constants(merged)


def _renamed(module: tvm.IRModule, prefix: str, entry: str) -> tvm.IRModule:
    """Every function of `module` under a new name (its `main` as `entry`, the others with `prefix`), calls
    updated: each gets that name as its global symbol and TVM's NormalizeGlobalVar renames the references."""
    import tvm
    from tvm import relax

    out = tvm.IRModule({}, attrs=module.attrs)
    for gvar, function in module.functions_items():
        name = entry if gvar.name_hint == "main" else prefix + gvar.name_hint
        out[gvar] = function.with_attr("global_symbol", name)
    return relax.transform.NormalizeGlobalVar()(out)


def share_constants(module: tvm.IRModule) -> tvm.IRModule:
    """Replace constants that hold the same bytes (dtype, shape and data) by one object in every Relax function."""
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    canonical: dict[tuple, relax.Constant] = {}

    @mutator
    class _Share(PyExprMutator):
        def visit_constant_(self, op: relax.Constant) -> relax.Expr:
            array = op.data.numpy()
            key = (str(array.dtype), array.shape, hashlib.blake2b(array.tobytes(), digest_size=20).digest())
            return canonical.setdefault(key, op)

    sharer = _Share(module)
    for gvar, function in module.functions_items():
        if isinstance(function, relax.Function):
            sharer.builder_.update_func(gvar, sharer.visit_expr(function))
    return sharer.builder_.get()
