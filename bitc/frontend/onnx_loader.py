"""Load an ONNX file into onnx-ir, refusing anything bitc cannot trust with a one-line reason."""

from __future__ import annotations

import math
import os
from pathlib import Path

import onnx
import onnx_ir as ir
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from bitc.errors import BadInputError, first_line
from bitc.frontend.normalize import normalize

# ONNX files over 2 GiB cannot be a single protobuf; their weights must be external data.
_PROTOBUF_LIMIT = 2**31
# The TensorProto fields that hold text (names, external data entries); the rest is data.
_TENSOR_TEXT_FIELDS = ("name", "doc_string", "external_data", "metadata_props")
# The keys ONNX defines for external data; onnx-ir ignores others with a warning, hiding e.g. a misspelled length.
_EXTERNAL_DATA_KEYS = {"location", "offset", "length", "checksum", "basepath"}


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
    _check_utf8(path, proto)
    _check_external_data(path, proto)
    if check:
        _check_model(path)
    _check_raw_data(path, proto)
    try:
        model = ir.from_proto(proto)
    except Exception as exc:
        raise BadInputError(f"{path}: cannot read the ONNX graph ({first_line(_root_cause(exc))})") from None
    ir.external_data.set_base_dir(model.graph, path.parent)
    return in_memory(normalize(model, source=str(path), input_shapes=input_shapes), path)


def in_memory(model: ir.Model, source: str | os.PathLike = "model") -> ir.Model:
    """Read external data into memory now, before any pass sees the weights. An external tensor is a view of a
    memory-mapped file; a pass that folds e.g. Transpose(W) keeps a view of that map, and closing the map later
    (TVM import loads the weights) then fails with BufferError. Copies made here own their memory."""
    try:
        for graph in model.graphs():
            for value in graph.initializers.values():
                if isinstance(value.const_value, ir.ExternalTensor):
                    value.const_value = _owned(value.const_value)
            for node in graph:
                for name, attr in list(node.attributes.items()):
                    if attr.type == ir.AttributeType.TENSOR and isinstance(attr.value, ir.ExternalTensor):
                        node.attributes[name] = ir.AttrTensor(name, _owned(attr.value))
    except (OSError, ValueError) as exc:
        raise BadInputError(f"{source}: cannot read the external data ({first_line(exc)})") from None
    return model


def _owned(tensor: ir.ExternalTensor) -> ir.Tensor:
    """The tensor's data copied out of the file's memory map, which is then closed."""
    data = tensor.numpy().copy()
    tensor.release()
    return ir.Tensor(data, name=tensor.name, dtype=tensor.dtype)


def _check_utf8(path: Path, proto: onnx.ModelProto) -> None:
    """ONNX strings are bytes on the wire; protobuf hands invalid UTF-8 back as `bytes`, which onnx-ir cannot
    serialise later (a confusing failure deep in shape inference), so name the field here instead."""
    found = _non_utf8_field(proto, "model")
    if found is not None:
        where, value = found
        raise BadInputError(f"{path}: {where} is not valid UTF-8 ({value[:60]!r})")


def _non_utf8_field(message: Message, where: str) -> tuple[str, bytes] | None:
    """The first string field (depth first) that protobuf could not decode, with its path in the proto."""
    if isinstance(message, onnx.AttributeProto):
        undecodable = _non_utf8_attribute(message)
        if undecodable is not None:
            return where, undecodable
    for field, value in _text_fields(message):
        if field.type not in (field.TYPE_STRING, field.TYPE_MESSAGE):
            continue
        single = isinstance(value, str | bytes | Message)
        for index, item in enumerate([value] if single else value):
            label = _field_label(where, field.name, item, None if single else index)
            if isinstance(item, bytes):
                return label, item
            found = _non_utf8_field(item, label) if isinstance(item, Message) else None
            if found is not None:
                return found
    return None


def _non_utf8_attribute(attr: onnx.AttributeProto) -> bytes | None:
    """String attributes are `bytes` in the proto but must be UTF-8 (onnx-ir otherwise warns and keeps bytes)."""
    for raw in (attr.s, *attr.strings):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw
    return None


def _text_fields(message: Message) -> list[tuple[FieldDescriptor, object]]:
    """The fields set on `message`; for a tensor only those that can hold text, so its data is never copied."""
    if not isinstance(message, onnx.TensorProto):
        return message.ListFields()
    fields = message.DESCRIPTOR.fields_by_name
    return [(fields[name], getattr(message, name)) for name in _TENSOR_TEXT_FIELDS if name in fields]


