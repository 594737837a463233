"""`bitc.toml`: compile options in a file, equivalent to the CLI flags (flags given on the command line win).

    target = "cpu"
    tune_trials = 0
    verify = true
    prefill_chunk = 32         # a decoder with a dynamic token count: prompt tokens per prefill step; 1: none
    passes = ["fold_constants", "fold_batchnorm", "remove_unused"]   # or [[passes]] tables with options
    [input_shapes]
    image = [1, 3, 224, 224]   # or a list of shapes: one artifact for several sizes
    [dims]                     # named dynamic dims, in every input that has them
    batch = 1
    seq = [128, 256]           # several sizes: one compiled size each
    reorder = true             # sort channels by importance (exact)
    [prune]                    # structured pruning (the `prune` pass's options)
    ratio = 0.3
    round_to = 8
    [binarize]                 # post-training binarization policy (the `binarize` pass's options)
    planes = 2                 # weight planes W ≈ Σ αᵢ·Bᵢ, 1-4
    activations = "sign"       # or "float" (weights only)
    exclude = ["conv1"]        # or layers = [...] to name exactly which; keep_first_last = true
    [lowbit_linear]            # low-bit MatMul/Gemm weights, float activations (the `lowbit_linear` pass's options)
    planes = 2                 # or ternary = true
    group_size = 128           # inputs per scale (multiple of 32; 0 = per output channel)
    salient = 0.05             # share of input columns kept in float
    calibration = "calib.npz"  # inputs for activation-aware / GPTQ fitting
    [kv_compress]              # a decoder's KV cache, runtime-owned (the `kv_compress` pass's options)
    bits = 2                   # 1, 2, 4 or 8 (KIVI); key_bits / value_bits override it
    residual = 128             # newest tokens kept in float
    key_group = 32             # tokens per key scale; value_group = channels per value scale (0: head)
    pre_rope = false           # quantize keys before the rotary embedding

`load_config(path)` returns keyword arguments for `bitc.compile`.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from bitc.errors import BadInputError, first_line
from bitc.passes import registry
from bitc.passes.options import fields as options_fields

# key → (expected type(s), keyword of bitc.compile)
_SCALARS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "target": (str, "target"),
    "tune_trials": (int, "tune_trials"),
    "tuning_db": (str, "tuning_db"),
    "use_tuning_db": (bool, "use_tuning_db"),
    "dump_ir": (str, "dump_ir"),
    "verify": (bool, "verify"),
    "check_exact": (bool, "check_exact"),
    "num_cores": (int, "num_cores"),
    "prefill_chunk": (int, "prefill_chunk"),
}


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Parse and validate a bitc.toml; relative paths in it are relative to the file's folder."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInputError(f"{path}: no such config file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as exc:
        raise BadInputError(f"{path}: not a valid TOML file ({first_line(exc)})") from None
    except RecursionError:  # tomllib recurses once per nesting level
        raise BadInputError(f"{path}: not a valid TOML file (arrays or tables nested too deep)") from None
    options: dict[str, Any] = {}
    for key, value in data.items():
        if key in _SCALARS:
            expected, keyword = _SCALARS[key]
            if not isinstance(value, expected) or (isinstance(value, bool) and bool not in _types(expected)):
                raise BadInputError(f"{path}: '{key}' must be {_type_name(expected)}, got {_short(value)}")
            options[keyword] = str(path.parent / value) if key in ("tuning_db", "dump_ir") else value
        elif key == "input_shapes":
            options["input_shapes"] = _input_shapes(path, value)
        elif key == "dims":
            options["dims"] = _dims(path, value)
        elif key == "passes":
            options["passes"] = _passes(path, value)
        elif key in (passes := registry.passes()):
            options[key] = _pass_table(path, passes[key], value)
        else:
            known = sorted([*_SCALARS, "input_shapes", "dims", "passes", *passes])
            raise BadInputError(f"{path}: unknown key '{key}'; known keys: {', '.join(known)}")
    return options


def _input_shapes(path: Path, value: Any) -> dict[str, list[list[int]]]:
    """{input: [shape, ...]}: a shape, or a list of shapes (one artifact for several sizes)."""
    if not isinstance(value, dict) or not all(_is_shape(dims) or _is_shape_list(dims) for dims in value.values()):
        raise BadInputError(
            f"{path}: [input_shapes] maps input names to lists of integers, e.g. x = [1, 3, 224, 224], or to lists "
            "of them (one artifact for several sizes)"
        )
    return {name: [list(d) for d in dims] if _is_shape_list(dims) else [list(dims)] for name, dims in value.items()}


def _dims(path: Path, value: Any) -> dict[str, list[int]]:
    """{dimension name: [size, ...]} from a [dims] table (batch = 1, seq = [128, 256])."""
    if not isinstance(value, dict) or not all(_is_size(v) or _is_shape(v) for v in value.values()):
        raise BadInputError(f"{path}: [dims] maps dimension names to a size or a list of sizes, e.g. seq = [128, 256]")
    return {name: list(v) if isinstance(v, list) else [v] for name, v in value.items()}


def _is_size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _is_shape(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(_is_size(d) for d in value)


def _is_shape_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(_is_shape(d) for d in value)


def _passes(path: Path, value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise BadInputError(f"{path}: 'passes' must be a list of names or of {{name = ..., options = {{...}}}} tables")
    specs: list[Any] = []
    for item in value:
        if isinstance(item, str):
            specs.append(item)
        elif isinstance(item, dict) and isinstance(item.get("name"), str) and set(item) <= {"name", "options"}:
            options = item.get("options", {})
            if not isinstance(options, dict):
                raise BadInputError(f"{path}: 'options' of pass '{item['name']}' must be a table, got {options!r}")
            specs.append((item["name"], dict(options)))
        else:
            raise BadInputError(
                f"{path}: bad entry in 'passes': {_short(item)} (a pass name or a table with keys name, options)"
            )
    return specs


def _pass_table(path: Path, item: registry.PassInfo, value: Any) -> dict[str, Any] | bool:
    """A pass's table, checked against the pass's Options (one validator for every source of options); `true`
    asks for the pass with its defaults, `false` leaves it out. File options are relative to the config file."""
    if isinstance(value, bool):
        return value
    if not isinstance(value, dict):
        raise BadInputError(
            f"{path}: [{item.name}] must be a table of the pass's options (or '{item.name}' must be true or "
            f"false), got {_short(value)}"
        )
    item.build_options(value, prefix=f"{path}: ")
    files = {f.name for f in options_fields(item.options_class) if f.metadata.get("path")}
    return {k: str(path.parent / v) if k in files and isinstance(v, str) else v for k, v in value.items()}


def _types(expected: type | tuple[type, ...]) -> tuple[type, ...]:
    return expected if isinstance(expected, tuple) else (expected,)


def _type_name(expected: type | tuple[type, ...]) -> str:
    if set(_types(expected)) == {int, float}:
        return "a number"
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list"}
    return " or ".join(names.get(t, t.__name__) for t in _types(expected))


def _short(value: Any, limit: int = 80) -> str:
    """A config value for a one-line message (a 5,000-deep array must not become a 20 kB line)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"
