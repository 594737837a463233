"""LSTM, GRU and RNN, lowered to unrolled cells (bitc.frontend.recurrent_lowering), match onnxruntime over the
attributes and optional inputs/outputs of the ONNX spec; forms with no exact lowering are refused naming the op.

Each compiled model holds several nodes (one per case below) to keep the number of compiles small. onnxruntime
has no batch-first (layout=1) kernels, so its reference for layout 1 is the layout-0 node between Transposes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from conftest import run_onnxruntime
from onnx import TensorProto, helper, numpy_helper

import bitc
from bitc.errors import BitcError

STEPS, BATCH, INPUT, HIDDEN = 3, 2, 4, 5
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
STATES = {"LSTM": 2, "GRU": 1, "RNN": 1}  # initial_h (and initial_c)


@dataclass
class Case:
    direction: str = "forward"
    bias: bool = True
    initial: bool = True
    peepholes: bool = False
    outputs: tuple[bool, ...] = (True, True, True)  # Y, Y_h, Y_c
    attributes: dict[str, Any] = field(default_factory=dict)


CASES = {
    "LSTM": [
        Case("forward", peepholes=True),
        Case("reverse", bias=False, initial=False, outputs=(False, True, True)),
        Case("bidirectional", peepholes=True, attributes={"clip": 0.6, "input_forget": 1}),
        Case("bidirectional", initial=False, peepholes=True, outputs=(True, False, False)),
        Case(
            "bidirectional",
            attributes={
                "activations": ["HardSigmoid", "Softsign", "Softplus", "Sigmoid", "LeakyRelu", "Elu"],
                "activation_alpha": [0.3, 0.05, 1.5],
                "activation_beta": [0.4],
            },
        ),
    ],
    "GRU": [
        Case("forward"),
        Case("reverse", bias=False, initial=False, outputs=(False, True)),
        Case("bidirectional", attributes={"linear_before_reset": 1, "clip": 0.6}),
        Case("bidirectional", initial=False, attributes={"linear_before_reset": 1}, outputs=(True, False)),
        Case(
            "forward",
            attributes={
                "activations": ["ScaledTanh", "ThresholdedRelu"],
                "activation_alpha": [0.7, 0.2],
                "activation_beta": [1.3],
            },
        ),
    ],
    "RNN": [
        Case("forward"),
        Case("reverse", bias=False, initial=False, outputs=(False, True)),
        Case("bidirectional", attributes={"clip": 0.6}),
        Case("bidirectional", initial=False, attributes={"activations": ["Relu", "Affine"], "activation_alpha": [0.5]}),
    ],
}
# Affine needs both values (ONNX and onnxruntime default them differently): the last RNN case gives its beta too.
CASES["RNN"][-1].attributes["activation_beta"] = [0.1]


def _transposed(nodes: list, name: str, perm: list[int]) -> str:
    nodes.append(helper.make_node("Transpose", [name], [f"{name}_t"], perm=perm))
    return f"{name}_t"


def _add_case(graph: dict, op: str, k: int, case: Case, layout: int, reference: bool, rng) -> None:
    """Append case k's node to `graph` (inputs, outputs, initializers, nodes, feeds). The reference form keeps
    layout 0 and transposes batch-first inputs and outputs around the node."""
    directions = 2 if case.direction == "bidirectional" else 1
    gates = GATES[op] * HIDDEN
    weights = {
        f"W{k}": rng.standard_normal((directions, gates, INPUT)),
        f"R{k}": rng.standard_normal((directions, gates, HIDDEN)),
        f"B{k}": rng.standard_normal((directions, 2 * gates)),
        f"P{k}": rng.standard_normal((directions, 3 * HIDDEN)),
    }
    graph["initializers"] += [numpy_helper.from_array((0.5 * v).astype(np.float32), n) for n, v in weights.items()]
    x_shape = [STEPS, BATCH, INPUT] if layout == 0 else [BATCH, STEPS, INPUT]
    state_shape = [directions, BATCH, HIDDEN] if layout == 0 else [BATCH, directions, HIDDEN]
    fed = [(f"x{k}", x_shape)] + [(f"{s}{k}", state_shape) for s in "hc"[: STATES[op]] if case.initial]
    nodes = graph["nodes"]
    names = {}
    for name, shape in fed:
        graph["inputs"].append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
        graph["feeds"][name] = rng.standard_normal(shape).astype(np.float32)
        transpose = reference and layout == 1
        names[name[0]] = _transposed(nodes, name, [1, 0, 2]) if transpose else name
    inputs = [names["x"], f"W{k}", f"R{k}", f"B{k}" if case.bias else "", "", names.get("h", "")]
    if op == "LSTM":
        inputs += [names.get("c", ""), f"P{k}" if case.peepholes else ""]
    y_shape = [STEPS, directions, BATCH, HIDDEN] if layout == 0 else [BATCH, STEPS, directions, HIDDEN]
    shapes = [y_shape, state_shape, state_shape]
    outputs = [f"{base}{k}" if wanted else "" for base, wanted in zip(("Y", "Y_h", "Y_c"), case.outputs, strict=False)]
    outputs = outputs[: 3 if op == "LSTM" else 2]
    for name, shape in zip(outputs, shapes, strict=False):
        if name:
            graph["outputs"].append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
    attributes = {"hidden_size": HIDDEN, "direction": case.direction, **case.attributes}
    if reference and layout == 1:
        raw = [f"{name}_raw" if name else "" for name in outputs]
        nodes.append(helper.make_node(op, inputs, raw, **attributes))
        for index, (name, r) in enumerate(zip(outputs, raw, strict=True)):
            if name:
                perm = [2, 0, 1, 3] if index == 0 else [1, 0, 2]
                nodes.append(helper.make_node("Transpose", [r], [name], perm=perm))
    else:
        nodes.append(helper.make_node(op, inputs, outputs, **attributes, **({"layout": layout} if layout else {})))


def _models(op: str, layout: int, opset: int = 14) -> tuple[onnx.ModelProto, onnx.ModelProto, dict]:
    """(model for bitc, onnxruntime's reference, feeds) with one node per case of `op`."""
    built = []
    for reference in (False, True):
        graph: dict = {"inputs": [], "outputs": [], "initializers": [], "nodes": [], "feeds": {}}
        rng = np.random.default_rng(7)
        for k, case in enumerate(CASES[op]):
            _add_case(graph, op, k, case, layout, reference, rng)
        proto = helper.make_graph(graph["nodes"], op, graph["inputs"], graph["outputs"], graph["initializers"])
        built.append((helper.make_model(proto, opset_imports=[helper.make_opsetid("", opset)]), graph["feeds"]))
    (model, feeds), (reference_model, _) = built
    return model, reference_model, feeds


def _compare(model: onnx.ModelProto, reference: onnx.ModelProto, feeds: dict, tmp_path: Path) -> None:
    onnx.save(model, tmp_path / "model.onnx")
    onnx.save(reference, tmp_path / "reference.onnx")
    expected = run_onnxruntime(tmp_path / "reference.onnx", feeds)
    bitc.compile(tmp_path / "model.onnx", tmp_path / "model.bitc")
    actual = bitc.load(tmp_path / "model.bitc").run(feeds)
    for value, want in zip(model.graph.output, expected, strict=True):
        np.testing.assert_allclose(actual[value.name], want, rtol=1e-5, atol=1e-5, err_msg=value.name)


@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_recurrent_matches_onnxruntime(op: str, layout: int, tmp_path: Path) -> None:
    model, reference, feeds = _models(op, layout)
    _compare(model, reference, feeds, tmp_path)


@pytest.mark.parametrize("opset", [7, 22])
def test_recurrent_other_opsets(opset: int, tmp_path: Path) -> None:
    """Opset 7 (upgraded to 13 on load, no layout attribute) and opset 22 (the newest LSTM/GRU/RNN) lower alike."""
    model, reference, feeds = _models("GRU", 0, opset)
    _compare(model, reference, feeds, tmp_path)


def _lstm_with_lengths(tmp_path: Path, lengths: np.ndarray | None) -> Path:
    """An LSTM whose sequence_lens is a run-time input (None) or the given constant."""
    rng = np.random.default_rng(0)
    tensors = [
        numpy_helper.from_array(rng.standard_normal((1, 4 * HIDDEN, INPUT)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.standard_normal((1, 4 * HIDDEN, HIDDEN)).astype(np.float32), "R"),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [STEPS, BATCH, INPUT])]
    if lengths is None:
        inputs.append(helper.make_tensor_value_info("lens", TensorProto.INT32, [BATCH]))
    else:
        tensors.append(numpy_helper.from_array(lengths, "lens"))
    node = helper.make_node("LSTM", ["x", "W", "R", "", "lens"], ["Y"], hidden_size=HIDDEN, name="lstm")
    output = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [STEPS, 1, BATCH, HIDDEN])
    graph = helper.make_graph([node], "lstm", inputs, [output], tensors)
    path = tmp_path / "lstm.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), path)
    return path


