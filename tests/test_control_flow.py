"""Scan unrolled into the main graph (bitc.frontend.control_flow): compiled results equal onnxruntime's for scan
axes, reversed directions, several states and a value the body reads from the enclosing graph (onnx's reference
evaluator has no reversed Scan)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper

import bitc
from bitc.frontend import control_flow

F = TensorProto.FLOAT


def _scan_model(input_axis: int, input_direction: int, output_axis: int, output_direction: int) -> onnx.ModelProto:
    """state' = tanh(state + x_t · w) with w from the outer graph; outputs each step's state and x_t · 2."""
    body = helper.make_graph(
        [
            helper.make_node("Mul", ["x_t", "w"], ["scaled"]),
            helper.make_node("Add", ["state_in", "scaled"], ["sum"]),
            helper.make_node("Tanh", ["sum"], ["state_out"]),
            helper.make_node("Add", ["x_t", "x_t"], ["doubled"]),
            helper.make_node("Identity", ["state_out"], ["step_state"]),
        ],
        "body",
        [helper.make_tensor_value_info("state_in", F, [3]), helper.make_tensor_value_info("x_t", F, [3])],
        [
            helper.make_tensor_value_info("state_out", F, [3]),
            helper.make_tensor_value_info("step_state", F, [3]),
            helper.make_tensor_value_info("doubled", F, [3]),
        ],
    )
    x_shape = [5, 3] if input_axis == 0 else [3, 5]
    scan = helper.make_node(
        "Scan",
        ["init", "x"],
        ["final", "states", "doubles"],
        body=body,
        num_scan_inputs=1,
        scan_input_axes=[input_axis],
        scan_input_directions=[input_direction],
        scan_output_axes=[output_axis, output_axis],
        scan_output_directions=[output_direction, 0],
    )
    out_shape = [5, 3] if output_axis in (0, -2) else [3, 5]
    graph = helper.make_graph(
        [helper.make_node("Neg", ["w_in"], ["w"]), scan],
        "scan",
        [
            helper.make_tensor_value_info("init", F, [3]),
            helper.make_tensor_value_info("x", F, x_shape),
            helper.make_tensor_value_info("w_in", F, [3]),
        ],
        [
            helper.make_tensor_value_info("final", F, [3]),
            helper.make_tensor_value_info("states", F, out_shape),
            helper.make_tensor_value_info("doubles", F, out_shape),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)])


@pytest.mark.parametrize(("input_axis", "input_direction", "output_axis", "output_direction"),
                         [(0, 0, 0, 0), (1, 1, 1, 0), (1, 0, -2, 1)])  # fmt: skip
def test_unrolled_scan_matches_the_reference(
    tmp_path, input_axis: int, input_direction: int, output_axis: int, output_direction: int
) -> None:
    model = _scan_model(input_axis, input_direction, output_axis, output_direction)
    path = tmp_path / "scan.onnx"
    onnx.save(model, path)
    rng = np.random.default_rng(0)
    feeds = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in
             [("init", [3]), ("x", [5, 3] if input_axis == 0 else [3, 5]), ("w_in", [3])]}  # fmt: skip
    got = bitc.load(bitc.compile(str(path), tmp_path / "scan.bitc").path).run(feeds)
    want = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    for name, expected in zip(["final", "states", "doubles"], want, strict=True):
        np.testing.assert_allclose(got[name], expected, rtol=1e-6, atol=1e-6, err_msg=name)


def test_a_scan_longer_than_the_unroll_bound_is_left_for_the_refusal(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(control_flow, "MAX_UNROLLED_NODES", 10)
    path = tmp_path / "scan.onnx"
    onnx.save(_scan_model(0, 0, 0, 0), path)
    with pytest.raises(bitc.errors.BadInputError, match="unsupported op Scan"):
        bitc.compile(str(path), tmp_path / "scan.bitc")


def _loop_model(trips: int, stop_early: bool) -> onnx.ModelProto:
    """acc' = acc · 0.5 + x[i]; with `stop_early` the body's condition is sum(acc') < 4 (data-dependent), else
    it passes its input through and each step's acc' is also a scan output."""
    body_nodes = [
        helper.make_node("Unsqueeze", ["i", "zero_axis"], ["i1"]),
        helper.make_node("Gather", ["x", "i1"], ["x_i"], axis=0),
        helper.make_node("Mul", ["acc_in", "half"], ["halved"]),
        helper.make_node("Add", ["halved", "x_i"], ["acc_out"]),
    ]
    outputs = [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
               helper.make_tensor_value_info("acc_out", F, [1, 3])]  # fmt: skip
    if stop_early:
        body_nodes += [
            helper.make_node("ReduceSum", ["acc_out"], ["total"], keepdims=0),
            helper.make_node("Less", ["total", "four"], ["cond_out"]),
        ]
    else:
        body_nodes += [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Identity", ["acc_out"], ["step"]),
        ]
        outputs.append(helper.make_tensor_value_info("step", F, [1, 3]))
    body = helper.make_graph(
        body_nodes,
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_in", F, [1, 3])],
        outputs,
    )  # fmt: skip
    loop_outputs = ["final"] if stop_early else ["final", "steps"]
    graph_outputs = [helper.make_tensor_value_info("final", F, [1, 3])]
    if not stop_early:
        graph_outputs.append(helper.make_tensor_value_info("steps", F, [trips, 1, 3]))
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "cond", "acc"], loop_outputs, body=body)],
        "loop",
        [helper.make_tensor_value_info("acc", F, [1, 3]), helper.make_tensor_value_info("x", F, [trips, 3])],
        graph_outputs,
        initializer=[
            helper.make_tensor("trips", TensorProto.INT64, [], [trips]),
            helper.make_tensor("cond", TensorProto.BOOL, [], [True]),
            helper.make_tensor("zero_axis", TensorProto.INT64, [1], [0]),
            helper.make_tensor("half", F, [], [0.5]),
            helper.make_tensor("four", F, [], [4.0]),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)])


@pytest.mark.parametrize("stop_early", [False, True])
def test_unrolled_loop_matches_onnxruntime(tmp_path, stop_early: bool) -> None:
    model = _loop_model(6, stop_early)
    path = tmp_path / "loop.onnx"
    onnx.save(model, path)
    compiled = bitc.load(bitc.compile(str(path), tmp_path / "loop.bitc").path)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    for scale in (0.1, 1.0, 3.0):  # the early stop comes at different steps
        feeds = {"acc": rng.standard_normal((1, 3)).astype(np.float32),
                 "x": (rng.random((6, 3)) * scale).astype(np.float32)}  # fmt: skip
        got = compiled.run(feeds)
        for name, expected in zip([o.name for o in model.graph.output], session.run(None, feeds), strict=True):
            np.testing.assert_allclose(got[name], expected, rtol=1e-6, atol=1e-6, err_msg=f"{name} x{scale}")
