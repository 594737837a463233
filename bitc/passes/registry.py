"""Passes by name, each declared once: its options, its phase in the pipeline and its claims. `--passes`,
`bitc.toml`, the CLI's pass flags, `bitc.compile`'s pass keywords and `bitc passes` are all derived from here."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import onnx_ir as ir

from bitc.errors import BadInputError
from bitc.passes import options as pass_options

# Pipeline phases, in order: a pass added by an option goes after every pass of its phase (and order within the
# phase) already in the pipeline, and before the first pass of a later one.
PHASES = ("cleanup", "channel", "quantize", "binary", "kv", "final")

P = TypeVar("P", bound=type[ir.passes.PassBase])


@dataclass(frozen=True)
class PassInfo:
    """What a pass declares. `exact`: the pass preserves the model's function up to float rounding (every
    compile checks that claim numerically); `renames_outputs`: it changes the graph's outputs by design;
    `requires`: passes it needs later in the pipeline (added where missing); `switch`: a CLI flag that turns the
    pass on with its defaults; `needs_flag`: the pass's other flags are refused unless this one is given."""

    name: str
    cls: type
    phase: str
    order: int = 0
    exact: bool = False
    renames_outputs: bool = False
    requires: tuple[str, ...] = ()
    switch: tuple[str, str] | None = None
    needs_flag: str | None = None

    @property
    def options_class(self) -> type:
        return getattr(self.cls, "Options", pass_options.NoOptions)

    @property
    def rank(self) -> tuple[int, int]:
        return PHASES.index(self.phase), self.order

    @property
    def summary(self) -> str:
        doc = (self.cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""

    def build_options(self, values: Mapping[str, Any], prefix: str = "") -> Any:
        """The Options instance for `values`, validated (`prefix` starts any error message)."""
        return pass_options.build(self.options_class, values, self.name, prefix)

    def user_options(self, value: Any) -> dict[str, Any] | None:
        """A `bitc.compile` keyword's value as the pass's options: None/False = off, True = the defaults, a
        mapping = those options, anything else through the Options class's `shorthand` (e.g. prune=0.3)."""
        if value is None or value is False:
            return None
        if value is True:
            return {}
        if isinstance(value, Mapping):
            return dict(value)
        shorthand = getattr(self.options_class, "shorthand", None)
        if shorthand is None:
            raise BadInputError(f"{self.name}: expected True or a dict of its options, got {value!r}")
        return dict(shorthand(value))


_PASSES: dict[str, PassInfo] = {}


def register(
    name: str,
    *,
    phase: str,
    order: int = 0,
    exact: bool = False,
    renames_outputs: bool = False,
    requires: tuple[str, ...] = (),
    switch: tuple[str, str] | None = None,
    needs_flag: str | None = None,
):
    """Class decorator: declare a pass under `name` (its docstring's first line describes it; a nested `Options`
    dataclass, if any, its options). See `PassInfo` for the rest."""
    if phase not in PHASES:
        raise ValueError(f"pass '{name}': phase must be one of {PHASES}, got {phase!r}")

    def decorate(cls: P) -> P:
        if name in _PASSES:
            raise ValueError(f"pass '{name}' is registered twice")
        info = PassInfo(name, cls, phase, order, exact, renames_outputs, tuple(requires), switch, needs_flag)
        cls.pass_name = name  # type: ignore[attr-defined]
        cls.exact = exact  # type: ignore[attr-defined]
        _PASSES[name] = info
        return cls

    return decorate


def passes() -> dict[str, PassInfo]:
    """Every registered pass, in registration order."""
    _import_builtin_passes()
    return dict(_PASSES)


def info(name: str) -> PassInfo:
    _import_builtin_passes()
    if name not in _PASSES:
        raise BadInputError(f"unknown pass '{name}'; available passes: {', '.join(sorted(_PASSES))}")
    return _PASSES[name]


def available() -> dict[str, str]:
    """Registered pass names with their one-line descriptions, in name order."""
    return {name: item.summary for name, item in sorted(passes().items())}


def create(name: str, options: Mapping[str, Any] | None = None) -> ir.passes.PassBase:
    """An instance of the pass, its options validated first (one error format for every source of options)."""
    item = info(name)
    item.build_options(options or {}, f"pass '{name}': bad options: ")
    return item.cls(**(options or {}))


def is_exact(name: str) -> bool:
    """Whether the pass registered as `name` claims to keep the model's outputs (up to float rounding)."""
    item = passes().get(name)
    return bool(item and item.exact)


def renames_outputs(name: str) -> bool:
    """Whether the pass registered as `name` changes the graph's outputs by design."""
    item = passes().get(name)
    return bool(item and item.renames_outputs)


@functools.cache
def _import_builtin_passes() -> None:
    """Import every module of this package once: a pass registers itself where it is defined, so adding one is
    adding its module."""
    import importlib
    import pkgutil

    import bitc.passes

    for module in pkgutil.iter_modules(bitc.passes.__path__):
        importlib.import_module(f"bitc.passes.{module.name}")
