"""A pass's options, declared once as a dataclass: `bitc.toml` tables, CLI flags and `bitc.compile` keywords are
all derived from it, and every value from any of them goes through the one validator here.

    @register("prune", phase="channel")
    class Prune(ir.passes.InPlacePass):
        @dataclass(frozen=True)
        class Options:
            ratio: float = option(0.3, "remove this share of each channel group (0-1)", flag="--prune")

A field's type hint is what the validator checks (int, float, bool, str, list[str], unions with None, dicts for
in-memory values); its metadata carries the one-line help and, optionally, the CLI flag that sets it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from bitc.errors import BadInputError

NO_CONST: Any = object()  # a Flag's const when the flag takes a value


@dataclasses.dataclass(frozen=True)
class Flag:
    """How a CLI flag sets an option: `flag` takes a value (`metavar`), or with `const` is a switch that sets the
    option to `const`. `parse` turns the flag's text into options (default: the field's own type); it may set
    several options at once (e.g. `--lowbit-weights ternary`)."""

    flag: str
    help: str
    metavar: str | None = None
    const: Any = NO_CONST
    parse: Callable[[str], dict[str, Any]] | None = None


def option(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    flag_help: str | None = None,
    metavar: str | None = None,
    const: Any = NO_CONST,
    parse: Callable[[str], dict[str, Any]] | None = None,
    path: bool = False,
) -> Any:
    """A dataclass field for a pass option. `path`: a file name, read relative to the bitc.toml that gives it."""
    cli = Flag(flag, flag_help or help, metavar, const, parse) if flag else None
    metadata = {"help": help, "flag": cli, "path": path}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """The options of a pass that takes none."""


def configure(instance: Any, values: Mapping[str, Any]) -> Any:
    """A pass instance's Options from its constructor's keywords (validated as from any other source)."""
    cls = type(instance)
    return build(getattr(cls, "Options", NoOptions), values, getattr(cls, "pass_name", cls.__name__))


def fields(options_class: type) -> list[dataclasses.Field]:
    return list(dataclasses.fields(options_class))


def type_hints(options_class: type) -> dict[str, Any]:
    return typing.get_type_hints(options_class)


def build(options_class: type, values: Mapping[str, Any], table: str, prefix: str = "") -> Any:
    """`options_class(**values)` with every key known and every value of its declared type. Errors are one line:
    `prefix` (e.g. "bitc.toml: ") then the pass's table as `[table]` and the key."""
    if not isinstance(values, Mapping):
        raise BadInputError(f"{prefix}[{table}] must be a table of options, got {_short(values)}")
    hints = type_hints(options_class)
    for key, value in values.items():
        if key not in hints:
            known = ", ".join(f.name for f in fields(options_class)) or "none (the pass takes no options)"
            raise BadInputError(
                f"{prefix}unknown key '{key}' in [{table}]; [{table}] must be a table with keys from {known}"
            )
        check_value(f"{prefix}[{table}]", key, value, hints[key])
    return options_class(**values)


def check_value(where: str, key: str, value: Any, hint: Any) -> None:
    """Raise a one-line BadInputError unless `value` fits `hint` (a float option also takes an int; never a bool
    for a number; floats must be finite)."""
    if not _fits(value, hint):
        raise BadInputError(f"{where} '{key}' must be {describe(hint)}, got {_short(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise BadInputError(f"{where} '{key}' must be a finite number, got {value}")


def describe(hint: Any) -> str:
    """A type hint in words, for messages: 'an integer', 'a list of layer names', 'a number or none' ..."""
    args = typing.get_args(hint)
    if _is_union(hint):
        return " or ".join(dict.fromkeys(describe(a) for a in args))
    origin = typing.get_origin(hint)
    if origin is list:
        return "a list of layer names" if args == (str,) else "a list"
    if origin is dict or hint is dict:
        return "a table"
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        type(None): "none",
        os.PathLike: "a path",
    }
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _fits(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    if _is_union(hint):
        return any(_fits(value, arg) for arg in typing.get_args(hint))
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return isinstance(value, (list, tuple)) and all(_fits(v, item) for v in value)
    if origin is dict or hint is dict:
        return isinstance(value, Mapping)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is type(None):
        return value is None
    return isinstance(value, hint)


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def flag_value(field: dataclasses.Field, hint: Any, text: str) -> dict[str, Any]:
    """The options a CLI flag's text sets: parsed by the flag's `parse`, else as the field's type (lists are
    comma-separated names)."""
    cli: Flag = field.metadata["flag"]
    if cli.parse is not None:
        return cli.parse(text)
    base = _base_type(hint)
    if typing.get_origin(base) is list:
        return {field.name: [item.strip() for item in text.split(",") if item.strip()]}
    if base in (int, float):
        try:
            return {field.name: base(text)}
        except ValueError:
            kind = "an integer" if base is int else "a number"
            raise BadInputError(f"{cli.flag} must be {kind}, got '{text[:40]}'") from None
    return {field.name: text}


def _base_type(hint: Any) -> Any:
    """`int | None` → int: the type a flag's text is read as."""
    if _is_union(hint):
        rest = [a for a in typing.get_args(hint) if a is not type(None)]
        return rest[0] if rest else hint
    return hint


def _short(value: Any, limit: int = 80) -> str:
    """A value for a one-line message (a 5,000-deep array must not become a 20 kB line)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"
