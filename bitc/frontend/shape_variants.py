"""The input sizes one artifact is compiled for: each `--input-shape` given several times, and each named dynamic
dimension given several values (`--dim batch=1,4`), is one more specialised size; the runtime picks the one whose
shapes match the call.

Every size is compiled statically (the same code a single-size build gets, so a size is exactly as fast as an
artifact built for it alone); a call with shapes no size matches is refused before native code runs.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping, Sequence
from typing import Any

import onnx
import onnx_ir as ir

from bitc.errors import BadInputError

MAX_VARIANTS = 16  # each size is a full compile and a library of its own (weights included)

Shapes = dict[str, list[Any]]  # an input's dims: sizes, or a declared name / None left dynamic


def shape_lists(input_shapes: Any) -> dict[str, list[list[int]]]:
    """`input_shapes` as {input: [shape, ...]}: a shape per input ({"x": [1, 3, 8, 8]}), a list of shapes per
    input ({"x": [[1, 3, 8, 8], [1, 3, 16, 16]]}), or a list of {input: shape} dicts, one per size."""
    if input_shapes is None:
        return {}
    if isinstance(input_shapes, Sequence) and not isinstance(input_shapes, str):
        merged: dict[str, list[list[int]]] = {}
        for variant in input_shapes:
            if not isinstance(variant, Mapping):
                raise BadInputError(f"input_shapes: a list of sizes holds {{input: shape}} dicts, got {variant!r}")
            for name, dims in variant.items():
                merged.setdefault(str(name), []).append(_dims(name, dims))
        counts = {len(shapes) for shapes in merged.values()}
        if len(counts) > 1:
            raise BadInputError("input_shapes: every size in the list must give the same inputs")
        return merged
    if not isinstance(input_shapes, Mapping):
        raise BadInputError(f"input_shapes maps input names to shapes, got {type(input_shapes).__name__}")
    lists: dict[str, list[list[int]]] = {}
    for name, dims in input_shapes.items():
        nested = isinstance(dims, Sequence) and dims and all(isinstance(d, Sequence) for d in dims)
        lists[str(name)] = [_dims(name, d) for d in dims] if nested else [_dims(name, dims)]
    return lists


def dim_values(dims: Any) -> dict[str, list[int]]:
    """`dims` as {dimension name: [value, ...]}: {"batch": 1} or {"seq": [128, 256]}."""
    if dims is None:
        return {}
    if not isinstance(dims, Mapping):
        raise BadInputError(f"dims maps dimension names to sizes, got {type(dims).__name__}")
    values: dict[str, list[int]] = {}
    for name, given in dims.items():
        listed = list(given) if isinstance(given, Sequence) and not isinstance(given, str) else [given]
        if not listed or not all(type(v) is int and v > 0 for v in listed):
            raise BadInputError(f"--dim {name}: sizes must be positive integers, got {given!r}")
        values[str(name)] = list(dict.fromkeys(listed))
    return values


def variants(declared: Mapping[str, Any], input_shapes: Any = None, dims: Any = None) -> list[Shapes]:
    """One {input: shape} per size to compile (only the inputs whose shape was given or named), in the order
    asked. `declared` holds each input's dims as the model declares them (numbers, names, None).

    `--input-shape x=...` given N times makes N sizes (an input given once keeps its shape in all of them);
    `--dim name=a,b` sets the named dimension in every input that has it, one size per value; together, every
    combination. Anything that cannot apply (an unknown input or dimension name, a rank mismatch, counts that do
    not pair up) is refused, never ignored."""
    lists, named = shape_lists(input_shapes), dim_values(dims)
    for name in lists:
        if name not in declared:
            raise BadInputError(f"--input-shape names '{name}', the model's inputs are {list(declared)}")
    known_names = {d for shape in declared.values() for d in (shape or []) if isinstance(d, str)}
    for name in named:
        if name not in known_names:
            listed = ", ".join(sorted(known_names)) or "none"
            raise BadInputError(f"--dim {name}: the model has no dimension named '{name}' (its named dims: {listed})")
        for input_name in lists:
            if name in (declared[input_name] or []):
                raise BadInputError(
                    f"--dim {name} and --input-shape {input_name} both set dimension '{name}' of '{input_name}'; "
                    "give it one way"
                )
    counts = {len(shapes) for shapes in lists.values() if len(shapes) > 1}
    if len(counts) > 1:
        detail = ", ".join(f"{name} {len(shapes)}x" for name, shapes in lists.items())
        raise BadInputError(
            f"--input-shape given a different number of times per input ({detail}): give each input once (the "
            "same in every size) or as many times as there are sizes"
        )
    count = max(counts, default=1)
    combos = list(itertools.product(*named.values())) if named else [()]
    total = count * len(combos)
    if total > MAX_VARIANTS:
        raise BadInputError(
            f"{total} input sizes requested; at most {MAX_VARIANTS} fit one artifact (each is compiled in full)"
        )
    result: list[Shapes] = []
    for index in range(count):
        for combo in combos:
            sizes = dict(zip(named, combo, strict=True))
            shapes = {name: shapes[index if len(shapes) > 1 else 0] for name, shapes in lists.items()}
            for input_name, declared_dims in declared.items():
                if input_name in shapes or not declared_dims or not any(d in sizes for d in declared_dims):
                    continue
                # a dim still unknown stays as declared: the compile then names it with the flag that fixes it
                shapes[input_name] = [sizes.get(d, d) if isinstance(d, str) else d for d in declared_dims]
            if shapes not in result:
                result.append(shapes)
    return result


def declared_dims(model: ir.Model) -> dict[str, list[int | str | None]]:
    """Each graph input's dims as the model declares them: a size, a dimension name, or None (unknown)."""
    declared: dict[str, list[int | str | None]] = {}
    for value in model.graph.inputs:
        if value.name in model.graph.initializers:
            continue
        dims = [] if value.shape is None else list(value.shape)
        declared[value.name] = [d if isinstance(d, int) else getattr(d, "value", None) for d in dims]
    return declared


def declared_file_dims(path: str | os.PathLike) -> dict[str, list[int | str | None]]:
    """`declared_dims` of an ONNX file, read without its weights' external data (a cheap look before the load
    of each size)."""
    try:
        proto = onnx.load_model(str(path), load_external_data=False)
        initializers = {tensor.name for tensor in proto.graph.initializer}
    except Exception:  # the full load that follows refuses a bad file with its own message
        return {}
    declared: dict[str, list[int | str | None]] = {}
    for value in proto.graph.input:
        if value.name in initializers:
            continue
        shape = value.type.tensor_type.shape if value.type.HasField("tensor_type") else None
        dims = list(shape.dim) if shape is not None else []
        declared[value.name] = [
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or None) for d in dims
        ]
    return declared


def _dims(name: Any, dims: Any) -> list[int]:
    if not isinstance(dims, Sequence) or isinstance(dims, str) or not dims:
        raise BadInputError(f"input_shapes['{name}']: a shape is a list of integers, got {dims!r}")
    if not all(type(d) is int and d > 0 for d in dims):
        raise BadInputError(f"input '{name}': dimensions must be positive integers, got {list(dims)}")
    return list(dims)
