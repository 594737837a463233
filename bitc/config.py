"""`bitc.toml`: compile options in a file, equivalent to the CLI flags (flags given on the command line win).

    target = "cpu"
    tune_trials = 0
    verify = true
    passes = ["fold_constants", "fold_batchnorm", "remove_unused"]   # or [[passes]] tables with options
    [input_shapes]
    image = [1, 3, 224, 224]
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

import math
import os
import tomllib
from pathlib import Path
from typing import Any

from bitc.errors import BadInputError, first_line

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
    "reorder": (bool, "reorder"),
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
        elif key == "passes":
            options["passes"] = _passes(path, value)
        elif key == "binarize":
            options["binarize"] = _binarize(path, value)
        elif key == "lowbit_linear":
            options["lowbit_linear"] = _lowbit_linear(path, value)
        elif key == "kv_compress":
            options["kv_compress"] = _pass_table(path, "kv_compress", value, _KV_KEYS)
        elif key == "prune":
            if not isinstance(value, dict) or not set(value) <= set(_PRUNE_KEYS):
                raise BadInputError(f"{path}: [prune] must be a table with keys from {', '.join(sorted(_PRUNE_KEYS))}")
            options["prune"] = _pass_table(path, "prune", value, _PRUNE_KEYS)
        else:
            known = sorted([*_SCALARS, "binarize", "input_shapes", "kv_compress", "lowbit_linear", "passes", "prune"])
            raise BadInputError(f"{path}: unknown key '{key}'; known keys: {', '.join(known)}")
    return options


def _input_shapes(path: Path, value: Any) -> dict[str, list[int]]:
    if not isinstance(value, dict) or not all(
        isinstance(dims, list) and dims and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims)
        for dims in value.values()
    ):
        raise BadInputError(f"{path}: [input_shapes] maps input names to lists of integers, e.g. x = [1, 3, 224, 224]")
    return {name: list(dims) for name, dims in value.items()}


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


_PRUNE_KEYS: dict[str, type | tuple[type, ...]] = {
    "ratio": (int, float),
    "criterion": str,
    "scope": str,
    "round_to": int,
    "protected": list,
    "layers": list,
}
_BINARIZE_KEYS: dict[str, type | tuple[type, ...]] = {
    "planes": int,
    "activations": str,
    "layers": list,
    "exclude": list,
    "keep_first_last": bool,
}


def _binarize(path: Path, value: Any) -> dict[str, Any]:
    return _pass_table(path, "binarize", value, _BINARIZE_KEYS)


def _pass_table(path: Path, table: str, value: Any, keys: dict[str, type | tuple[type, ...]]) -> dict[str, Any]:
    """A pass's options table, each key known and of its type (lists hold layer names)."""
    if not isinstance(value, dict):
        raise BadInputError(f"{path}: [{table}] must be a table, e.g. planes = 2")
    for key, item in value.items():
        if key not in keys:
            raise BadInputError(f"{path}: unknown key '{key}' in [{table}]; known keys: {', '.join(keys)}")
        expected = keys[key]
        if not isinstance(item, expected) or (isinstance(item, bool) and bool not in _types(expected)):
            raise BadInputError(f"{path}: [{table}] '{key}' must be {_type_name(expected)}, got {_short(item)}")
        if isinstance(item, float) and not math.isfinite(item):
            raise BadInputError(f"{path}: [{table}] '{key}' must be a finite number, got {item}")
        if expected is list and not all(isinstance(name, str) for name in item):
            raise BadInputError(f"{path}: [{table}] '{key}' must be a list of layer names")
    return dict(value)


_LOWBIT_KEYS: dict[str, type | tuple[type, ...]] = {
    "planes": int,
    "ternary": bool,
    "group_size": int,
    "salient": (int, float),
    "salient_block": bool,
    "method": str,
    "calibration": str,
    "layers": list,
    "exclude": list,
    "keep_last": bool,
    "sequential": bool,
}


_KV_KEYS = {
    "bits": int,
    "key_bits": int,
    "value_bits": int,
    "key_group": int,
    "value_group": int,
    "residual": int,
    "pre_rope": bool,
}


def _lowbit_linear(path: Path, value: Any) -> dict[str, Any]:
    options = _pass_table(path, "lowbit_linear", value, _LOWBIT_KEYS)
    if "calibration" in options:
        options["calibration"] = str(path.parent / options["calibration"])
    return options


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
