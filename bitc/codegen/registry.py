"""Which code bitc generates for what: one registry of emitters and schedules, keyed by target kind.

- An *emitter* turns a node into Relax calls to its kernels: `emit(bb, node, args, target) -> relax.Expr`, keyed by
  (op type, target kind); bitc's own ops, and standard ops that a target emits itself where `when(node)` holds
  (the CPU's streamed float GEMV).
- A *schedule* is a bitc kernel's own default schedule: `schedule(func, target) -> s_tir.Schedule`, keyed by
  (kernel name, target kind); a kernel PrimFunc names itself with the attribute `KERNEL_ATTR` (`kernel_attrs`).

The emitter modules fill it with the decorators `emitter` and `schedule`; every lookup imports them first.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from bitc.errors import CompileError
from bitc.ops import DOMAIN as BITC_DOMAIN

if TYPE_CHECKING:
    import onnx_ir as ir
    from tvm import relax, s_tir, tirx

    from bitc.codegen.target import Target

TARGET_KINDS = ("llvm", "cuda")

KERNEL_ATTR = "bitc.kernel"
OPAQUE = 8  # TVM's kOpaque operator pattern: FuseOps leaves bitc kernels (their epilogues included) alone

Emitter = Callable[["relax.BlockBuilder", "ir.Node", "list[relax.Expr]", "Target"], "relax.Expr"]
Schedule = Callable[["tirx.PrimFunc", "Target"], "s_tir.Schedule"]
E = TypeVar("E", bound=Emitter)
S = TypeVar("S", bound=Schedule)

# the packages whose modules' decorators fill the registry (every module in them is imported once)
_PACKAGES = ("bitc.codegen.cpu", "bitc.codegen.cuda")
# (domain, op type, target kind) → (emitter, condition on the node or None for every node)
_EMITTERS: dict[tuple[str, str, str], tuple[Emitter, Callable[[ir.Node], bool] | None]] = {}
_SCHEDULES: dict[tuple[str, str], Schedule] = {}
# what a missing emitter means, per target kind
_MISSING = {"llvm": "bitc op {op} has no kernel", "cuda": "{op} has no CUDA kernel (it runs on --target cpu)"}


def emitter(
    op_type: str, kind: str, *, domain: str = BITC_DOMAIN, when: Callable[[ir.Node], bool] | None = None
) -> Callable[[E], E]:
    """Decorator: register `emit` as the emitter of `op_type` nodes for target `kind` ("llvm" or "cuda"). A standard
    op (`domain=""`) is emitted by bitc only where `when(node)` holds; elsewhere TVM's ONNX importer converts it."""

    def register(emit: E) -> E:
        _register(_EMITTERS, (_domain(domain), op_type, _kind(kind)), (emit, when))
        return emit

    return register


def schedule(kernel: str, kind: str) -> Callable[[S], S]:
    """Decorator: register `schedule(func, target)` as the default schedule of the bitc kernel named `kernel`
    (its `KERNEL_ATTR`) for target `kind`."""

    def register(function: S) -> S:
        _register(_SCHEDULES, (kernel, _kind(kind)), function)
        return function

    return register


def find_emitter(node: ir.Node, kind: str) -> Emitter | None:
    """The emitter of `node` for target `kind`, or None (a bitc op without one, or a standard op TVM converts)."""
    _load()
    entry = _EMITTERS.get((_domain(node.domain), node.op_type, kind))
    if entry is None:
        return None
    emit, when = entry
    return emit if when is None or when(node) else None


def is_custom(node: ir.Node, kind: str) -> bool:
    """Nodes bitc emits itself for target `kind`: all its own ops (one without an emitter fails in `emit`), and the
    standard ops whose registered condition holds."""
    return _domain(node.domain) == BITC_DOMAIN or find_emitter(node, kind) is not None


def emit(bb: relax.BlockBuilder, node: ir.Node, args: list[relax.Expr], target: Target) -> relax.Expr:
    """Emit `node` into the block builder for `target`; `args` are the Relax values of its non-constant inputs, in
    order. Returns its one output."""
    function = find_emitter(node, target.kind)
    if function is None:
        raise CompileError(f"node '{node.name}': {_MISSING[target.kind].format(op=node.op_type)}")
    return function(bb, node, args, target)


def check_emitters(nodes: Iterable[ir.Node], kind: str) -> None:
    """Refuse, naming the first, a bitc op without an emitter for target `kind`."""
    for node in nodes:
        if _domain(node.domain) == BITC_DOMAIN and find_emitter(node, kind) is None:
            raise CompileError(f"node '{node.name}': {_MISSING[kind].format(op=node.op_type)}")


def find_schedule(kernel: str, kind: str) -> Schedule | None:
    """The default schedule of the bitc kernel named `kernel` for target `kind`, or None."""
    _load()
    return _SCHEDULES.get((kernel, kind))


def emitted_op_types() -> dict[str, list[str]]:
    """For each target kind, the bitc op types that have an emitter (sorted)."""
    _load()
    return {
        kind: sorted(op for domain, op, k in _EMITTERS if domain == BITC_DOMAIN and k == kind) for kind in TARGET_KINDS
    }


def kernel_attrs(kernel: str, *, scheduled: bool) -> dict[str, Any]:
    """PrimFunc attributes of a bitc kernel: its name, opaque to fusion, and whether it brings its own schedule."""
    attrs: dict[str, Any] = {KERNEL_ATTR: kernel, "op_pattern": OPAQUE}
    return {**attrs, "tirx.is_scheduled": True} if scheduled else attrs


def kernel_name(func: tirx.PrimFunc) -> str | None:
    """The bitc kernel a PrimFunc is (its `KERNEL_ATTR`), or None for any other function."""
    if func.attrs is None or KERNEL_ATTR not in func.attrs:
        return None
    return str(func.attrs[KERNEL_ATTR])


def _register(table: dict[Any, Any], key: tuple[str, ...], value: Any) -> None:
    if key in table:
        raise ValueError(f"codegen registry: {key} is registered twice")
    table[key] = value


def _kind(kind: str) -> str:
    if kind not in TARGET_KINDS:
        raise ValueError(f"codegen registry: unknown target kind '{kind}' (known: {', '.join(TARGET_KINDS)})")
    return kind


def _domain(domain: str) -> str:
    return "" if domain == "ai.onnx" else domain


@functools.cache
def _load() -> None:
    """Import every module of the target packages: a kernel module registers its emitters where they are defined,
    so adding one is adding its file."""
    for package in _PACKAGES:
        for module in pkgutil.iter_modules(importlib.import_module(package).__path__):
            importlib.import_module(f"{package}.{module.name}")
