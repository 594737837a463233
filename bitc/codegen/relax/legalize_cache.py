"""Legalize each distinct operator call once: repeated layers reuse the PrimFunc of the first one.

TVM's LegalizeOps builds a TE compute and a PrimFunc for every call, even when a model repeats the same layer
(same op, attributes and tensor types) thousands of times; BlockBuilder then de-duplicates the identical PrimFuncs,
so all that work is thrown away. That made compile time grow with the number of layers rather than the number of
distinct ones (a 2,000-node chain of equal convs spent 14 s in LegalizeOps). Here each op's legalization is wrapped:
the call is keyed by its op, attributes and argument types (large constants by their type only, small ones by
value, since a legalization may read them), and a repeat becomes a `call_tir` of the first call's PrimFunc on the
new arguments. Only results that are one `call_tir` taking exactly the call's tensors are reused, so nothing a
legalization embeds (a constant value, a symbolic shape variable) can leak from one call into another.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tvm import relax
    from tvm.ir.expr import Constant

# Constants up to this many elements are keyed by value: shape-like and scalar operands a legalization may read.
_KEY_BY_VALUE_MAX_ELEMENTS = 64

Legalizer = Callable[["relax.BlockBuilder", "relax.Call"], "relax.Expr"]


def cached_legalize_map(custom: dict[str, Legalizer]) -> dict[str, Legalizer]:
    """A LegalizeOps `customize_legalize_map` covering every relax op with a legalization: `custom` entries
    where given, TVM's own elsewhere, each behind one shared cache (one cache per map: make one per build)."""
    import tvm

    cache = _LegalizeCache()
    legalizers: dict[str, Legalizer] = {}
    for name in tvm.ir.Op.list_op_names():
        if not name.startswith("relax."):
            continue
        legalize = custom.get(name) or tvm.ir.Op.get(name).get_attr("FLegalize")
        if legalize is not None:
            legalizers[name] = cache.wrap(legalize)
    for name, legalize in custom.items():
        legalizers.setdefault(name, cache.wrap(legalize))
    return legalizers


class _LegalizeCache:
    """Results of earlier legalizations, keyed by the structural hash of a call's signature."""

    def __init__(self) -> None:
        self._entries: dict[int, list[tuple[relax.Call, relax.Call, list[int]]]] = {}
        self.hits = 0

    def wrap(self, legalize: Legalizer) -> Legalizer:
        def cached(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
            signature = _signature(call)
            if signature is None:
                return legalize(bb, call)
            reused = self._lookup(signature, call)
            if reused is not None:
                self.hits += 1
                return reused
            result = legalize(bb, call)
            positions = _argument_positions(call, result)
            if positions is not None:
                self._entries.setdefault(_hash(signature), []).append((signature, result, positions))
            return result

        return cached

    def _lookup(self, signature: relax.Call, call: relax.Call) -> relax.Call | None:
        import tvm_ffi
        from tvm import relax

        for known, result, positions in self._entries.get(_hash(signature), []):
            if tvm_ffi.structural_equal(known, signature, map_free_vars=True):
                arguments = relax.Tuple([call.args[i] for i in positions])
                return relax.Call(result.op, [result.args[0], arguments], result.attrs, result.ty_args)
        return None


def _hash(signature: relax.Call) -> int:
    import tvm_ffi

    return tvm_ffi.structural_hash(signature, map_free_vars=True)


def _signature(call: relax.Call) -> relax.Call | None:
    """The call with each tensor variable (and large constant) replaced by a fresh variable of its type: equal
    signatures legalize to the same PrimFunc. None for calls that are not worth or not safe to key."""
    import tvm
    from tvm import relax

    if not isinstance(call.op, tvm.ir.Op):
        return None
    placeholders: dict[int, relax.Var] = {}
    arguments = []
    for index, arg in enumerate(call.args):
        if _is_keyed(arg):
            if not isinstance(arg.ty, relax.TensorType):
                return None
            seen = next((p for i, p in placeholders.items() if call.args[i].same_as(arg)), None)
            placeholders[index] = seen if seen is not None else relax.Var(f"arg{index}", arg.ty)
            arguments.append(placeholders[index])
        else:
            arguments.append(arg)
    return relax.Call(call.op, arguments, call.attrs, call.ty_args)


def _is_keyed(arg: relax.Expr) -> bool:
    """Operands keyed by type alone: variables and large constants (small constants are keyed by value)."""
    from tvm import relax
    from tvm.ir.expr import Constant

    return isinstance(arg, relax.Var) or (isinstance(arg, Constant) and _is_large(arg))


def _is_large(constant: Constant) -> bool:
    shape = getattr(constant.ty, "shape", None)
    if shape is None:
        return False
    size = 1
    for dim in shape:
        size *= int(dim)
    return size > _KEY_BY_VALUE_MAX_ELEMENTS


def _argument_positions(call: relax.Call, result: relax.Expr) -> list[int] | None:
    """Where each argument of the result's `call_tir` comes from in the original call, if the result is one
    `call_tir(gv, (tensors...))` that passes every keyed tensor of the call (so nothing was embedded)."""
    import tvm
    from tvm import relax

    call_tir = tvm.ir.Op.get("relax.call_tir")
    if not (isinstance(result, relax.Call) and result.op.same_as(call_tir) and len(result.args) == 2):
        return None
    callee, packed = result.args
    if not isinstance(callee, relax.GlobalVar) or not isinstance(packed, relax.Tuple):
        return None
    positions = []
    for field in packed.fields:
        index = next((i for i, arg in enumerate(call.args) if arg.same_as(field)), None)
        if index is None:
            return None
        positions.append(index)
    keyed = [arg for arg in call.args if _is_keyed(arg)]
    if not all(any(arg.same_as(field) for field in packed.fields) for arg in keyed):
        return None
    return positions
