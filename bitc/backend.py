"""bitc as an ONNX backend (`onnx.backend.base`), so onnx's standard runner and tools drive it like onnxruntime.

    import bitc.backend
    rep = bitc.backend.prepare(model)          # compiles (a refusal raises bitc's one-line error here)
    outputs = rep.run([x])                     # positional inputs, or a dict by name

A backend compiles ahead of time, so each `BackendRep` holds compiled artifacts: one when every graph input has a
static shape (compiled in `prepare`), else one per distinct set of input shapes, compiled on the first `run` with
those shapes. Inputs that only feed shape-like operands (Reshape's shape, Resize's scales, reduction axes, Slice's
starts...) are specialised the same way, per value: bitc artifacts take those as constants, so each new value set
compiles its own artifact (exact, never a guess; `specialize_shape_inputs=False` turns it off and such models are
refused as `bitc compile` refuses them). Artifacts live in a private temporary folder removed with the rep.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx.backend.base import Backend, BackendRep, namedtupledict

import bitc
from bitc.errors import BadInputError

_TARGETS = {"CPU": "cpu", "CUDA": "cuda"}
# Operand positions whose values decide output shapes or axes (what bitc folds into the compiled code).
SHAPE_OPERANDS = {
    "Reshape": {1}, "Expand": {1}, "Tile": {1}, "ConstantOfShape": {0}, "Range": {0, 1, 2}, "Upsample": {1},
    "Resize": {1, 2, 3}, "Slice": {1, 2, 3, 4}, "Pad": {1, 2, 3}, "Split": {1}, "Squeeze": {1}, "Unsqueeze": {1},
    "ReduceSum": {1}, "ReduceMean": {1}, "ReduceMax": {1}, "ReduceMin": {1}, "ReduceProd": {1}, "ReduceL1": {1},
    "ReduceL2": {1}, "ReduceLogSum": {1}, "ReduceLogSumExp": {1}, "ReduceSumSquare": {1}, "CumSum": {1}, "CumProd": {1},
    "TopK": {1}, "OneHot": {1}, "Trilu": {1}, "Loop": {0, 1}, "CenterCropPad": {1, 2}, "Dropout": {1, 2},
    "Col2Im": {1, 2},
    "NonMaxSuppression": {2, 3, 4}, "DFT": {1, 2}, "STFT": {1, 3}, "BlackmanWindow": {0}, "HannWindow": {0},
    "HammingWindow": {0}, "MelWeightMatrix": {0, 1, 2, 3, 4},
}  # fmt: skip
MAX_ARTIFACTS = 32  # compiled specialisations a rep keeps loaded
Key = tuple[Any, ...]  # (input shapes, *(name, dtype, shape, bytes) of each specialised input)


class BitcRep(BackendRep):
    """A model prepared by `BitcBackend`: compiled artifacts by input shapes, run with numpy arrays."""

    def __init__(self, model: onnx.ModelProto, target: str, options: Mapping[str, Any]) -> None:
        self._temp = tempfile.TemporaryDirectory(prefix="bitc-backend-")
        self._source = Path(self._temp.name) / "model.onnx"
        self._source.write_bytes(model.SerializeToString())
        self._target = target
        self._options = dict(options)
        initializers = {tensor.name for tensor in model.graph.initializer}
        self._inputs = [value for value in model.graph.input if value.name not in initializers]
        self._output_names = [value.name for value in model.graph.output]
        self._model = model
        self._specialized = _shape_like_inputs(model) if self._options.pop("specialize_shape_inputs", True) else set()
        self._compiled: dict[Key, bitc.Model] = {}
        self._count = 0
        shapes = [_static_shape(value) for value in self._inputs]
        non_tensor = any(not value.type.HasField("tensor_type") for value in self._inputs)
        if non_tensor or (not self._specialized and None not in shapes):  # refusals surface in prepare
            self._compiled_for((tuple(shape or () for shape in shapes),), {})

    @property
    def input_names(self) -> list[str]:
        """The graph inputs `run` takes, in order (initializers excluded)."""
        return [value.name for value in self._inputs]

    def run(self, inputs: Any, **kwargs: Any) -> tuple[Any, ...]:
        """Outputs in graph order (a namedtuple by output name) for positional, named or single-array inputs."""
        feeds = self._feeds(inputs)
        constants = {
            name: np.asarray(feeds.pop(name)) for name in self.input_names if name in self._specialized & feeds.keys()
        }
        shapes = tuple(tuple(int(d) for d in np.shape(feeds[name])) for name in self.input_names if name in feeds)
        key = (shapes, *((name, a.dtype.str, a.shape, a.tobytes()) for name, a in sorted(constants.items())))
        result = self._compiled_for(key, constants).run(feeds)
        return namedtupledict("Outputs", self._output_names)(*(result[name] for name in self._output_names))

    def _feeds(self, inputs: Any) -> dict[str, np.ndarray]:
        names = self.input_names
        if isinstance(inputs, np.ndarray):
            inputs = [inputs]
        if isinstance(inputs, Mapping):
            feeds = dict(inputs)
        elif isinstance(inputs, Sequence):
            if len(inputs) != len(names):
                raise BadInputError(f"the model takes {len(names)} input(s) {names}, got {len(inputs)}")
            feeds = dict(zip(names, inputs, strict=True))
        else:
            raise BadInputError(f"run() takes a list or dict of numpy arrays, got {type(inputs).__name__}")
        for name, value in feeds.items():
            if not isinstance(value, np.ndarray) and np.ndim(value) == 0 and not isinstance(value, list | tuple):
                feeds[name] = np.asarray(value)
        return feeds

    def _compiled_for(self, key: Key, constants: dict[str, np.ndarray]) -> bitc.Model:
        """The artifact for these input shapes and shape-like input values, compiled on first use."""
        if key not in self._compiled:
            self._count += 1
            index = self._count
            source = self._source
            if constants:
                source = Path(self._temp.name) / f"model.{index}.onnx"
                source.write_bytes(_with_constants(self._model, constants).SerializeToString())
            runtime_inputs = [value for value in self._inputs if value.name not in constants]
            dynamic = {
                value.name: list(shape)
                for value, shape in zip(runtime_inputs, key[0], strict=True)
                if _static_shape(value) is None
            }
            artifact = Path(self._temp.name) / f"model.{index}.bitc"
            bitc.compile(source, artifact, target=self._target, input_shapes=dynamic or None, **self._options)
            if len(self._compiled) >= MAX_ARTIFACTS:  # bounded: the oldest specialisation goes first
                del self._compiled[next(iter(self._compiled))]
            self._compiled[key] = bitc.load(artifact)
            artifact.unlink()
            if source != self._source:
                source.unlink()
        return self._compiled[key]


def _shape_like_inputs(model: onnx.ModelProto) -> set[str]:
    """Graph inputs read only at SHAPE_OPERANDS positions of top-level nodes."""
    uses: dict[str, list[bool]] = {}
    for node in model.graph.node:
        positions = SHAPE_OPERANDS.get(node.op_type, set()) if node.domain in ("", "ai.onnx") else set()
        for index, name in enumerate(node.input):
            uses.setdefault(name, []).append(index in positions)
    graph_outputs = {value.name for value in model.graph.output}
    return {
        value.name
        for value in model.graph.input
        if uses.get(value.name) and all(uses[value.name]) and value.name not in graph_outputs
    }


def _with_constants(model: onnx.ModelProto, constants: dict[str, np.ndarray]) -> onnx.ModelProto:
    """`model` with these graph inputs turned into initializers holding the given values."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    kept = [value for value in model.graph.input if value.name not in constants]
    del result.graph.input[:]
    result.graph.input.extend(kept)
    result.graph.initializer.extend(onnx.numpy_helper.from_array(array, name) for name, array in constants.items())
    return result


