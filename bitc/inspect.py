"""What `bitc inspect` reports about an ONNX model or a `.bitc` artifact, as plain data."""

from __future__ import annotations

import collections
import math
import zipfile
from pathlib import Path
from typing import Any

from bitc.errors import BadInputError, first_line
from bitc.frontend.narrow_types import narrow_io
from bitc.layers import layer_table, summarize_layers


def inspect_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: no such file")
    if zipfile.is_zipfile(path):
        return inspect_artifact(path)
    return inspect_onnx(path)


def inspect_artifact(path: Path) -> dict[str, Any]:
    from bitc.runtime.artifact import read_manifest

    manifest = displayable_manifest(path, read_manifest(path))
    return {"kind": "artifact", "path": str(path), "size_bytes": path.stat().st_size, "manifest": manifest}


# What the display reads from a manifest: key -> (type, default when absent). A present key of another type is
# refused by name (a forged or damaged manifest); an absent one is shown as its default (bitc writes them all, so
# only a forged manifest shows a placeholder), or, when the default is OPTIONAL, left absent.
OPTIONAL = object()
_SCALAR = (str, int, float, bool, type(None))
_MANIFEST_FIELDS: dict[str, tuple[type, Any]] = {
    "source": (dict, {}),
    "target": (dict, {}),
    "versions": (dict, {}),
    "inputs": (list, []),
    "outputs": (list, []),
    "passes": (list, []),
    "codegen": (dict, {}),
    "members": (dict, {}),
    "layers": (list, []),
    "stats": (dict, {}),
}
_ENTRY_FIELDS: dict[str, dict[str, tuple[type | tuple[type, ...], Any]]] = {
    "source": {"name": (str, "?")},
    "target": {
        "name": (str, "?"),
        "kind": (str, OPTIONAL),
        "arch_source": (_SCALAR, OPTIONAL),
        "ptx": (_SCALAR, OPTIONAL),
        "num_cores": (_SCALAR, OPTIONAL),
    },
    "codegen": {"conv_layout": (str, OPTIONAL), "generic_convs": (list, OPTIONAL)},
    "tensor": {"name": (str, "?"), "dtype": (str, "?"), "shape": (list, [])},
    "pass": {"name": (str, "?")},
    "member": {"size": (int, "?"), "sha256": (str, "?")},
    "layer": {
        "name": (str, "?"),
        "op": (str, "?"),
        "precision": (str, "?"),
        "params": ((int, float), 0),
        "macs": ((int, float), 0),
        "bytes": ((int, float), 0),
    },
    "stats": {
        "layers": ((int, float), 0),
        "params": ((int, float), 0),
        "macs": ((int, float), 0),
        "binary_mac_share": ((int, float), 0),
    },
}