def _field_label(where: str, field: str, item: object, index: int | None) -> str:
    """`node 'conv'` for a named node, else the protobuf path (`model.graph.node[3].output[0]`)."""
    if isinstance(item, onnx.NodeProto) and item.name and isinstance(item.name, str):
        return f"node '{item.name}'"
    if isinstance(item, onnx.AttributeProto) and isinstance(item.name, str):
        return f"{where} attribute '{item.name}'"
    return f"{where}.{field}" + ("" if index is None else f"[{index}]")


def _check_external_data(path: Path, proto: onnx.ModelProto) -> None:
    """External data must stay inside the model's folder: no absolute paths, no `..`, no missing files, and the
    byte range must exist and hold the whole tensor."""
    base = path.parent.resolve()
    for tensor in _tensors_with_external_data(proto):
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        where = f"{path}: initializer '{tensor.name}'"
        unknown = sorted(set(info) - _EXTERNAL_DATA_KEYS)
        if unknown:
            raise BadInputError(f"{where}: unknown external data key(s) {unknown} (damaged or misspelled)")
        target = _external_file(base, location, where)
        offset, length = _external_int(info, "offset", where) or 0, _external_int(info, "length", where)
        size = target.stat().st_size
        if offset + (length or 0) > size:
            raise BadInputError(f"{where}: external data range goes past the end of '{location}'")
        needed = _tensor_bytes(tensor)
        available = size - offset if length is None else length
        if needed is not None and available < needed:
            raise BadInputError(
                f"{where}: external data holds {available} bytes, its shape {list(tensor.dims)} needs {needed}"
            )


def _external_file(base: Path, location: str, where: str) -> Path:
    """The external data file for `location`, refused unless it is a file inside `base`."""
    if not location:
        raise BadInputError(f"{where} uses external data without a location")
    if "\0" in location:
        raise BadInputError(f"{where} refers to external data location {location!r} with a NUL byte (refused)")
    if os.path.isabs(location) or Path(location).drive:
        raise BadInputError(f"{where} refers to absolute path '{location}' (refused)")
    target = (base / location).resolve()
    if base not in target.parents:
        raise BadInputError(f"{where} refers to '{location}' outside the model's folder (refused)")
    if not target.is_file():
        raise BadInputError(f"{where} refers to missing external data file '{location}'")
    return target


def _external_int(info: dict[str, str], key: str, where: str) -> int | None:
    """A non-negative integer entry of `external_data` (None when absent, as ONNX treats an empty value)."""
    text = info.get(key, "")
    if not text:
        return None
    try:
        number = int(text)
    except ValueError:
        raise BadInputError(f"{where}: external data {key} {text[:40]!r} is not an integer") from None
    if number < 0:
        raise BadInputError(f"{where}: external data {key} {number} is negative")
    return number


def _tensor_bytes(tensor: onnx.TensorProto) -> int | None:
    """Bytes the tensor's shape and type need (sub-byte types packed), or None for types without a fixed width."""
    try:
        bits = ir.DataType(tensor.data_type).bitwidth
    except (ValueError, TypeError):
        return None
    return (math.prod(tensor.dims) * bits + 7) // 8


def _check_raw_data(path: Path, proto: onnx.ModelProto) -> None:
    """Embedded tensor bytes must be exactly what the shape and type need: the checker only refuses too few, and
    a longer buffer would be read differently by each consumer (onnxruntime refuses it, numpy reshapes fail)."""
    for tensor in _tensors(proto):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or not tensor.HasField("raw_data"):
            continue
        needed = _tensor_bytes(tensor)
        if needed is not None and len(tensor.raw_data) != needed:
            raise BadInputError(
                f"{path}: tensor '{tensor.name}' holds {len(tensor.raw_data)} bytes of raw data, but its shape "
                f"{list(tensor.dims)} and type need {needed}"
            )


def _tensors(proto: onnx.ModelProto):
    """Every initializer and tensor attribute, subgraphs included."""
    graphs = [proto.graph]
    while graphs:
        graph = graphs.pop()
        yield from graph.initializer
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
                graphs.extend(attr.graphs)
                if attr.HasField("g"):
                    graphs.append(attr.g)


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
        raise BadInputError(f"{path}: invalid ONNX model: {_joined_lines(exc)}") from None
    except Exception as exc:
        raise BadInputError(f"{path}: ONNX checker failed: {_joined_lines(exc)}") from None


def _joined_lines(exc: BaseException, limit: int = 300) -> str:
    """The checker's text on one line: it often puts the culprit node on the line after the reason."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return text[:limit] or type(exc).__name__


def _root_cause(exc: BaseException) -> BaseException:
    """onnx-ir wraps the real error (which names the value or node) in one SerdeError per nesting level."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc
