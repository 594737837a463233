"""Repeated layers are legalized once, and reusing a legalization never mixes up two calls' operands."""

from __future__ import annotations

import numpy as np
import onnx
from conftest import run_onnxruntime
from onnx import TensorProto, helper, numpy_helper

import bitc
from bitc.codegen.relax.legalize_cache import cached_legalize_map


def _chain_model(path, layers: int, channels: int = 8) -> None:
    """Conv → Relu → Add(per-layer bias) → Clip(per-layer bounds), repeated: equal shapes, different constants."""
    rng = np.random.default_rng(0)
    nodes, inits, previous = [], [], "x"
    for i in range(layers):
        inits += [
            numpy_helper.from_array((0.3 * rng.standard_normal((channels,) * 2 + (3, 3))).astype(np.float32), f"w{i}"),
            numpy_helper.from_array(rng.standard_normal((1, channels, 1, 1)).astype(np.float32), f"b{i}"),
            numpy_helper.from_array(np.array(-0.5 - i, np.float32), f"lo{i}"),
            numpy_helper.from_array(np.array(0.5 + i, np.float32), f"hi{i}"),
        ]
        nodes += [
            helper.make_node("Conv", [previous, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", [f"c{i}"], [f"r{i}"]),
            helper.make_node("Add", [f"r{i}", f"b{i}"], [f"a{i}"]),
            helper.make_node("Clip", [f"a{i}", f"lo{i}", f"hi{i}"], [f"y{i}"]),
        ]
        previous = f"y{i}"
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 6, 6])],
        [helper.make_tensor_value_info(previous, TensorProto.FLOAT, [1, channels, 6, 6])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_repeated_layers_with_different_constants_match_onnxruntime(tmp_path):
    source = tmp_path / "chain.onnx"
    _chain_model(source, layers=6)
    artifact = bitc.compile(source, tmp_path / "chain.bitc").path
    x = np.random.default_rng(1).standard_normal((1, 8, 6, 6)).astype(np.float32)
    (expected,) = run_onnxruntime(source, {"x": x})
    np.testing.assert_allclose(bitc.load(artifact)(x), expected, rtol=1e-4, atol=1e-5)


def test_equal_calls_are_legalized_once():
    import tvm
    from tvm import relax

    calls = []
    default = tvm.ir.Op.get("relax.nn.relu").get_attr("FLegalize")

    def counting_relu(bb, call):
        calls.append(call)
        return default(bb, call)

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([4, 16], "float32"))
    y = relax.Var("y", relax.TensorType([2, 16], "float32"))
    with bb.function("main", [x, y]):
        with bb.dataflow():
            a = bb.emit(relax.op.nn.relu(x))
            b = bb.emit(relax.op.nn.relu(a))
            c = bb.emit(relax.op.nn.relu(y))  # another shape: a legalization of its own
            out = bb.emit_output(relax.Tuple([b, c]))
        bb.emit_func_output(out)
    legalized = relax.transform.LegalizeOps(cached_legalize_map({"relax.nn.relu": counting_relu}))(bb.get())
    assert len(calls) == 2
    executable = tvm.compile(legalized, target="llvm")
    vm = relax.VirtualMachine(executable, tvm.cpu())
    xs = np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)
    ys = np.random.default_rng(1).standard_normal((2, 16)).astype(np.float32)
    first, second = vm["main"](tvm.runtime.tensor(xs), tvm.runtime.tensor(ys))
    np.testing.assert_array_equal(first.numpy(), np.maximum(xs, 0))
    np.testing.assert_array_equal(second.numpy(), np.maximum(ys, 0))