@pytest.mark.parametrize("lengths", [None, np.array([STEPS, 1], np.int32)], ids=["runtime", "non-uniform"])
def test_lstm_with_partial_sequences_is_refused(lengths: np.ndarray | None, tmp_path: Path) -> None:
    path = _lstm_with_lengths(tmp_path, lengths)
    with pytest.raises(BitcError, match="LSTM"):
        bitc.compile(path, tmp_path / "lstm.bitc")


def test_lstm_with_full_sequence_lengths_matches_onnxruntime(tmp_path: Path) -> None:
    """A constant sequence_lens giving every batch entry the whole sequence is the same as none."""
    path = _lstm_with_lengths(tmp_path, np.full(BATCH, STEPS, np.int32))
    x = np.random.default_rng(1).standard_normal((STEPS, BATCH, INPUT)).astype(np.float32)
    (expected,) = run_onnxruntime(path, {"x": x})
    bitc.compile(path, tmp_path / "lstm.bitc")
    actual = bitc.load(tmp_path / "lstm.bitc").run({"x": x})
    np.testing.assert_allclose(actual["Y"], expected, rtol=1e-5, atol=1e-5)


def test_lstm_whose_input_shape_is_known_only_after_constant_folding_matches_onnxruntime(tmp_path: Path) -> None:
    """Silero VAD's form: the LSTM reads a Pad whose pads are computed from constants (Concat of constants, cast),
    so its input shape is static only once the passes folded them; it is lowered then, not refused at import."""
    rng = np.random.default_rng(4)
    hidden, features = 8, 6
    inits = [
        numpy_helper.from_array(np.array([0, 1], np.int64), "before"),
        numpy_helper.from_array(np.array([0, 2], np.int64), "after"),
        numpy_helper.from_array(rng.standard_normal((1, 4 * hidden, features)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.standard_normal((1, 4 * hidden, hidden)).astype(np.float32), "R"),
    ]
    nodes = [
        helper.make_node("Concat", ["before", "after"], ["pads_i64"], axis=0),
        helper.make_node("Cast", ["pads_i64"], ["pads"], to=TensorProto.INT64),
        helper.make_node("Pad", ["x", "pads"], ["padded"]),  # [5, 3] -> [5, 6]
        helper.make_node("Unsqueeze", ["padded", "axis1"], ["seq"]),  # [5, 1, 6]
        helper.make_node("LSTM", ["seq", "W", "R"], ["y", "h"], hidden_size=hidden),
    ]
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "axis1"))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 3])],
        [helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, 1, hidden])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.graph.value_info.append(helper.make_tensor_value_info("padded", TensorProto.FLOAT, ["a", "b"]))
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    x = rng.standard_normal((5, 3)).astype(np.float32)
    got = bitc.load(bitc.compile(path, tmp_path / "m.bitc").path)(x)
    np.testing.assert_allclose(got, run_onnxruntime(path, {"x": x})[0], rtol=1e-5, atol=1e-5)
