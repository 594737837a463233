"""Passes by name: what `--passes`, `bitc.toml` and `bitc passes` refer to."""

from __future__ import annotations

from typing import Any, TypeVar

import onnx_ir as ir

from bitc.errors import BadInputError

_PASSES: dict[str, type[ir.passes.PassBase]] = {}
P = TypeVar("P", bound=type[ir.passes.PassBase])


def register(name: str, *, exact: bool = False, renames_outputs: bool = False):
    """Class decorator: make a pass available under `name` (its docstring's first line describes it). `exact`
    declares that the pass preserves the model's function up to float rounding: every compile then checks that
    claim numerically (see `run_pipeline`); lossy passes (binarize, prune, ...) leave it False. A pass that
    changes the model's outputs by design (kv_compress) says `renames_outputs`; any other pass gets the graph
    outputs' names restored after it runs."""

    def decorate(cls: P) -> P:
        if name in _PASSES:
            raise ValueError(f"pass '{name}' is registered twice")
        cls.pass_name = name  # type: ignore[attr-defined]
        cls.exact = exact  # type: ignore[attr-defined]
        cls.renames_outputs = renames_outputs  # type: ignore[attr-defined]
        _PASSES[name] = cls
        return cls

    return decorate


def available() -> dict[str, str]:
    """Registered pass names with their one-line descriptions, in name order."""
    _import_builtin_passes()
    return {name: summary(cls) for name, cls in sorted(_PASSES.items())}


def create(name: str, options: dict[str, Any] | None = None) -> ir.passes.PassBase:
    _import_builtin_passes()
    if name not in _PASSES:
        raise BadInputError(f"unknown pass '{name}'; available passes: {', '.join(sorted(_PASSES))}")
    try:
        return _PASSES[name](**(options or {}))
    except TypeError as exc:
        raise BadInputError(f"pass '{name}': bad options {options}: {exc}") from None


def is_exact(name: str) -> bool:
    """Whether the pass registered as `name` claims to keep the model's outputs (up to float rounding)."""
    _import_builtin_passes()
    return bool(getattr(_PASSES.get(name), "exact", False))


def renames_outputs(name: str) -> bool:
    """Whether the pass registered as `name` changes the graph's outputs by design."""
    _import_builtin_passes()
    return bool(getattr(_PASSES.get(name), "renames_outputs", False))


def summary(cls: type) -> str:
    doc = (cls.__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""


def _import_builtin_passes() -> None:
    from bitc.passes import (  # noqa: F401  (registration happens on import)
        binarize,
        binary_fusion,
        cleanup,
        fold_batchnorm,
        kv_compress,
        lowbit_linear,
        lower_binary,
        prune,
        reorder,
    )