def displayable_manifest(path: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest with every field the display reads checked for type (one-line BadInputError naming the field
    otherwise) and absent ones filled with a placeholder, so `inspect` shows any readable manifest."""
    shown = dict(manifest)
    for key, (kind, default) in _MANIFEST_FIELDS.items():
        shown[key] = _typed(path, key, shown.get(key, default), kind)
    for key in ("source", "target", "codegen", "stats"):
        shown[key] = _entry(path, key, shown[key], key)
    for key, kind in (("inputs", "tensor"), ("outputs", "tensor"), ("passes", "pass"), ("layers", "layer")):
        shown[key] = [_entry(path, f"{key}[{i}]", item, kind) for i, item in enumerate(shown[key])]
    shown["members"] = {
        name: _entry(path, f"members.{name}", meta, "member") for name, meta in shown["members"].items()
    }
    if shown.get("kv_cache") is not None:
        _check_kv_cache(path, shown["kv_cache"])
    if "variants" in shown:
        variants = _typed(path, "variants", shown["variants"], list)
        shown["variants"] = [_variant(path, i, entry) for i, entry in enumerate(variants)]
    return shown


def _variant(path: Path, index: int, value: Any) -> dict[str, Any]:
    """One compiled input size: its library and its (checked) input specs."""
    entry = dict(_typed(path, f"variants[{index}]", value, dict))
    entry["library"] = _typed(path, f"variants[{index}].library", entry.get("library", "?"), str)
    inputs = _typed(path, f"variants[{index}].inputs", entry.get("inputs", []), list)
    entry["inputs"] = [_entry(path, f"variants[{index}].inputs[{i}]", t, "tensor") for i, t in enumerate(inputs)]
    return entry


def _typed(path: Path, key: str, value: Any, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(value, kind) or (isinstance(value, bool) and kind in ((int, float), int)):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise BadInputError(f"{path}: manifest '{key}' is malformed ({type(value).__name__}, expected {names})")
    return value


def _entry(path: Path, key: str, value: Any, kind: str) -> dict[str, Any]:
    """One object of the manifest (a tensor, pass, layer ...): an object whose display fields have their types."""
    entry = dict(_typed(path, key, value, dict))
    for field, (field_kind, default) in _ENTRY_FIELDS[kind].items():
        if field in entry or default is not OPTIONAL:
            entry[field] = _typed(path, f"{key}.{field}", entry.get(field, default), field_kind)
    return entry


def _check_kv_cache(path: Path, layout: Any) -> None:
    from bitc.runtime.kv_cache import KVCacheLayout

    try:
        KVCacheLayout.from_json(layout)
    except (TypeError, ValueError) as exc:
        raise BadInputError(f"{path}: manifest 'kv_cache' is malformed ({first_line(exc)})") from None


def json_safe(value: Any) -> Any:
    """`value` with NaN and infinities as the strings "NaN", "Infinity", "-Infinity": what `json.dumps(...,
    allow_nan=False)` accepts, so `inspect --json` always prints valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def inspect_onnx(path: Path) -> dict[str, Any]:

    from bitc.frontend import load_onnx

    model = load_onnx(path)
    ops = collections.Counter(
        f"{node.domain}::{node.op_type}" if node.domain else node.op_type for node in model.graph.all_nodes()
    )
    params = sum(int(v.const_value.size) for v in model.graph.initializers.values() if v.const_value is not None)
    param_bytes = sum(int(v.const_value.nbytes) for v in model.graph.initializers.values() if v.const_value)
    layers = layer_table(model)
    narrow = narrow_io(model)  # the file's dtypes, not their carriers
    return {
        "kind": "onnx",
        "path": str(path),
        "size_bytes": path.stat().st_size,
        "producer": f"{model.producer_name or ''} {model.producer_version or ''}".strip(),
        "opsets": dict(model.opset_imports),
        "inputs": [_value(v, narrow) for v in model.graph.inputs],
        "outputs": [_value(v, narrow) for v in model.graph.outputs],
        "nodes": len(model.graph),
        "ops": dict(ops.most_common()),
        "parameters": params,
        "parameter_bytes": param_bytes,
        "ir_version": model.ir_version,
        "summary": summarize_layers(layers),
        "layers": layers,
        "dynamic_inputs": _dynamic_inputs(model),
        "unsupported": unsupported_nodes(model),
    }


def _dynamic_inputs(model: Any) -> list[dict[str, Any]]:
    """Inputs with a dimension that is not a number: each needs --input-shape to compile."""
    return [_value(v, {}) for v in model.graph.inputs if v.shape is None or not v.shape.is_static()]


def unsupported_nodes(model: Any, limit: int = 50) -> list[dict[str, str]]:
    """Nodes `bitc compile` would refuse after its lowerings (op, domain, node, why), at most `limit`: what a
    user sees before compiling instead of one error at a time."""
    from bitc import ops
    from bitc.codegen.onnx_support import unsupported_reason
    from bitc.frontend.onnx_lowering import importer_ops

    known = importer_ops()
    found = []
    for node in model.graph.all_nodes():
        standard = node.domain in ("", "ai.onnx")
        if ops.is_bitc(node):
            continue
        if not standard or (known and node.op_type not in known):
            reason = "no lowering: neither TVM's ONNX importer nor an ONNX function body covers this op"
        elif (reason := unsupported_reason(node)) is None:
            continue
        found.append({"op": node.op_type, "domain": node.domain or "ai.onnx", "node": node.name, "reason": reason})
        if len(found) == limit:
            break
    return found


def _value(value: Any, narrow: dict[str, str]) -> dict[str, Any]:
    shape = [d if isinstance(d, int) else str(d) for d in value.shape] if value.shape is not None else None
    dtype = value.dtype.numpy().name if value.dtype is not None else None
    dtype = narrow.get(value.name, dtype)
    return {"name": value.name, "shape": shape, "dtype": dtype}