def _static_shape(value: onnx.ValueInfoProto) -> tuple[int, ...] | None:
    """The declared shape of a tensor input when every dimension is a number, else None."""
    tensor = value.type.tensor_type
    if not value.type.HasField("tensor_type") or not tensor.HasField("shape"):
        return None
    dims = tensor.shape.dim
    if not all(dim.HasField("dim_value") for dim in dims):
        return None
    return tuple(int(dim.dim_value) for dim in dims)


class BitcBackend(Backend):
    """`prepare` compiles with `bitc.compile` (keyword arguments are its options); `run_model` prepares and runs."""

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> BitcRep:
        if not isinstance(model, onnx.ModelProto):
            raise BadInputError(f"prepare() takes an onnx.ModelProto, got {type(model).__name__}")
        target = _TARGETS.get(device.upper().split(":")[0])
        if target is None:
            raise BadInputError(f"unknown device {device!r}: bitc runs on {', '.join(_TARGETS)}")
        return BitcRep(model, target, kwargs)

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Any, device: str = "CPU", **kwargs: Any) -> tuple[Any, ...]:
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(
        cls,
        node: onnx.NodeProto,
        inputs: Any,
        device: str = "CPU",
        outputs_info: Sequence[tuple[Any, tuple[int, ...]]] | None = None,
        **kwargs: Any,
    ) -> tuple[Any, ...]:
        """One node as a model of its own (inputs as graph inputs, opset from `opset_version` or the newest)."""
        named = [(name, np.asarray(value)) for name, value in zip(node.input, inputs, strict=False) if name]
        graph_inputs = [
            onnx.helper.make_tensor_value_info(name, onnx.helper.np_dtype_to_tensor_dtype(array.dtype), array.shape)
            for name, array in named
        ]
        outputs = [onnx.helper.make_empty_tensor_value_info(name) for name in node.output if name]
        graph = onnx.helper.make_graph([node], "node", graph_inputs, outputs)
        opset = kwargs.pop("opset_version", onnx.defs.onnx_opset_version())
        model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
        model = onnx.shape_inference.infer_shapes(model)
        return cls.run_model(model, [array for _, array in named], device, **kwargs)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        """CPU always; CUDA when a GPU and its driver are present."""
        kind = device.upper().split(":")[0]
        if kind == "CPU":
            return True
        if kind != "CUDA":
            return False
        from bitc.runtime import tvm_loader

        try:
            tvm_loader.require_gpu()
        except bitc.BitcError:
            return False
        return True


prepare = BitcBackend.prepare
run_model = BitcBackend.run_model
run_node = BitcBackend.run_node
supports_device = BitcBackend.supports_device
