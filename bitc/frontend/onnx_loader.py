"""Load an ONNX file into onnx-ir, refusing anything bitc cannot trust with a one-line reason."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import onnx_ir as ir

from bitc.errors import BadInputError, first_line
from bitc.frontend.normalize import normalize

# ONNX files over 2 GiB cannot be a single protobuf; their weights must be external data.
_PROTOBUF_LIMIT = 2**31


def load_onnx(
    path: str | os.PathLike, input_shapes: dict[str, list[int]] | None = None, *, check: bool = True
) -> ir.Model:
    """Read `path` (with external data next to it), validate it and return a normalised `onnx_ir.Model`.

    `input_shapes` fixes symbolic input dimensions, e.g. {"x": [1, 3, 224, 224]}.
    """
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise BadInputError(f"{path}: empty file, not an ONNX model")
    if path.stat().st_size >= _PROTOBUF_LIMIT:
        raise BadInputError(f"{path}: larger than 2 GiB; store the weights as ONNX external data")
    try:
        proto = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError, RuntimeWarning or RuntimeError by version
        raise BadInputError(f"{path}: not a valid ONNX protobuf ({type(exc).__name__})") from None
    if not proto.HasField("graph"):
        raise BadInputError(f"{path}: the ONNX model has no graph")
    _check_external_data(path, proto)
    if check:
        _check_model(path)
    try:
        model = ir.from_proto(proto)
    except Exception as exc:
        raise BadInputError(f"{path}: cannot read the ONNX graph ({first_line(exc)})") from None
    ir.external_data.set_base_dir(model.graph, path.parent)
    return normalize(model, source=str(path), input_shapes=input_shapes)


def _check_external_data(path: Path, proto: onnx.ModelProto) -> None:
    """External data must stay inside the model's folder: no absolute paths, no `..`, no missing files."""
    base = path.parent.resolve()
    for tensor in _tensors_with_external_data(proto):
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        where = f"{path}: initializer '{tensor.name}'"
        if not location:
            raise BadInputError(f"{where} uses external data without a location")
        if os.path.isabs(location) or Path(location).drive:
            raise BadInputError(f"{where} refers to absolute path '{location}' (refused)")
        target = (base / location).resolve()
        if base not in target.parents:
            raise BadInputError(f"{where} refers to '{location}' outside the model's folder (refused)")
        if not target.is_file():
            raise BadInputError(f"{where} refers to missing external data file '{location}'")
        offset, length = int(info.get("offset", 0) or 0), int(info.get("length", 0) or 0)
        if offset < 0 or length < 0 or offset + length > target.stat().st_size:
            raise BadInputError(f"{where}: external data range goes past the end of '{location}'")


def _tensors_with_external_data(proto: onnx.ModelProto):
    graphs = [proto.graph]
    while graphs:
        graph = graphs.pop()
        for tensor in graph.initializer:
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                yield tensor
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("t") and attr.t.data_location == onnx.TensorProto.EXTERNAL:
                    yield attr.t
                graphs.extend(attr.graphs)
                if attr.HasField("g"):
                    graphs.append(attr.g)


def _check_model(path: Path) -> None:
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as exc:
        raise BadInputError(f"{path}: invalid ONNX model: {first_line(exc)}") from None
    except Exception as exc:
        raise BadInputError(f"{path}: ONNX checker failed: {first_line(exc)}") from None
